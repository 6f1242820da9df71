"""Images per second of each model deployment's own model path, float32 against `auto`.

    python benchmarks/model_throughput.py --random-weights
    python benchmarks/model_throughput.py --clip openai/clip-vit-base-patch32 \
        --blip Salesforce/blip-image-captioning-base

It runs the models' public batch API (ClipEmbedder.embed_images / embed_texts,
BlipCaptioner.caption_many: the same math a served batch runs, on the same model thread)
on plain instances, so the figures are the model bound that the served numbers are
compared with. `--random-weights` builds the
full-size architectures of the defaults with random weights (same FLOPs; for machines
without a model hub).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deployments.captioner import BlipCaptioner
from deployments.embedder import ClipEmbedder
from deployments.settings import (
    DEFAULT_CAPTION_MODEL,
    DEFAULT_EMBEDDING_MODEL,
    CaptionerSettings,
    DtypeChoice,
    EmbedderSettings,
    ModelSettings,
)
from tests.support.random_weights import save_random_blip, save_random_clip


@dataclass(frozen=True)
class Row:
    path: str
    dtype: str
    batch: int
    items_per_s: float


def sample_images(count: int, side: int = 512) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (side, side * 3 // 4, 3), dtype=np.uint8) for _ in range(count)]


def measure(fn: Callable[[list[Any]], Any], items: list[Any], min_seconds: float) -> float:
    """Items per second: one warm-up call, then repeated calls for at least min_seconds
    (and at least 2), reporting the median call."""
    fn(items)
    durations: list[float] = []
    started = time.perf_counter()
    while len(durations) < 2 or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        fn(items)
        durations.append(time.perf_counter() - t0)
    return len(items) / statistics.median(durations)


def bench_embedder(
    model_id: str, dtypes: list[DtypeChoice], batches: list[int], seconds: float
) -> list[Row]:
    rows: list[Row] = []
    for dtype in dtypes:
        embedder = ClipEmbedder(
            EmbedderSettings(model=ModelSettings(model_id=model_id, dtype=dtype))
        )
        label = str(embedder.placement.dtype).removeprefix("torch.")
        for batch in batches:
            rate = measure(embedder.embed_images, sample_images(batch), seconds)
            rows.append(Row("clip image", f"{dtype} ({label})", batch, rate))
        for batch in (1, max(batches)):
            texts = [f"a photo of a dog number {i} on the beach" for i in range(batch)]
            rows.append(
                Row(
                    "clip text",
                    f"{dtype} ({label})",
                    batch,
                    measure(embedder.embed_texts, texts, seconds),
                )
            )
        del embedder
    return rows


def bench_captioner(
    model_id: str,
    dtypes: list[DtypeChoice],
    batches: list[int],
    seconds: float,
    max_new_tokens: int,
) -> list[Row]:
    rows: list[Row] = []
    for dtype in dtypes:
        captioner = BlipCaptioner(
            CaptionerSettings(
                model=ModelSettings(model_id=model_id, dtype=dtype), max_new_tokens=max_new_tokens
            )
        )
        # Random weights rarely emit the end token; force full-length generation either
        # way so every run does the same work.
        captioner.model.generation_config.min_new_tokens = max_new_tokens
        label = str(captioner.placement.dtype).removeprefix("torch.")
        for batch in batches:
            rate = measure(captioner.caption_many, sample_images(batch), seconds)
            rows.append(Row("blip caption", f"{dtype} ({label})", batch, rate))
        del captioner
    return rows


def best(rows: list[Row], path: str, dtype_prefix: str) -> Row:
    matching = [r for r in rows if r.path == path and r.dtype.startswith(dtype_prefix)]
    return max(matching, key=lambda r: r.items_per_s)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--random-weights", action="store_true", help="full-size architectures, random weights"
    )
    parser.add_argument("--clip", default=DEFAULT_EMBEDDING_MODEL)
    parser.add_argument("--blip", default=DEFAULT_CAPTION_MODEL)
    parser.add_argument("--clip-batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--blip-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per cell")
    parser.add_argument("--skip-blip", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        clip_id, blip_id = args.clip, args.blip
        if args.random_weights:
            clip_id = str(save_random_clip(Path(scratch) / "clip", "base"))
            blip_id = str(save_random_blip(Path(scratch) / "blip", "base"))
        dtypes: list[DtypeChoice] = ["float32", "auto"]
        rows = bench_embedder(clip_id, dtypes, args.clip_batches, args.seconds)
        if not args.skip_blip:
            rows += bench_captioner(
                blip_id, dtypes, args.blip_batches, args.seconds, args.max_new_tokens
            )

    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"\ntorch {torch.__version__}, {device}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus"
    )
    print(f"{'path':<14}{'dtype':<22}{'batch':>6}{'items/s':>12}")
    for row in rows:
        print(f"{row.path:<14}{row.dtype:<22}{row.batch:>6}{row.items_per_s:>12.1f}")
    print()
    paths = ["clip image", "clip text"] + ([] if args.skip_blip else ["blip caption"])
    for path in paths:
        fp32, auto = best(rows, path, "float32"), best(rows, path, "auto")
        print(
            f"{path}: auto {auto.items_per_s:.1f}/s (batch {auto.batch}) vs float32 "
            f"{fp32.items_per_s:.1f}/s (batch {fp32.batch}): {auto.items_per_s / fp32.items_per_s:.1f}x"
        )


if __name__ == "__main__":
    main()
