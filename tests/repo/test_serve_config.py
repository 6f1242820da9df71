"""serve_config.yaml is valid for Ray Serve and for the app builder, and its numbers
make sense together on a 2-core machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from ingress.settings import AppArgs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))


def _deployments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in config["applications"][0]["deployments"]}


def test_validates_against_serve_and_app_args(config: dict[str, Any]) -> None:
    ServeDeploySchema.model_validate(config)
    app = config["applications"][0]
    assert app["import_path"] == "ingress.app:build_app"
    args = AppArgs.model_validate(app["args"])
    assert str(args.storage.data_dir) == "data"
    assert set(_deployments(config)) == {"Ingress", "Captioner", "Embedder", "CaptionWorker"}
    assert args.captioning.mode == "background"


def _max_replicas(deployment: dict[str, Any]) -> int:
    if "autoscaling_config" in deployment:
        return int(deployment["autoscaling_config"]["max_replicas"])
    return int(deployment.get("num_replicas", 1))


def test_misspelt_arg_fails_with_its_name(config: dict[str, Any]) -> None:
    args = dict(config["applications"][0]["args"])
    args["storage"] = {"data_dri": "./x"}
    with pytest.raises(ValidationError, match="data_dri"):
        AppArgs.model_validate(args)


def test_replicas_fit_two_cores(config: dict[str, Any]) -> None:
    total = sum(
        d["ray_actor_options"]["num_cpus"] * _max_replicas(d) for d in _deployments(config).values()
    )
    assert total <= 2.0


def test_batches_can_fill_and_targets_are_reachable(config: dict[str, Any]) -> None:
    deployments = _deployments(config)
    captioner, embedder = deployments["Captioner"], deployments["Embedder"]
    assert captioner["max_ongoing_requests"] >= captioner["user_config"]["max_batch_size"]
    queues = embedder["user_config"]
    assert embedder["max_ongoing_requests"] >= sum(q["max_batch_size"] for q in queues.values())
    for deployment in deployments.values():
        if "autoscaling_config" not in deployment:
            continue  # a fixed number of replicas (the caption worker)
        target = deployment["autoscaling_config"]["target_ongoing_requests"]
        assert target <= deployment["max_ongoing_requests"]
    # The worker keeps the Captioner's batches full.
    concurrency = config["applications"][0]["args"]["captioning"]["worker"]["concurrency"]
    assert concurrency >= captioner["user_config"]["max_batch_size"]


def test_store_choice_is_configuration_only() -> None:
    args = AppArgs.model_validate(
        {
            "storage": {
                "vectors": {"kind": "weaviate", "url": "http://weaviate:8080"},
                "blobs": {"kind": "s3", "bucket": "images", "endpoint_url": "http://minio:9000"},
            }
        }
    )
    assert args.storage.vectors.kind == "weaviate"
    assert args.storage.blobs.kind == "s3"
    default = AppArgs()
    assert (default.storage.vectors.kind, default.storage.blobs.kind) == ("lancedb", "local")


def test_unknown_store_kind_and_secret_in_config_are_refused() -> None:
    with pytest.raises(ValidationError, match="kind"):
        AppArgs.model_validate({"storage": {"vectors": {"kind": "chroma"}}})
    # Secrets come from the environment, not from the file.
    with pytest.raises(ValidationError, match="api_key"):
        AppArgs.model_validate(
            {
                "storage": {
                    "vectors": {"kind": "weaviate", "url": "http://w:8080", "api_key": "s3cret"}
                }
            }
        )
