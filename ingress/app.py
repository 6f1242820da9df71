"""The application builder that serve_config.yaml points at (`ingress.app:build_app`).

No `from __future__ import annotations` here: Ray Serve reads the builder's parameter
annotation at run time to validate `args:` against AppArgs.
"""

import logging
from pathlib import Path

from ray.serve import Application
from ray.serve.deployment import Deployment

from deployments.captioner import Captioner
from deployments.embedder import Embedder
from ingress.api import Ingress
from ingress.settings import AppArgs

logger = logging.getLogger("ingress.app")


def build_app(args: AppArgs) -> Application:
    """Ingress -> (Captioner, Embedder), configured by `args`."""
    return compose(args)


def compose(
    args: AppArgs,
    captioner: Deployment = Captioner,
    embedder: Deployment = Embedder,
    ingress: Deployment = Ingress,
) -> Application:
    """The graph with replaceable deployment options (tests run replicas at num_cpus 0)."""
    args = _absolute_paths(args)
    return ingress.bind(captioner.bind(args.captioner), embedder.bind(args.embedder), args)


def _absolute_paths(args: AppArgs) -> AppArgs:
    # Replicas do not share the working directory of `serve run`; resolve relative paths
    # where the builder runs, which is where the user typed them.
    storage = args.storage
    resolved: dict[str, object] = {"data_dir": storage.data_dir.resolve()}
    for name in ("vectors", "blobs"):
        store = getattr(storage, name)
        if getattr(store, "path", None) is not None:
            resolved[name] = store.model_copy(update={"path": store.path.resolve()})
    update: dict[str, object] = {"storage": storage.model_copy(update=resolved)}
    for name in ("captioner", "embedder"):
        settings = getattr(args, name)
        local = Path(settings.model.model_id).expanduser()
        if local.exists():
            model = settings.model.model_copy(update={"model_id": str(local.resolve())})
            update[name] = settings.model_copy(update={"model": model})
    return args.model_copy(update=update)
