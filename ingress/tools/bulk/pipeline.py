"""The bulk job as one Ray Data pipeline: read and decode (CPU tasks) -> look up (which
ids are stored or claimed already) -> embed (actor pool, one model per actor, GPUs
where there are some) -> caption (inline only) -> write (blobs, then records).

Rows come back to the driver as the writers finish them, small (the heavy columns are
emptied on the way), for the progress line and the report. Nothing here keeps state
between runs: a rerun finds what an earlier one wrote by its ids, in the store.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ingress.app import fetch_policy
from ingress.core.imaging import ImageLimits
from ingress.settings import AppArgs
from ingress.tools.bulk.claims import start_registry
from ingress.tools.bulk.sources import ReadSettings, S3Endpoint
from ingress.tools.bulk.stages import (
    Caption,
    CaptionMode,
    Embed,
    Lookup,
    RecordSettings,
    Write,
    decode,
)

# What the driver reads of each finished row.
REPORTED = ["source", "outcome", "reason", "id"]


@dataclass(frozen=True)
class Resources:
    """How the stages are spread over the cluster (see cli.resources_for)."""

    embed_actors: int = 1
    embed_batch_size: int = 32
    embed_cpus: float = 1.0
    embed_gpus: float = 0.0
    caption_actors: int = 1
    caption_batch_size: int = 8
    caption_cpus: float = 1.0
    caption_gpus: float = 0.0
    # Per read-and-decode task.
    decode_cpus: float = 1.0
    # The lookup and writer actors wait on stores, mostly.
    store_cpus: float = 0.25
    # Lookup actors, and as many writer actors.
    store_actors: int = 1
    write_batch_size: int = 128
    # Sources per block: the unit a read-and-decode task takes.
    sources_per_block: int = 32
    # Environment variables for every stage's processes (runtime_env), e.g. store
    # credentials on a cluster whose workers lack them.
    worker_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BulkJob:
    args: AppArgs
    captions: CaptionMode = "background"
    tags: tuple[str, ...] = ()
    s3: S3Endpoint = field(default_factory=S3Endpoint)
    resources: Resources = field(default_factory=Resources)


def _read_settings(job: BulkJob) -> ReadSettings:
    max_bytes = job.args.intake.max_upload_bytes
    return ReadSettings(fetch_policy(job.args.url_fetch, max_bytes), job.s3, max_bytes)


def build(job: BulkJob, rows: list[dict[str, Any]]) -> Any:
    """The pipeline over rows (ingress.tools.bulk.rows), as a lazy Dataset."""
    import ray.data
    from ray.data import ActorPoolStrategy

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver prints its own progress line
    res, args = job.resources, job.args
    remote: dict[str, Any] = {"runtime_env": {"env_vars": res.worker_env}} if res.worker_env else {}
    inline = job.captions == "inline"

    blocks = max(1, math.ceil(len(rows) / res.sources_per_block))
    ds: Any = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(
        decode,
        batch_format="pyarrow",
        batch_size=None,  # a whole block: its reads run concurrently in one task
        fn_kwargs={"read": _read_settings(job), "limits": ImageLimits.of(args.intake)},
        num_cpus=res.decode_cpus,
        # Reads spread over the nodes. Also keeps these tasks apart from the lookup
        # actors (which schedule by default): Ray Data would otherwise fuse them into
        # those few actors when their resources match, and decode one block at a time.
        scheduling_strategy="SPREAD",
        **remote,
    )
    ds = ds.map_batches(
        Lookup,
        batch_format="pyarrow",
        batch_size=None,
        fn_constructor_kwargs={"storage": args.storage, "claims": start_registry()},
        compute=ActorPoolStrategy(size=res.store_actors),
        num_cpus=res.store_cpus,
        scheduling_strategy="DEFAULT",
        **remote,
    )
    ds = ds.map_batches(
        Embed,
        batch_format="pyarrow",
        batch_size=res.embed_batch_size,
        fn_constructor_kwargs={"settings": args.embedder, "keep_pixels": inline},
        compute=ActorPoolStrategy(size=res.embed_actors),
        num_cpus=res.embed_cpus,
        num_gpus=res.embed_gpus,
        **remote,
    )
    if inline:
        ds = ds.map_batches(
            Caption,
            batch_format="pyarrow",
            batch_size=res.caption_batch_size,
            fn_constructor_kwargs={"settings": args.captioner},
            compute=ActorPoolStrategy(size=res.caption_actors),
            num_cpus=res.caption_cpus,
            num_gpus=res.caption_gpus,
            **remote,
        )
    record = RecordSettings(
        embedding_model=args.embedder.model.model_id,
        caption_model=args.captioner.model.model_id,
        captions=job.captions,
        tags=job.tags,
    )
    return ds.map_batches(
        Write,
        batch_format="pyarrow",
        batch_size=res.write_batch_size,
        fn_constructor_kwargs={"storage": args.storage, "settings": record},
        compute=ActorPoolStrategy(size=res.store_actors),
        num_cpus=res.store_cpus,
        **remote,
    ).select_columns(REPORTED)


def finished_rows(job: BulkJob, rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Run the pipeline; the finished rows (REPORTED columns), a batch at a time, as the
    writers give them back."""
    if not rows:
        return
    for batch in build(job, rows).iter_batches(batch_size=None, batch_format="pyarrow"):
        yield batch.to_pylist()


def run(
    job: BulkJob, rows: list[dict[str, Any]], on_rows: Callable[[list[dict[str, Any]]], None]
) -> None:
    for batch in finished_rows(job, rows):
        on_rows(batch)
