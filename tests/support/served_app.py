"""Deploying the real graph for a test module: test replicas at num_cpus 0 (the machine
has 2 cores and each replica would reserve one), through the same compose() the
builder uses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from ray import serve
from ray.serve.deployment import Deployment

from deployments.captioner import Captioner
from deployments.embedder import Embedder
from ingress.app import compose
from ingress.http.deployment import Ingress
from ingress.settings import AppArgs
from ingress.workers.caption_worker import CaptionWorkerDeployment


def tiny_graph_args(
    blip_dir: Path,
    clip_dir: Path,
    storage: dict[str, Any],
    *,
    max_new_tokens: int = 4,
    **sections: Any,
) -> AppArgs:
    """The builder's args for the graph on the tiny test models; `sections` are further
    top-level settings (intake, auth, ...). Short captions keep generation cheap.
    Captions are made inline unless `captioning` says otherwise: most served tests
    check what an upload answers with its caption; tests/served/test_captions_e2e.py
    tests the background mode."""
    sections.setdefault("captioning", {"mode": "inline"})
    return AppArgs.model_validate(
        {
            "storage": storage,
            "captioner": {
                "model": {"model_id": str(blip_dir)},
                "max_new_tokens": max_new_tokens,
            },
            "embedder": {"model": {"model_id": str(clip_dir)}},
            **sections,
        }
    )


def deploy_graph(
    args: AppArgs,
    name: str,
    route_prefix: str,
    *,
    ingress_env: dict[str, str] | None = None,
    captioner_options: dict[str, Any] | None = None,
    embedder_options: dict[str, Any] | None = None,
    captioner: Deployment = Captioner,
    worker_options: dict[str, Any] | None = None,
    ingress_options: dict[str, Any] | None = None,
) -> None:
    """serve.run the graph; `ingress_env` reaches the replicas that open the stores (the
    ingress and the caption worker) as environment variables, the way a Kubernetes
    Secret would. `captioner` replaces BLIP with another
    deployment of the same interface (a deterministic one for search tests)."""
    zero: dict[str, Any] = {"num_cpus": 0}
    ingress_actor = {**zero, "runtime_env": {"env_vars": ingress_env}} if ingress_env else zero
    app = compose(
        args,
        captioner.options(ray_actor_options=zero, **(captioner_options or {})),
        Embedder.options(ray_actor_options=zero, **(embedder_options or {})),
        Ingress.options(ray_actor_options=ingress_actor, **(ingress_options or {})),
        # The worker opens the same stores, with the same credentials.
        CaptionWorkerDeployment.options(ray_actor_options=ingress_actor, **(worker_options or {})),
    )
    serve.run(app, name=name, route_prefix=route_prefix)


def blob_files(data_dir: Path) -> list[Path]:
    root = data_dir / "blobs"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@dataclass
class Deployed:
    """A deployed app on the embedded stores: its client and where it keeps data."""

    client: httpx.Client
    data_dir: Path

    def state(self) -> tuple[int, list[Path]]:
        """What is stored: the record count and the blob files."""
        return self.client.get("/images").json()["total"], blob_files(self.data_dir)


@contextmanager
def served(
    ray_url: str,
    args: AppArgs,
    name: str,
    route_prefix: str,
    *,
    client_timeout_s: float = 60,
    **deploy: Any,
) -> Iterator[Deployed]:
    """The graph deployed as `name` under `route_prefix` (`deploy` as for
    deploy_graph), a client for it, and the app deleted afterwards."""
    deploy_graph(args, name, route_prefix, **deploy)
    try:
        with httpx.Client(base_url=f"{ray_url}{route_prefix}", timeout=client_timeout_s) as client:
            yield Deployed(client, args.storage.data_dir)
    finally:
        serve.delete(name)


def replica_names(app: str, deployment: str) -> list[str]:
    """The names of the live replica actors of `deployment` in `app` (none while Serve
    replaces a dead one).

    Serve names replica actors `SERVE_REPLICA::<app>#<deployment>#<unique id>` in the
    "serve" namespace; a replacement gets a new unique id. (ray.util.state would say the
    same, but it needs the dashboard, which the test session does not start.)
    """
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return [
        str(actor["name"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == "serve" and actor["name"].startswith(prefix)
    ]


def replica_name(app: str, deployment: str) -> str:
    """The name of the one live replica actor of `deployment` in `app`."""
    names = replica_names(app, deployment)
    assert len(names) == 1, names
    return names[0]
