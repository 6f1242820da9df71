"""The command line of `imagesearch-bulk` (and `python -m ingress.tools.bulk`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from imagesearch_cli.progress import Progress
from ingress.settings import AppArgs, S3Args
from ingress.stores.base import StoreError
from ingress.tools.bulk.pipeline import BulkJob, Resources, run
from ingress.tools.bulk.report import Summary
from ingress.tools.bulk.sources import S3Endpoint, UsageError, source_rows
from ingress.tools.config import (
    EXIT_USAGE,
    ConfigError,
    add_config_arguments,
    describe_storage,
    load_app_args,
    recorded_embedding,
    run_command,
    usage_error,
    without_bucket_creation,
)

# The exit statuses of `imagesearch index` (EXIT_USAGE is 2 there too).
EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
DEFAULT_REPORT = Path("imagesearch-bulk-report.json")

# Batch sizes per embedder actor: a GPU wants large ones, a CPU gains little past 32.
_GPU_EMBED_BATCH, _CPU_EMBED_BATCH = 256, 32
_GPU_CAPTION_BATCH, _CPU_CAPTION_BATCH = 64, 8


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be positive")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagesearch-bulk",
        description="Index many images at once with a Ray Data job on the Ray cluster "
        "RAY_ADDRESS names (or a local one), into the stores and with the models of a "
        "serve config. Exit status: 0 everything is indexed, 1 something failed (run "
        "again: only what is missing is done), 2 usage error, 130 interrupted.",
    )
    parser.add_argument(
        "sources",
        nargs="+",
        help="folders (recursive), globs, files, .txt URL lists, s3://bucket/prefix",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--captions",
        choices=("background", "inline", "none"),
        default="background",
        help="background (default): records are pending and the service's caption worker "
        "captions them; inline: caption in the job; none: no caption (`python -m "
        "ingress.tools.reindex requeue` hands them to the worker later)",
    )
    parser.add_argument("--tags", default="", help="comma-separated tags for every image")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="the JSON report")
    parser.add_argument("--all-files", action="store_true", help="not only image file names")
    parser.add_argument("--s3-endpoint-url", help="for s3:// sources (default: the config's)")
    parser.add_argument("--s3-region", help="for s3:// sources (default: the config's)")
    parser.add_argument("--embedders", type=_positive(int), help="embedder actors")
    parser.add_argument("--embed-batch-size", type=_positive(int))
    parser.add_argument("--gpus-per-embedder", type=float, help="default: 1 where GPUs exist")
    parser.add_argument("--cpus-per-embedder", type=_positive(float), default=1.0)
    parser.add_argument("--captioners", type=_positive(int), help="captioner actors (inline)")
    parser.add_argument("--caption-batch-size", type=_positive(int))
    parser.add_argument("--cpus-per-decoder", type=_positive(float), default=1.0)
    parser.add_argument("--store-actors", type=_positive(int), default=1)
    parser.add_argument("--write-batch-size", type=_positive(int), default=128)
    parser.add_argument("--sources-per-block", type=_positive(int), default=32)
    show = parser.add_mutually_exclusive_group()
    show.add_argument("--progress", dest="progress", action="store_true", default=None)
    show.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def resources_for(options: argparse.Namespace, gpus: float) -> Resources:
    """Stage placement: on a GPU cluster one embedder per GPU (sharing each GPU with a
    captioner when captions are inline); else one CPU embedder."""
    inline = options.captions == "inline"
    whole = int(gpus)
    share = 0.5 if inline else 1.0
    per_embedder = options.gpus_per_embedder
    if per_embedder is None:
        per_embedder = share if whole else 0.0
    on_gpu = per_embedder > 0
    return Resources(
        embed_actors=options.embedders or max(1, whole),
        embed_batch_size=options.embed_batch_size
        or (_GPU_EMBED_BATCH if on_gpu else _CPU_EMBED_BATCH),
        embed_cpus=options.cpus_per_embedder,
        embed_gpus=per_embedder,
        caption_actors=options.captioners or max(1, whole),
        caption_batch_size=options.caption_batch_size
        or (_GPU_CAPTION_BATCH if on_gpu else _CPU_CAPTION_BATCH),
        caption_cpus=options.cpus_per_embedder,
        caption_gpus=(1.0 - share) if on_gpu and inline else 0.0,
        decode_cpus=options.cpus_per_decoder,
        store_actors=options.store_actors,
        write_batch_size=options.write_batch_size,
        sources_per_block=options.sources_per_block,
    )


def _s3_endpoint(options: argparse.Namespace, args: AppArgs) -> S3Endpoint:
    blobs = args.storage.blobs
    configured = blobs if isinstance(blobs, S3Args) else None
    return S3Endpoint(
        endpoint_url=options.s3_endpoint_url or (configured.endpoint_url if configured else None),
        region=options.s3_region or (configured.region if configured else None),
    )


def _check_embedder(args: AppArgs) -> str | None:
    """Why the configured embedder cannot write to the store, if it cannot."""
    try:
        model, _ = asyncio.run(recorded_embedding(args.storage))
    except StoreError:
        return None  # no collection yet: the first writer creates it
    wanted = args.embedder.model.model_id
    if model != wanted:
        return (
            f"the store holds vectors of {model!r}, not of the configured embedder {wanted!r}: "
            "name a new table (collection) in the config, or reindex"
        )
    return None


def _connect_ray() -> float:
    """The Ray cluster RAY_ADDRESS names, a local one without it, or the one this process
    is connected to already; the GPUs it has."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    return float(ray.cluster_resources().get("GPU", 0))


def _interrupt_on_sigterm() -> None:
    """A cancelled Kubernetes job sends SIGTERM: end as Ctrl-C does, with a report."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None, *, worker_env: dict[str, str] | None = None) -> int:
    """The command; its exit status. worker_env: environment variables for the
    pipeline's processes (see Resources.worker_env)."""
    options = build_parser().parse_args(argv)
    try:
        args = load_app_args(options.config, options.app)
    except ConfigError as e:
        return usage_error(str(e))
    args = args.model_copy(update={"storage": without_bucket_creation(args.storage)})
    s3 = _s3_endpoint(options, args)
    try:
        rows, problems = source_rows(options.sources, s3, all_files=options.all_files)
    except UsageError as e:
        return usage_error(str(e))
    if not rows and not problems:
        return usage_error("nothing to index: no image files among the given sources")
    mismatch = _check_embedder(args)
    if mismatch:
        return usage_error(mismatch)

    print(describe_storage(args.storage))
    resources = resources_for(options, _connect_ray())
    if worker_env:
        resources = Resources(**{**resources.__dict__, "worker_env": dict(worker_env)})
    tags = tuple(tag.strip() for tag in options.tags.split(",") if tag.strip())
    job = BulkJob(args, options.captions, tags, s3, resources)
    print(
        f"{len(rows)} sources; embedder {args.embedder.model.model_id} x{resources.embed_actors} "
        f"(batch {resources.embed_batch_size}, {resources.embed_gpus:g} GPU each); "
        f"captions {options.captions}",
        flush=True,
    )

    show = sys.stderr.isatty() if options.progress is None else options.progress
    total = len(rows) + len(problems)
    progress = (
        Progress(total=total, stream=sys.stderr, bar=show)
        if options.progress is not False
        else None
    )
    summary = Summary(total, progress)
    summary.add_problems(problems)
    interrupted = False
    try:
        run(job, rows, summary.add_rows)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if progress is not None:
            progress.close()
    summary.print(sys.stdout)
    summary.write(options.report, interrupted=interrupted)
    print(f"report: {options.report}")
    if interrupted:
        print(
            "interrupted: run the same command again; only what is missing is done", file=sys.stderr
        )
        return EXIT_INTERRUPTED
    return EXIT_DONE if summary.complete else EXIT_FAILED


def entry() -> None:
    """The console script."""
    _interrupt_on_sigterm()
    run_command(main)


__all__ = ["EXIT_DONE", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_USAGE", "entry", "main"]
