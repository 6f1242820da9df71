"""The orphan sweep inside the Serve graph: ingress.core.orphans' OrphanSweep on the
stores the CaptionWorker replica already holds, with its results as metrics.

It runs beside the caption loop in the CaptionWorker because that deployment is
already the graph's one singleton replica over the stores: Serve keeps exactly one and
restarts it wherever it dies, which is the "one sweep at a time" the rules ask for,
without a second actor (and its memory and store connections) for an hourly job.
"""

from __future__ import annotations

import asyncio

from ingress.core.orphans import OrphanReport, OrphanSweep, Removal, SweepPolicy
from ingress.http.metrics import ServiceMetrics
from ingress.settings import OrphanSweepArgs
from ingress.stores.base import BlobStore, VectorStore


def sweep_policy(args: OrphanSweepArgs) -> SweepPolicy:
    return SweepPolicy(
        min_age_s=args.min_age_s,
        interval_s=args.interval_s,
        initial_delay_s=args.initial_delay_s,
    )


def start_orphan_sweep(
    args: OrphanSweepArgs,
    vectors: VectorStore,
    blobs: BlobStore,
    metrics: ServiceMetrics,
    stop: asyncio.Event,
) -> asyncio.Task[None] | None:
    """The sweep loop as a task on the running loop; None when it is switched off."""
    if not args.enabled:
        return None

    def record(report: OrphanReport, removal: Removal) -> None:
        broken = len(report.records_without_blob) + len(removal.raced)
        metrics.orphans_swept(len(report.blobs_without_record), len(removal.removed), broken)

    sweep = OrphanSweep(vectors, blobs, sweep_policy(args), on_swept=record)
    return asyncio.get_running_loop().create_task(sweep.run(stop))
