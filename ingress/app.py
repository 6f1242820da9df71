"""The application builder that serve_config.yaml points at (`ingress.app:build_app`).

No `from __future__ import annotations` here: Ray Serve reads the builder's parameter
annotation at run time to validate `args:` against AppArgs.
"""

import logging

from ray.serve import Application
from ray.serve.deployment import Deployment

from deployments.captioner import Captioner
from deployments.embedder import Embedder
from ingress.http.deployment import Ingress
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
    args = args.with_absolute_paths()
    return ingress.bind(captioner.bind(args.captioner), embedder.bind(args.embedder), args)
