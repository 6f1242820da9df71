"""k8s/bulk-index-rayjob.yaml agrees with the Dockerfile, pyproject.toml, the bulk
command line and the RayService: the same image and Ray version, a GPU worker group,
an entrypoint the console script accepts, the production stores, and the Secrets."""

from __future__ import annotations

import re
import shlex
import sys
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from ingress.settings import AppArgs, S3Args, WeaviateArgs
from ingress.tools.bulk.cli import build_parser
from ingress.tools.config import load_app_args
from tests.repo.test_deploy_manifests import (
    K8S,
    PRODUCTION,
    ROOT,
    SERVE_CONFIG_V2,
    _app,
    _containers,
    _env,
    _find,
    _pod_resources,
    _serve_config,
    _worker_groups,
    _yaml,
    example_secrets,
    rayservice,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["example_secrets", "rayservice"]  # the fixtures, shared with the RayService's tests

RAYJOB = K8S / "bulk-index-rayjob.yaml"
STORE_SECRETS = ("WEAVIATE_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return dict(_yaml(RAYJOB))


def _cluster(rayjob: dict[str, Any]) -> dict[str, Any]:
    return dict(rayjob["spec"]["rayClusterSpec"])


def _groups(rayjob: dict[str, Any]) -> list[dict[str, Any]]:
    # The RayService's helper reads spec.rayClusterConfig; a RayJob names it rayClusterSpec.
    return _worker_groups({"spec": {"rayClusterConfig": _cluster(rayjob)}})


def _entrypoint(rayjob: dict[str, Any]) -> list[str]:
    return shlex.split(rayjob["spec"]["entrypoint"])


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_rayjob_shape(rayjob: dict[str, Any]) -> None:
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True
    assert _cluster(rayjob)["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_it_has_a_gpu_worker_group(rayjob: dict[str, Any]) -> None:
    gpu_groups = [g for g in _groups(rayjob) if _pod_resources(g)[1] > 0]
    assert gpu_groups
    for group in gpu_groups:
        assert int(_containers(group)[0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert "nvidia.com/gpu" in {t["key"] for t in group["template"]["spec"]["tolerations"]}
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        # The models are baked into the image, as for the RayService's model pods.
        assert _env(group)["HF_HUB_OFFLINE"]["value"] == "1"


def test_same_image_and_ray_version_as_the_dockerfile_and_the_rayservice(
    rayjob: dict[str, Any], rayservice: dict[str, Any]
) -> None:
    base = re.search(r"^FROM\s+rayproject/ray:(\d+\.\d+\.\d+)-py311-gpu\s*$", _dockerfile(), re.M)
    assert base
    version = base.group(1)
    cluster = _cluster(rayjob)
    assert cluster["rayVersion"] == version
    images = {c["image"] for containers in _find(cluster, "containers") for c in containers}
    served = {
        c["image"]
        for containers in _find(rayservice["spec"]["rayClusterConfig"], "containers")
        for c in containers
    }
    assert images == served
    (ray,) = [
        Requirement(r)
        for r in _pyproject()["project"]["dependencies"]
        if Requirement(r).name == "ray"
    ]
    assert ray.specifier.contains(Version(version))
    # The job is a Ray Data pipeline: the image must install Ray Data's dependencies.
    assert "data" in ray.extras


def test_the_entrypoint_is_the_console_script_with_valid_arguments(rayjob: dict[str, Any]) -> None:
    command, *argv = _entrypoint(rayjob)
    scripts = _pyproject()["project"]["scripts"]
    assert scripts[command] == "ingress.tools.bulk.cli:entry"
    options = build_parser().parse_args(argv)
    assert options.captions == "background"
    assert options.progress is False  # a log, not a terminal


def test_the_image_holds_every_package_the_job_imports() -> None:
    copied = set(re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s+\./\1\s*$", _dockerfile(), re.M))
    packages = {
        p.rstrip("*") for p in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= copied


def test_the_job_writes_to_the_stores_the_service_serves_from(rayjob: dict[str, Any]) -> None:
    options = build_parser().parse_args(_entrypoint(rayjob)[1:])
    # The image copies the serve configs to its working directory, the repository root here.
    assert options.config.name == PRODUCTION
    job_args = load_app_args(ROOT / options.config, options.app)
    served = AppArgs.model_validate(_app(_serve_config(SERVE_CONFIG_V2))["args"])
    assert isinstance(job_args.storage.vectors, WeaviateArgs)
    assert isinstance(job_args.storage.blobs, S3Args)
    assert job_args.storage.vectors == served.storage.vectors
    assert job_args.storage.blobs == served.storage.blobs
    assert job_args.embedder.model.model_id == served.embedder.model.model_id


def test_every_pod_gets_the_store_secrets(
    rayjob: dict[str, Any], example_secrets: dict[tuple[str, str], set[str]]
) -> None:
    """The driver (head) lists the source and checks the collection; the workers read,
    look up and write."""
    cluster = _cluster(rayjob)
    head = cluster["headGroupSpec"]
    for group in [head, *_groups(rayjob)]:
        env = _env(group)
        for name in STORE_SECRETS:
            assert "secretKeyRef" in env[name]["valueFrom"], (group.get("groupName"), name)
    namespace = rayjob["metadata"]["namespace"]
    referenced = {(namespace, ref["name"], ref["key"]) for ref in _find(rayjob, "secretKeyRef")}
    examples = {(ns, name, key) for (ns, name), keys in example_secrets.items() for key in keys}
    assert referenced <= examples
