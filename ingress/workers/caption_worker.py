"""The CaptionWorker deployment: one replica that drains the caption backlog, and
sweeps orphan blobs (ingress.workers.orphan_sweep).

One replica (num_replicas: 1) is the lock: Serve keeps exactly one running, on any
node, and starts another when it dies. While a rolling update briefly runs two, their
writes are conditional (a caption is written only while the record is still pending),
so none is doubled or mixed up. The store is the queue: a restarted worker simply
lists what is still pending.

It calls the Captioner through its handle with up to `concurrency` captions in
flight, so the Captioner's batches fill and its autoscaler sees the backlog as
ongoing requests; with min_replicas 0 the Captioner scales to zero when the backlog
is empty.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve
from ray.serve.handle import DeploymentHandle

from ingress.core.captioning import BacklogPolicy, CaptionBacklog
from ingress.core.imaging import ImageLimits
from ingress.http.metrics import service_metrics
from ingress.http.model_client import ServedModels
from ingress.settings import AppArgs, CaptionWorkerArgs
from ingress.stores.factory import open_stores
from ingress.workers.orphan_sweep import start_orphan_sweep

logger = logging.getLogger("ingress.workers.caption_worker")


def backlog_policy(worker: CaptionWorkerArgs) -> BacklogPolicy:
    return BacklogPolicy(
        concurrency=worker.concurrency,
        page_size=worker.page_size,
        max_attempts=worker.max_attempts,
        backoff_s=worker.backoff_s,
        idle_poll_s=worker.idle_poll_s,
    )


class CaptionWorker:
    async def __init__(  # type: ignore[misc]
        self, captioner: DeploymentHandle, embedder: DeploymentHandle, args: AppArgs
    ) -> None:
        models = await ServedModels.connect(captioner, embedder, args.model_timeout_s)
        vectors, blobs = await open_stores(
            args.storage, models.embedding_model, models.embedding_dim
        )
        metrics = service_metrics()
        self.backlog = CaptionBacklog(
            vectors,
            blobs,
            models,
            ImageLimits.of(args.intake),
            backlog_policy(args.captioning.worker),
            on_written=metrics.caption_written,
            on_failed=metrics.caption_failed,
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if args.captioning.worker.enabled:
            self._task = asyncio.get_running_loop().create_task(self.backlog.run(self._stop))
            logger.info(
                "caption worker draining the backlog with %s, %d in flight",
                models.caption_model,
                args.captioning.worker.concurrency,
            )
        # The graph's one replica over the stores also sweeps their orphan blobs.
        self._sweep = start_orphan_sweep(args.orphan_sweep, vectors, blobs, metrics, self._stop)

    def hold(self, seconds: float) -> None:
        """An ingress is serving interactive requests: start no new caption for a while."""
        self.backlog.hold(seconds)

    async def check_health(self) -> None:
        # A drain loop that died is a dead worker: Serve restarts the replica.
        if self._task is not None and self._task.done():
            raise RuntimeError("the caption backlog loop has stopped")
        if self._sweep is not None and self._sweep.done():
            raise RuntimeError("the orphan sweep loop has stopped")

    async def __del__(self) -> None:
        self._stop.set()


# Deployment defaults; serve_config.yaml overrides them per environment.
CaptionWorkerDeployment = serve.deployment(
    name="CaptionWorker",
    num_replicas=1,
    # It waits on the Captioner and the stores; decoding a pending image is its only work.
    ray_actor_options={"num_cpus": 0},
    health_check_period_s=10,
)(CaptionWorker)
