"""The served measurements of benchmarks/gpu_check.py, and the 2-core thread comparison.

    python -m benchmarks.gpu_served --threads 1 2      # ~8 min on 2 cores

The second form deploys the graph of serve_config.yaml with full-size random-weight
models once per embedder thread count and measures, through Serve's HTTP proxy with
32 clients: `POST /search/image` alone, then a mixed load (half the clients searching
by image, half uploading new images in background mode); then the naive seed
(benchmarks/naive_seed.py, float32, one image per model call) under the same search
load. It prints a table for RESULTS.md and serve_config.yaml's comments.

The pieces (closed loops from many client processes, a loop on a deployment handle,
GPU memory per replica) are the suite's (benchmarks/suite.py) where it has them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx

from benchmarks.suite import (
    CpuUse,
    Load,
    closed_loop,
    cpu_seconds,
    deploy,
    machine_busy_s,
    naive_seed_server,
    own_busy_s,
    percentile,
    photos,
    prepare_models,
    ray_processes,
    say,
    serve_layout,
    undeploy,
    wait_healthy,
)
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
APP = "imagesearch"


# -- load from many client processes ---------------------------------------------------


@dataclass(frozen=True)
class Uploads:
    """A picklable description of a request stream: multipart uploads to `route` of
    `count` distinct JPEGs. With `unique`, every request's bytes differ (a counter after
    the JPEG's end marker: decoders ignore it, the content hash does not), so every
    upload is a new image."""

    route: str
    seed: int
    count: int = 64
    unique: bool = False
    query: str = ""

    def request(self, offset: int) -> Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]:
        images = photos(self.count, self.seed)
        path = self.route + (f"?{self.query}" if self.query else "")

        def send(client: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
            data = images[i % len(images)]
            if self.unique:
                data += f"#{offset}:{i}".encode()
            return client.post(path, files={"file": (f"p{i}.jpg", data, "image/jpeg")})

        return send


def _client_process(
    base: str,
    clients: int,
    warmup_s: float,
    window_s: float,
    uploads: Uploads,
    ok: set[int],
    start_at: float,
    offset: int,
) -> Load:
    request = uploads.request(offset)
    # Every process starts its loops at the same moment (perf_counter is the system's
    # monotonic clock), so their windows coincide.
    time.sleep(max(0.0, start_at - time.perf_counter()))
    return asyncio.run(closed_loop(base, clients, warmup_s, window_s, request, ok, drain=True))


def merged(loads: list[Load]) -> Load:
    out = Load(seconds=loads[0].seconds)
    for load in loads:
        out.ok += load.ok
        out.all_ok += load.all_ok
        out.latencies_ms += load.latencies_ms
        out.errors += load.errors
        out.finished += load.finished
    return out


async def fill(
    base: str,
    clients: int,
    processes: int,
    warmup_s: float,
    window_s: float,
    uploads: Uploads,
    ok: set[int],
) -> Load:
    """`clients` closed-loop clients spread over `processes` processes (one Python
    process's event loop tops out near a thousand uploads a second; a GPU replica
    wants more)."""
    if processes <= 1:
        return await closed_loop(base, clients, warmup_s, window_s, uploads.request(0), ok)
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    start_at = time.perf_counter() + 10.0  # room for the processes to import
    with ProcessPoolExecutor(len(shares), mp_context=get_context("spawn")) as pool:
        futures = [
            asyncio.wrap_future(
                pool.submit(_client_process, base, n, warmup_s, window_s, uploads, ok, start_at, i)
            )
            for i, n in enumerate(shares)
            if n
        ]
        return merged(list(await asyncio.gather(*futures)))


async def handle_loop(
    deployment: str, method: str, items: list[Any], clients: int, warmup_s: float, window_s: float
) -> Load:
    """Closed loops on a Serve deployment handle from this (the driver) process: the
    served model (its replica, its @serve.batch queue) without HTTP or the ingress."""
    from ray import serve

    handle = getattr(serve.get_deployment_handle(deployment, app_name=APP), method)
    load = Load(seconds=window_s)
    started = time.perf_counter()
    window_start, window_end = started + warmup_s, started + warmup_s + window_s

    async def loop(k: int) -> None:
        i = k
        while time.perf_counter() < window_end:
            sent = time.perf_counter()
            try:
                await handle.remote(items[i % len(items)])
            except Exception as exc:  # a failed call is counted, never fatal to the run
                load.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            done = time.perf_counter()
            i += clients
            load.all_ok += 1
            if window_start <= done <= window_end:
                load.ok += 1
                load.latencies_ms.append((done - sent) * 1000)
                load.finished.append(done)

    await asyncio.gather(*(loop(k) for k in range(clients)))
    return load


# -- memory -------------------------------------------------------------------------------


def gpu_memory_mib() -> dict[str, float]:
    """GPU memory per deployment (the largest replica) as nvidia-smi reports it for
    each process: weights, activations and torch's cached blocks together."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    used = {int(pid): float(mib) for pid, mib in (line.split(",") for line in listed.splitlines())}
    out: dict[str, float] = {}
    for proc in ray_processes(os.getpid()):
        if proc.pid in used:
            out[proc.name] = max(out.get(proc.name, 0.0), used[proc.pid])
    return out


# -- a served graph ------------------------------------------------------------------------


@dataclass
class Graph:
    """A deployed graph on loopback: its URL and what it was deployed with."""

    base: str
    args: dict[str, Any]
    options: dict[str, dict[str, Any]]


def local_args(raw: dict[str, Any], blip: Path, clip: Path, data_dir: Path) -> dict[str, Any]:
    """The config's app args on the embedded stores under `data_dir`, with these models."""
    args = json.loads(json.dumps(raw))
    args["storage"] = {"data_dir": str(data_dir)}
    for section, path in (("captioner", blip), ("embedder", clip)):
        args.setdefault(section, {}).setdefault("model", {})["model_id"] = str(path)
    args.pop("auth", None)
    args.pop("rate_limit", None)
    return args


async def start(args: dict[str, Any], options: dict[str, dict[str, Any]]) -> Graph:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    await asyncio.to_thread(deploy, args, options, port)
    await wait_healthy(base, 600)
    return Graph(base, args, options)


async def stop() -> None:
    await asyncio.to_thread(undeploy)


# -- the 2-core comparison ------------------------------------------------------------------


@dataclass
class ThreadRun:
    threads: int
    search: Load
    mixed_search: Load
    mixed_ingest: Load
    # CPU seconds per answered search, by process, under search-only load.
    search_cpu: CpuUse | None = None
    # Cores that processes outside this run kept busy during the search-only load.
    foreign_cores: float = float("nan")


@dataclass
class Comparison:
    runs: list[ThreadRun] = field(default_factory=list)
    naive: Load | None = None


async def naive_search(
    blip: Path, clip: Path, clients: int, warmup_s: float, window_s: float
) -> Load:
    # float32, one CLIP call per request: the seed as it was.
    async with naive_seed_server(blip, clip, "float32") as (base, _):
        return await closed_loop(
            base,
            clients,
            warmup_s,
            window_s,
            Uploads("/search/image", 2).request(0),
            {200},
            drain=False,
        )


async def compare_threads(args: argparse.Namespace) -> Comparison:
    raw, options = serve_layout(args.config)
    out = Comparison()
    with tempfile.TemporaryDirectory(prefix="imagesearch-threads-") as tmp:
        blip, clip = prepare_models(Path(tmp) / "models", 20)
        for threads in args.threads:
            app_args = local_args(raw, blip, clip, Path(tmp) / f"data-{threads}")
            app_args["embedder"]["model"]["num_threads"] = threads
            deployment = json.loads(json.dumps(options))
            env = deployment["Embedder"].setdefault("ray_actor_options", {})
            env.setdefault("runtime_env", {}).setdefault("env_vars", {})["OMP_WAIT_POLICY"] = (
                "PASSIVE"
            )
            say(f"embedder threads {threads}: deploying")
            graph = await start(app_args, deployment)
            try:
                warm = Uploads("/search/image", 2).request(0)
                async with httpx.AsyncClient(base_url=graph.base, timeout=300) as client:
                    for i in range(4):
                        await warm(client, i)
                before = cpu_seconds(os.getpid()), time.perf_counter()
                busy_before = machine_busy_s() - own_busy_s()
                search = await fill(
                    graph.base,
                    args.clients,
                    1,
                    args.warmup,
                    args.window,
                    Uploads("/search/image", 2),
                    {200},
                )
                search_cpu = CpuUse.since(before, search.all_ok)
                foreign = (machine_busy_s() - own_busy_s() - busy_before) / search_cpu.wall_s
                say(f"threads {threads}: search/image {search.rate:.2f}/s")
                half = args.clients // 2
                mixed_search, mixed_ingest = await asyncio.gather(
                    fill(
                        graph.base,
                        half,
                        1,
                        args.warmup,
                        args.window,
                        Uploads("/search/image", 2),
                        {200},
                    ),
                    fill(
                        graph.base,
                        args.clients - half,
                        1,
                        args.warmup,
                        args.window,
                        Uploads("/images", 5, unique=True),
                        {201},
                    ),
                )
                say(
                    f"threads {threads}: mixed search {mixed_search.rate:.2f}/s, "
                    f"ingest {mixed_ingest.rate:.2f}/s"
                )
                out.runs.append(
                    ThreadRun(threads, search, mixed_search, mixed_ingest, search_cpu, foreign)
                )
            finally:
                await stop()
        if args.naive:
            say("naive seed: search by image")
            out.naive = await naive_search(blip, clip, args.clients, args.warmup, args.window)
            say(f"naive seed: {out.naive.rate:.2f}/s")
    return out


def comparison_markdown(result: Comparison, args: argparse.Namespace) -> str:
    lines = [
        "| embedder threads | `POST /search/image` alone, img/s (p50 ms) | mixed: search img/s "
        "| mixed: ingest img/s | search ÷ naive seed |",
        "|---|---|---|---|---|",
    ]
    naive = result.naive.rate if result.naive else float("nan")
    for run in result.runs:
        lines.append(
            f"| {run.threads} | {run.search.rate:.2f} ({percentile(run.search.latencies_ms, 0.5):.0f})"
            f" | {run.mixed_search.rate:.2f} | {run.mixed_ingest.rate:.2f} "
            f"| {run.search.rate / naive:.2f}x |"
        )
    if result.naive:
        lines.append(
            f"| naive seed (float32, one image per call) | {naive:.2f} "
            f"({percentile(result.naive.latencies_ms, 0.5):.0f}) | | | 1 |"
        )
    errors = [
        e
        for run in result.runs
        for load in (run.search, run.mixed_search, run.mixed_ingest)
        for e in load.errors
    ]
    lines += [
        "",
        f"{args.clients} clients (mixed: half each), {args.window:.0f} s windows after "
        f"{args.warmup:.0f} s warm-up; errors: {len(errors)}",
    ]
    lines += [f"- {e}" for e in errors[:5]]
    measured = [run for run in result.runs if run.search_cpu]
    if measured:
        lines += [
            "",
            "CPU seconds per answered `POST /search/image` (search-only load), by process:",
            "",
            "| process | " + " | ".join(f"{run.threads} thread(s)" for run in measured) + " |",
            "|---|" + "---|" * len(measured),
        ]
        names = sorted({n for run in measured if run.search_cpu for n in run.search_cpu.by_process})
        for name in names:
            cells = [
                f"{run.search_cpu.by_process.get(name, 0.0) / max(run.search_cpu.answered, 1):.3f}"
                for run in measured
                if run.search_cpu
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        foreign = [f"{run.foreign_cores:.2f}" for run in measured]
        lines.append("| (cores busy outside this run) | " + " | ".join(foreign) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--window", type=float, default=45.0)
    parser.add_argument("--no-naive", dest="naive", action="store_false")
    args = parser.parse_args()
    result = asyncio.run(compare_threads(args))
    print()
    print(comparison_markdown(result, args))


if __name__ == "__main__":
    main()
