"""The application builder that serve_config.yaml points at (`ingress.app:build_app`),
and the one place that builds the service's objects from its settings.

No `from __future__ import annotations` here: Ray Serve reads the builder's parameter
annotation at run time to validate `args:` against AppArgs.
"""

import logging

from ray.serve import Application
from ray.serve.deployment import Deployment
from ray.serve.handle import DeploymentHandle

from ingress.core.fetch import FetchPolicy, SafeFetcher
from ingress.core.imaging import ImageLimits
from ingress.core.service import ImageService
from ingress.core.thumbnails import Thumbnailer
from ingress.http.access import keyring_for
from ingress.http.model_client import ServedModels
from ingress.http.priority import WorkerNudge
from ingress.http.rate_limit import limiter_for
from ingress.http.runtime import Runtime
from ingress.settings import AppArgs, S3Args, ThumbnailArgs, UrlFetchArgs
from ingress.stores.factory import open_stores

logger = logging.getLogger("ingress.app")


def build_app(args: AppArgs) -> Application:
    """Ingress -> (Captioner, Embedder), configured by `args`."""
    return compose(args)


def compose(
    args: AppArgs,
    captioner: Deployment | None = None,
    embedder: Deployment | None = None,
    ingress: Deployment | None = None,
    caption_worker: Deployment | None = None,
) -> Application:
    """The graph with replaceable deployment options (tests run replicas at num_cpus 0).
    The caption worker shares the Captioner and Embedder with the Ingress; it is bound
    into the Ingress only so that Serve deploys it with the graph."""
    # Imported here, not at the top: the Ingress replica imports this module for
    # `assemble`, and must not load torch and transformers, which only the model
    # deployments run.
    from deployments.captioner import Captioner
    from deployments.embedder import Embedder
    from ingress.http.deployment import Ingress
    from ingress.workers.caption_worker import CaptionWorkerDeployment

    args = args.with_absolute_paths()
    captioner_app = (captioner or Captioner).bind(args.captioner)
    embedder_app = (embedder or Embedder).bind(args.embedder)
    worker_app = (caption_worker or CaptionWorkerDeployment).bind(captioner_app, embedder_app, args)
    return (ingress or Ingress).bind(captioner_app, embedder_app, args, assemble, worker_app)


async def assemble(
    args: AppArgs,
    captioner: DeploymentHandle,
    embedder: DeploymentHandle,
    caption_worker: DeploymentHandle | None = None,
) -> Runtime:
    """Everything one Ingress replica serves with, from its arguments."""
    # Before any await: a missing or malformed key variable fails the replica at once.
    keyring = keyring_for(args.auth)
    limiter = limiter_for(args.rate_limit)
    models = await ServedModels.connect(captioner, embedder, args.model_timeout_s)
    vectors, blobs = await open_stores(args.storage, models.embedding_model, models.embedding_dim)
    limits = ImageLimits.of(args.intake)
    blobs_config = args.storage.blobs
    return Runtime(
        args=args,
        models=models,
        service=ImageService(
            models, vectors, blobs, limits, args.search, query_side=models.image_input_side
        ),
        fetcher=SafeFetcher(fetch_policy(args.url_fetch, args.intake.max_upload_bytes)),
        thumbnails=thumbnailer(args.thumbnails, limits),
        keyring=keyring,
        limiter=limiter,
        redirect_content=isinstance(blobs_config, S3Args) and blobs_config.presigned_redirect,
        presign_expiry_s=getattr(blobs_config, "presign_expiry_s", 0),
        nudge_worker=_nudge(args, caption_worker),
    )


def _nudge(args: AppArgs, caption_worker: DeploymentHandle | None) -> WorkerNudge | None:
    hold_s = args.captioning.worker.yield_to_requests_s
    if caption_worker is None or hold_s <= 0:
        return None
    return WorkerNudge(caption_worker, hold_s)


def fetch_policy(url_fetch: UrlFetchArgs, max_bytes: int) -> FetchPolicy:
    return FetchPolicy(
        allow_private_addresses=url_fetch.allow_private_addresses,
        allowed_networks=tuple(url_fetch.allowed_networks),
        connect_timeout_s=url_fetch.connect_timeout_s,
        read_timeout_s=url_fetch.read_timeout_s,
        total_timeout_s=url_fetch.total_timeout_s,
        max_bytes=max_bytes,
        max_redirects=url_fetch.max_redirects,
    )


def thumbnailer(thumbnails: ThumbnailArgs, limits: ImageLimits) -> Thumbnailer:
    return Thumbnailer(
        thumbnails.sizes,
        thumbnails.default_size,
        limits,
        fmt=thumbnails.format,
        quality=thumbnails.quality,
        cache_bytes=thumbnails.cache_bytes,
        max_concurrent=thumbnails.max_concurrent,
    )
