"""Captions in the background, measured: ingest speed, backlog drain, inline against
background, and what draining costs concurrent searches.

    python -m benchmarks.captions            # ~6 min on 2 cores; appends to RESULTS.md
    python -m benchmarks.captions --images 16 --no-write   # a smoke run

Full-size BLIP-base and CLIP-B/32 with random weights (every caption exactly
--max-new-tokens tokens), the graph with serve_config.yaml's deployment options, HTTP
on loopback. In one run:

1. Bounds: the embedder's own images/s (image batch, the served threads and dtype) and
   the captioner's (its served batch size and threads), through the public batch API.
2. Background: --clients clients upload --images new images; ingest images/s ÷ the
   embedder's bound (the worker yields to the uploads, see yield_to_requests_s). Then
   the backlog drains with nothing else asked: captions/s from the end of the uploads
   to an empty backlog ÷ the captioner's bound.
3. Search while draining: half as many images again, and p50 of POST /search/text (one
   client) while they drain, against an idle service.
4. Inline: the same uploads with captioning.mode inline; the time from the first upload
   to all images captioned, against the same time in background mode.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.model_throughput import measure, sample_images
from benchmarks.suite import (
    deploy,
    machine_info,
    percentile,
    photos,
    prepare_models,
    say,
    serve_layout,
    undeploy,
    wait_healthy,
)
from deployments.captioner import BlipCaptioner
from deployments.embedder import ClipEmbedder
from deployments.settings import CaptionerSettings, EmbedderSettings, ModelSettings
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Bounds:
    embed_per_s: float
    caption_per_s: float


@dataclass
class Served:
    mode: str
    ingest_per_s: float
    all_captioned_s: float
    drain_per_s: float | None = None
    search_p50_draining_ms: float | None = None
    search_p50_idle_ms: float | None = None


def bounds(
    blip: Path, clip: Path, args: dict[str, Any], options: dict[str, Any], tokens: int
) -> Bounds:
    def model(section: str, path: Path) -> ModelSettings:
        settings = dict(args.get(section, {}).get("model", {}))
        settings["model_id"] = str(path)
        return ModelSettings.model_validate(settings)

    embed_batch = options["Embedder"]["user_config"]["image"]["max_batch_size"]
    caption_batch = options["Captioner"]["user_config"]["max_batch_size"]
    embedder = ClipEmbedder(EmbedderSettings(model=model("embedder", clip)))
    embed = measure(embedder.embed_images, sample_images(embed_batch), 10.0)
    del embedder
    captioner = BlipCaptioner(
        CaptionerSettings(model=model("captioner", blip), max_new_tokens=tokens)
    )
    captioner.model.generation_config.min_new_tokens = tokens
    caption = measure(captioner.caption_many, sample_images(caption_batch), 20.0)
    del captioner
    return Bounds(embed, caption)


async def _upload_all(base: str, images: list[bytes], clients: int) -> tuple[float, float]:
    """Every image uploaded once by `clients` loops; (first send, last answer)."""
    queue = list(enumerate(images))
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=clients * 2)
    async with httpx.AsyncClient(base_url=base, timeout=900.0, limits=limits) as client:

        async def loop() -> None:
            while queue:
                i, data = queue.pop()
                files = {"file": (f"p{i}.jpg", data, "image/jpeg")}
                response = await client.post("/images", files=files)
                if response.status_code != 201:
                    raise RuntimeError(f"upload answered {response.status_code}: {response.text}")

        await asyncio.gather(*(loop() for _ in range(clients)))
    return started, time.perf_counter()


async def _backlog(client: httpx.AsyncClient) -> int:
    listed = await client.get("/images", params={"caption_status": "pending", "limit": 1})
    return int(listed.json()["total"])


async def _searches(client: httpx.AsyncClient, stop: asyncio.Event) -> list[float]:
    latencies: list[float] = []
    n = 0
    while not stop.is_set():
        n += 1
        sent = time.perf_counter()
        response = await client.post("/search/text", json={"query": f"a photo number {n}"})
        if response.status_code == 200:
            latencies.append((time.perf_counter() - sent) * 1000)
    return latencies


async def _drained(client: httpx.AsyncClient) -> float:
    # The backlog lives in the service: polling it is the only way to watch it.
    while await _backlog(client) > 0:  # noqa: ASYNC110
        await asyncio.sleep(0.25)
    return time.perf_counter()


async def background_run(base: str, images: list[bytes], more: list[bytes], clients: int) -> Served:
    started, acked = await _upload_all(base, images, clients)
    ingest = len(images) / (acked - started)
    async with httpx.AsyncClient(base_url=base, timeout=120.0) as client:
        # The drain alone, nothing else asked of the service.
        pending_at_ack = await _backlog(client)
        drain_started = time.perf_counter()
        done = await _drained(client)
        # Searches while a second batch drains, then on an idle service.
        await _upload_all(base, more, clients)
        stop = asyncio.Event()
        searching = asyncio.create_task(_searches(client, stop))
        await _drained(client)
        stop.set()
        draining = await searching
        idle_stop = asyncio.Event()
        idle_task = asyncio.create_task(_searches(client, idle_stop))
        await asyncio.sleep(10.0)
        idle_stop.set()
        idle = await idle_task
    return Served(
        mode="background",
        ingest_per_s=ingest,
        all_captioned_s=done - started,
        drain_per_s=pending_at_ack / (done - drain_started) if pending_at_ack else None,
        search_p50_draining_ms=percentile(draining, 0.5),
        search_p50_idle_ms=percentile(idle, 0.5),
    )


async def inline_run(base: str, images: list[bytes], clients: int) -> Served:
    started, acked = await _upload_all(base, images, clients)
    return Served("inline", len(images) / (acked - started), acked - started)


def served(
    mode: str,
    raw: dict[str, Any],
    options: dict[str, Any],
    blip: Path,
    clip: Path,
    images: list[bytes],
    clients: int,
    work: Path,
) -> Served:
    args = {
        **raw,
        "storage": {"data_dir": str(work / mode)},
        "captioner": {
            **raw.get("captioner", {}),
            "model": {**raw.get("captioner", {}).get("model", {}), "model_id": str(blip)},
        },
        "embedder": {
            **raw.get("embedder", {}),
            "model": {**raw.get("embedder", {}).get("model", {}), "model_id": str(clip)},
        },
        "captioning": {**raw.get("captioning", {}), "mode": mode},
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    deploy(args, options, port)
    try:
        asyncio.run(wait_healthy(base, 600))
        if mode == "background":
            more = photos(len(images) // 2, seed=8)
            return asyncio.run(background_run(base, images, more, clients))
        return asyncio.run(inline_run(base, images, clients))
    finally:
        undeploy()


def report(b: Bounds, bg: Served, inline: Served, images: int, clients: int) -> str:
    drain = bg.drain_per_s or float("nan")
    slow = (bg.search_p50_draining_ms or float("nan")) / (bg.search_p50_idle_ms or float("nan"))
    info = machine_info()
    lines = [
        "",
        "## Captions in the background (benchmarks/captions.py)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {info.get('cpu', '?')}; "
        f"{images} new 640x480 JPEGs, {clients} clients, serve_config.yaml's options, "
        "full-size random models.",
        "",
        "| measure | value | target | |",
        "|---|---|---|---|",
        f"| served ingest (background) ÷ embedder bound | {bg.ingest_per_s / b.embed_per_s:.2f}x "
        f"({bg.ingest_per_s:.1f} vs {b.embed_per_s:.1f} img/s) | ≥ 0.7 | "
        f"{'**met**' if bg.ingest_per_s / b.embed_per_s >= 0.7 else 'not met'} |",
        f"| backlog drain ÷ captioner bound | {drain / b.caption_per_s:.2f}x "
        f"({drain:.2f} vs {b.caption_per_s:.2f} captions/s) | ≥ 0.8 | "
        f"{'**met**' if drain / b.caption_per_s >= 0.8 else 'not met'} |",
        f"| first upload to all captioned: background ÷ inline | "
        f"{bg.all_captioned_s / inline.all_captioned_s:.2f}x ({bg.all_captioned_s:.0f} s vs "
        f"{inline.all_captioned_s:.0f} s) | | |",
        f"| acknowledged: inline ingest | {inline.ingest_per_s:.2f} img/s | | |",
        f"| text search p50 while draining ÷ idle | {slow:.2f}x "
        f"({bg.search_p50_draining_ms:.0f} vs {bg.search_p50_idle_ms:.0f} ms) | | |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    raw, options = serve_layout(args.config)
    with tempfile.TemporaryDirectory(prefix="captions-bench-") as tmp:
        work = Path(tmp)
        say("building full-size random models")
        blip, clip = prepare_models(work / "models", args.max_new_tokens)
        say("model bounds")
        b = bounds(blip, clip, raw, options, args.max_new_tokens)
        images = photos(args.images, seed=7)
        say("background mode")
        bg = served("background", raw, options, blip, clip, images, args.clients, work)
        say("inline mode")
        inline = served("inline", raw, options, blip, clip, images, args.clients, work)
    text = report(b, bg, inline, args.images, args.clients)
    print(text)
    if not args.no_write:
        results = ROOT / "benchmarks" / "RESULTS.md"
        results.write_text(results.read_text().rstrip() + "\n" + text)


if __name__ == "__main__":
    main()
