"""The deployment files agree with Ray Serve, with the app builder and with each other:
the serve configs, the RayService and its serveConfigV2, the Weaviate Helm values, the
example Secrets, the Dockerfile, docker-compose.yml and pyproject.toml."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from pydantic import BaseModel
from ray.serve.schema import ServeDeploySchema

from deployments.settings import BatchSettings, EmbedderBatching
from ingress.settings import AppArgs, S3Args, WeaviateArgs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
RAYSERVICE = K8S / "rayservice.yaml"
SERVE_CONFIG_V2 = "k8s/rayservice.yaml:serveConfigV2"
LOCAL, STORES, PRODUCTION = (
    "serve_config.yaml",
    "serve_config.stores.yaml",
    "serve_config.production.yaml",
)
SERVE_CONFIGS = [LOCAL, STORES, PRODUCTION, SERVE_CONFIG_V2]
GPU_CONFIGS = [PRODUCTION, SERVE_CONFIG_V2]
MODELS = ("Captioner", "Embedder")
# Both models' @serve.batch queues run one batch at a time (Serve's default).
MAX_CONCURRENT_BATCHES = 1


# -- loading -------------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _serve_config(name: str) -> dict[str, Any]:
    if name == SERVE_CONFIG_V2:
        return dict(yaml.safe_load(_yaml(RAYSERVICE)["spec"]["serveConfigV2"]))
    return dict(_yaml(ROOT / name))


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    return dict(_yaml(RAYSERVICE))


@pytest.fixture(scope="module")
def weaviate_values() -> dict[str, Any]:
    return dict(_yaml(K8S / "weaviate-values.yaml"))


@pytest.fixture(scope="module")
def example_secrets() -> dict[tuple[str, str], set[str]]:
    """(namespace, name) -> the keys of each Secret in secrets.example.yaml."""
    docs = _yaml_docs(K8S / "secrets.example.yaml")
    assert docs and all(doc["kind"] == "Secret" for doc in docs)
    return {
        (doc["metadata"]["namespace"], doc["metadata"]["name"]): set(doc["stringData"])
        for doc in docs
    }


# -- helpers -------------------------------------------------------------------------


def _app(config: dict[str, Any]) -> dict[str, Any]:
    return dict(config["applications"][0])


def _deployments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in _app(config)["deployments"]}


def _find(node: Any, key: str) -> Iterator[Any]:
    """Every value stored under `key`, at any depth."""
    if isinstance(node, dict):
        for k, value in node.items():
            if k == key:
                yield value
            yield from _find(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from _find(item, key)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _unknown_keys(model: type[BaseModel], data: dict[str, Any], path: str = "") -> list[str]:
    """Keys that `model` would silently drop (Serve ignores unknown keys, e.g. the
    pre-2.x `max_concurrent_queries`), recursing into nested schemas."""
    unknown = []
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            unknown.append(path + key)
            continue
        nested = _models_in(field.annotation)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if nested and isinstance(item, dict):
                where = f"{path}{key}[{i}]." if isinstance(value, list) else f"{path}{key}."
                unknown += _unknown_keys(nested[0], item, where)
    return unknown


def _batch_capacity(deployment: dict[str, Any]) -> int:
    """Requests a replica batches at once, with its user_config checked by the model's
    own settings class (neither Serve nor AppArgs validates user_config)."""
    user_config = deployment["user_config"]
    if deployment["name"] == "Embedder":
        queues = EmbedderBatching.model_validate(user_config)
        return queues.image.max_batch_size + queues.text.max_batch_size
    return BatchSettings.model_validate(user_config).max_batch_size


def _worker_groups(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    return list(rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"])


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return list(group["template"]["spec"]["containers"])


def _quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _pod_resources(group: dict[str, Any]) -> tuple[float, float]:
    """The CPUs and GPUs Ray sees in one pod of the group."""
    limits = _containers(group)[0]["resources"]["limits"]
    params = group.get("rayStartParams") or {}
    cpus = _quantity(params.get("num-cpus", limits["cpu"]))
    gpus = _quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    return cpus, gpus


def _hosts(group: dict[str, Any], deployment: dict[str, Any]) -> bool:
    """Whether Ray may place a replica of `deployment` on the group's pods."""
    options = deployment.get("ray_actor_options", {})
    params = group.get("rayStartParams") or {}
    # KubeRay passes `resources` through as a quoted JSON string.
    advertised = json.loads(json.loads(params["resources"])) if "resources" in params else {}
    wanted = options.get("resources") or {}
    wants_gpu = (options.get("num_gpus") or 0) > 0
    has_gpu = _pod_resources(group)[1] > 0
    return all(advertised.get(k, 0) >= v for k, v in wanted.items()) and (has_gpu or not wants_gpu)


def _env(group: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for c in _containers(group) for e in c.get("env", [])}


def _service_and_namespace(host: str | None) -> tuple[str, str]:
    """("weaviate", "weaviate") for the in-cluster name weaviate.weaviate.svc."""
    assert host is not None
    service, namespace, *_ = host.split(".")
    return service, namespace


def _published_ports(service: dict[str, Any]) -> set[int]:
    """Host ports of compose `ports` entries such as "127.0.0.1:8080:8080"."""
    return {int(str(entry).split(":")[-2]) for entry in service["ports"]}


# -- every file parses ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [*sorted(K8S.glob("*.yaml")), ROOT / "docker-compose.yml"],
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_manifest_parses(path: Path) -> None:
    docs = _yaml_docs(path)
    assert docs and all(isinstance(doc, dict) for doc in docs)


# -- serve configs --------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_serve_config_validates_against_serve_and_app_args(name: str) -> None:
    config = _serve_config(name)
    ServeDeploySchema.model_validate(config)
    assert _unknown_keys(ServeDeploySchema, config) == []
    app = _app(config)
    assert app["import_path"] == "ingress.app:build_app"
    AppArgs.model_validate(app["args"])
    assert set(_deployments(config)) == {"Ingress", "CaptionWorker", *MODELS}
    assert _deployments(config)["CaptionWorker"]["num_replicas"] == 1


def test_unknown_serve_keys_are_reported() -> None:
    config = _serve_config(LOCAL)
    deployment = _app(config)["deployments"][0]
    deployment["max_concurrent_queries"] = 100
    deployment["autoscaling_config"]["target_num_ongoing_requests_per_replica"] = 2
    assert set(_unknown_keys(ServeDeploySchema, config)) == {
        "applications[0].deployments[0].autoscaling_config.target_num_ongoing_requests_per_replica",
        "applications[0].deployments[0].max_concurrent_queries",
    }


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_batches_can_fill_and_autoscaling_targets_are_reachable(name: str) -> None:
    deployments = _deployments(_serve_config(name))
    for model in MODELS:
        deployment = deployments[model]
        needed = _batch_capacity(deployment) * MAX_CONCURRENT_BATCHES
        assert deployment["max_ongoing_requests"] >= needed, model
    for deployment in deployments.values():
        if "autoscaling_config" not in deployment:
            continue  # a fixed number of replicas (the caption worker)
        autoscaling = deployment["autoscaling_config"]
        assert autoscaling["min_replicas"] <= autoscaling["max_replicas"]
        assert autoscaling["target_ongoing_requests"] <= deployment["max_ongoing_requests"]


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_models_ask_for_gpus_and_share_one(name: str) -> None:
    deployments = _deployments(_serve_config(name))
    gpus = [deployments[model]["ray_actor_options"].get("num_gpus", 0) for model in MODELS]
    assert all(share > 0 for share in gpus)
    assert sum(gpus) <= 1
    assert not deployments["Ingress"]["ray_actor_options"].get("num_gpus")


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_production_uses_weaviate_s3_and_json_logs(name: str) -> None:
    config = _serve_config(name)
    app = _app(config)
    storage = AppArgs.model_validate(app["args"]).storage
    assert isinstance(storage.vectors, WeaviateArgs)
    assert storage.vectors.api_key_env
    assert isinstance(storage.blobs, S3Args)
    assert app["logging_config"]["encoding"] == "JSON"
    assert config["logging_config"]["encoding"] == "JSON"


def test_stores_config_is_the_local_one_with_other_stores() -> None:
    local, stores = _serve_config(LOCAL), _serve_config(STORES)
    storage = AppArgs.model_validate(_app(stores)["args"]).storage
    assert isinstance(storage.vectors, WeaviateArgs)
    assert isinstance(storage.blobs, S3Args) and storage.blobs.endpoint_url
    for config in (local, stores):
        del config["applications"][0]["args"]["storage"]
    assert stores == local


def test_stores_config_points_at_docker_compose() -> None:
    services = _yaml(ROOT / "docker-compose.yml")["services"]
    storage = AppArgs.model_validate(_app(_serve_config(STORES))["args"]).storage
    assert isinstance(storage.vectors, WeaviateArgs) and isinstance(storage.blobs, S3Args)
    weaviate = services["weaviate"]
    assert {urlsplit(storage.vectors.url).port, storage.vectors.grpc_port} <= _published_ports(
        weaviate
    )
    assert weaviate["environment"]["DEFAULT_VECTORIZER_MODULE"] == "none"
    # No API key locally: the compose Weaviate must accept anonymous clients.
    assert storage.vectors.api_key_env is None
    assert weaviate["environment"]["AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED"] == "true"
    assert urlsplit(storage.blobs.endpoint_url).port in _published_ports(services["minio"])


# -- the RayService -------------------------------------------------------------------


def test_rayservice_shape(rayservice: dict[str, Any]) -> None:
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert rayservice["kind"] == "RayService"
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]
    for group in _worker_groups(rayservice):
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpu_groups = [g for g in _worker_groups(rayservice) if _pod_resources(g)[1] > 0]
    assert gpu_groups and len(gpu_groups) < len(_worker_groups(rayservice))
    for group in gpu_groups:
        assert int(_containers(group)[0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert "nvidia.com/gpu" in {t["key"] for t in group["template"]["spec"]["tolerations"]}


def test_serve_config_v2_is_the_production_config() -> None:
    assert _serve_config(SERVE_CONFIG_V2) == _serve_config(PRODUCTION)


@pytest.mark.parametrize(
    ("replicas", "pods"), [("min_replicas", "minReplicas"), ("max_replicas", "maxReplicas")]
)
def test_replicas_fit_the_worker_groups(
    rayservice: dict[str, Any], replicas: str, pods: str
) -> None:
    """Each deployment lands on exactly one group, and the group's pods hold the
    replicas' CPUs and GPUs at Serve's min and at its max: the cluster autoscaler can
    always add the workers that Serve's autoscaler asks for."""
    deployments = _deployments(_serve_config(SERVE_CONFIG_V2)).values()
    groups = _worker_groups(rayservice)
    needs = {group["groupName"]: [0.0, 0.0] for group in groups}
    for deployment in deployments:
        hosts = [group for group in groups if _hosts(group, deployment)]
        assert len(hosts) == 1, deployment["name"]
        group, options = hosts[0], deployment["ray_actor_options"]
        # A fixed number of replicas (the caption worker) counts at both ends.
        autoscaling = deployment.get("autoscaling_config")
        count = autoscaling[replicas] if autoscaling else deployment["num_replicas"]
        pod_cpus, pod_gpus = _pod_resources(group)
        assert options["num_cpus"] <= pod_cpus and options.get("num_gpus", 0) <= pod_gpus
        needs[group["groupName"]][0] += count * options["num_cpus"]
        needs[group["groupName"]][1] += count * options.get("num_gpus", 0)
    for group in groups:
        pod_cpus, pod_gpus = _pod_resources(group)
        cpus, gpus = needs[group["groupName"]]
        assert cpus <= group[pods] * pod_cpus, group["groupName"]
        assert gpus <= group[pods] * pod_gpus, group["groupName"]


def test_ingress_pods_get_the_store_secrets(rayservice: dict[str, Any]) -> None:
    config = _serve_config(SERVE_CONFIG_V2)
    ingress = _deployments(config)["Ingress"]
    vectors = AppArgs.model_validate(_app(config)["args"]).storage.vectors
    assert isinstance(vectors, WeaviateArgs) and vectors.api_key_env
    hosts = [group for group in _worker_groups(rayservice) if _hosts(group, ingress)]
    assert hosts
    for group in hosts:
        env = _env(group)
        for name in (vectors.api_key_env, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "secretKeyRef" in env[name]["valueFrom"], name


def test_secret_references_match_the_example_secrets(
    rayservice: dict[str, Any],
    weaviate_values: dict[str, Any],
    example_secrets: dict[tuple[str, str], set[str]],
) -> None:
    namespace = rayservice["metadata"]["namespace"]
    referenced = {(namespace, ref["name"], ref["key"]) for ref in _find(rayservice, "secretKeyRef")}
    # The Weaviate chart reads env var X from key X of the Secret named in envSecrets.
    vectors = _app(_serve_config(PRODUCTION))["args"]["storage"]["vectors"]
    _, weaviate_namespace = _service_and_namespace(urlsplit(vectors["url"]).hostname)
    referenced |= {
        (weaviate_namespace, secret, key) for key, secret in weaviate_values["envSecrets"].items()
    }
    examples = {(ns, name, key) for (ns, name), keys in example_secrets.items() for key in keys}
    assert referenced == examples


# -- Weaviate ------------------------------------------------------------------------


def test_weaviate_values_replicate_and_serve_grpc(weaviate_values: dict[str, Any]) -> None:
    values, env = weaviate_values, weaviate_values["env"]
    assert values["replicas"] >= 3
    assert 2 <= int(env["REPLICATION_MINIMUM_FACTOR"]) <= values["replicas"]
    voters = int(env["RAFT_BOOTSTRAP_EXPECT"])
    assert voters % 2 == 1 and voters <= values["replicas"]
    assert values["grpcService"]["enabled"] is True
    assert values["modules"]["default_vectorizer_module"] == "none"
    assert values["authentication"]["anonymous_access"]["enabled"] is False
    assert str(env["AUTHENTICATION_APIKEY_ENABLED"]).lower() == "true"
    assert "AUTHENTICATION_APIKEY_ALLOWED_KEYS" in values["envSecrets"]


def test_production_config_names_the_weaviate_services(weaviate_values: dict[str, Any]) -> None:
    vectors = _app(_serve_config(PRODUCTION))["args"]["storage"]["vectors"]
    http, grpc = weaviate_values["service"], weaviate_values["grpcService"]
    url = urlsplit(vectors["url"])
    http_service, namespace = _service_and_namespace(url.hostname)
    grpc_service, grpc_namespace = _service_and_namespace(vectors["grpc_host"])
    assert (http_service, grpc_service) == (http["name"], grpc["name"])
    assert grpc_namespace == namespace
    assert url.port == http["ports"][0]["port"]
    assert vectors["grpc_port"] == grpc["ports"][0]["port"]


# -- one Ray version --------------------------------------------------------------------


def test_ray_version_agrees_everywhere(rayservice: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+rayproject/ray:(\d+\.\d+\.\d+)-py311-gpu\s*$", dockerfile, re.M)
    assert base, "the image must build FROM rayproject/ray:<version>-py311-gpu"
    version = base.group(1)
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == version
    images = [c["image"] for containers in _find(cluster, "containers") for c in containers]
    assert len(images) == 1 + len(_worker_groups(rayservice))
    for image in images:
        assert re.search(rf"\bray{re.escape(version)}\b", image.rsplit(":", 1)[1]), image
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (ray,) = [
        Requirement(r) for r in pyproject["project"]["dependencies"] if Requirement(r).name == "ray"
    ]
    assert ray.specifier.contains(Version(version))


# -- fault edges: replica death, models baked into the image ----------------------------


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_ingress_is_replaced_fast_and_drains_longer_than_a_request(name: str) -> None:
    """A dead Ingress replica is noticed within a couple of seconds, and one that is
    stopped (rolling update, scale-down) finishes every request it holds: the drain
    outlasts the slowest request (a model call up to model_timeout_s)."""
    config = _serve_config(name)
    ingress = _deployments(config)["Ingress"]
    args = AppArgs.model_validate(_app(config)["args"])
    assert ingress["health_check_period_s"] <= 5
    assert ingress["graceful_shutdown_timeout_s"] > args.model_timeout_s
    # The sweep's minimum age stays far above the longest ingest.
    assert args.orphan_sweep.enabled
    assert args.orphan_sweep.min_age_s >= 10 * args.model_timeout_s


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_production_runs_two_ingress_replicas_at_least(name: str) -> None:
    assert _deployments(_serve_config(name))["Ingress"]["autoscaling_config"]["min_replicas"] >= 2


def test_the_image_can_bake_the_models_of_the_production_config() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PREFETCH_MODELS=0$", dockerfile, re.M)
    config = re.search(r"^ARG MODELS_CONFIG=(\S+)$", dockerfile, re.M)
    assert config and config.group(1) == PRODUCTION
    copied = re.search(rf"^COPY .*\b{re.escape(PRODUCTION)}\b", dockerfile, re.M)
    fetched = dockerfile.index('python -m ingress.tools.fetch_models --config "$MODELS_CONFIG"')
    assert copied and copied.start() < fetched
    assert dockerfile.index("COPY --chown=ray:users deployments") < fetched
    # A baked image starts offline: nothing is fetched, a missing model fails at once.
    assert re.search(r"^ENV HF_HUB_OFFLINE=\$\{PREFETCH_MODELS\}$", dockerfile, re.M)


def test_model_pods_use_the_baked_models_offline(rayservice: dict[str, Any]) -> None:
    config = _serve_config(SERVE_CONFIG_V2)
    model_groups = [
        group
        for group in _worker_groups(rayservice)
        if any(_hosts(group, _deployments(config)[name]) for name in MODELS)
    ]
    assert model_groups
    for group in model_groups:
        (container,) = _containers(group)
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["HF_HUB_OFFLINE"] == "1"
        # A volume mounted over HF_HOME would hide the models baked into the image.
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert env["HF_HOME"] not in mounts
