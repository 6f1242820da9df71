"""The Ingress deployment: one replica's Runtime, and the FastAPI app that serves it.

The app is built per replica, after the constructor (Serve's late-bound ingress,
`__serve_build_asgi_app__`), so that routes are plain functions over a Runtime and
nothing is pickled with the class but its arguments.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from ingress.http.api import create_api
from ingress.http.runtime import Runtime
from ingress.settings import AppArgs

logger = logging.getLogger("ingress.http.deployment")

# What builds a replica's Runtime from its arguments and the model handles
# (ingress.app.assemble, passed in by the builder).
Assemble = Callable[
    [AppArgs, DeploymentHandle, DeploymentHandle, DeploymentHandle | None], Awaitable[Runtime]
]


@serve.ingress()
class ImageSearchApi:
    # Ray actors allow an async constructor; the store cannot open before the embedder
    # has said which model and dimension it serves.
    async def __init__(  # type: ignore[misc]
        self,
        captioner: DeploymentHandle,
        embedder: DeploymentHandle,
        args: AppArgs,
        assemble: Assemble,
        caption_worker: DeploymentHandle | None = None,
    ) -> None:
        # The caption worker drains the backlog on its own; the Ingress holds its
        # handle only because Serve deploys what the ingress is bound to.
        self.caption_worker = caption_worker
        self.runtime = await assemble(args, captioner, embedder, caption_worker)
        models = self.runtime.models
        logger.info(
            "ingress ready: data in %s, captions by %s, vectors by %s (dim %d)",
            args.storage.data_dir,
            models.caption_model,
            models.embedding_model,
            models.embedding_dim,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self.runtime)


# Deployment defaults; serve_config.yaml overrides them per environment.
Ingress = serve.deployment(
    name="Ingress",
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0.2},
)(ImageSearchApi)
