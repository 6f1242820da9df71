"""The performance suite: the served system against its own bounds and the naive seed.

    python -m benchmarks.suite            # full run (~15 min on 2 cores), writes RESULTS.md
    python -m benchmarks.suite --quick    # smoke run of every part (~5 min)

Everything is measured in one run on this machine, with the full-size BLIP-base and
CLIP-B/32 architectures and random weights (same FLOPs; no model hub needed). Every
captioning path generates exactly `--max-new-tokens` tokens (random weights would
stop at arbitrary lengths otherwise), so all paths do the same work.

1. Model bound: images/s of each model's own batch path (the methods the deployments
   run), float32 against `auto`, at several batch sizes; the pipeline bound is the
   captioner and the embedder sharing the machine: 1 / (1/captioner + 1/embedder).
2. Served ingest: `POST /images` through Ray Serve's HTTP proxy on loopback, 32
   concurrent clients, new images only, divided by the pipeline bound.
3. Batching gain: `POST /embed-image/` served, 32 clients, divided by the naive seed
   (benchmarks/naive_seed.py: one FastAPI process, one image per model call) under the
   same load, once as the seed is written (float32) and once in the served dtype.
4. Query latency: p50/p99 of `POST /search/text` (one client) with 10k and 100k vectors
   bulk-loaded into the embedded store, divided by the CLIP text forward alone; the ANN
   index at 100k is built by the ingress's own background upkeep, and its recall@10
   against exact search is measured on held-out queries.
5. Memory: peak resident memory (VmHWM) of every replica process.

The served graph is the project's own (`ingress.app.compose`) with the deployment
options of `--config` (serve_config.yaml), so the suite measures that configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import itertools
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx
import numpy as np
import torch
import yaml
from PIL import Image

from benchmarks.model_throughput import Row, bench_captioner, bench_embedder, best, measure
from deployments.embedder import ClipEmbedder
from deployments.model_loading import resolve_placement
from deployments.settings import EmbedderSettings, ModelSettings
from ingress.settings import AppArgs, IndexUpkeepArgs, LanceDBArgs
from tests.support.ports import free_port
from tests.support.random_weights import save_random_blip, save_random_clip

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
NOTES_HEADING = "## Notes"
INGEST = "POST /images (new images)"
EMBED = "POST /embed-image/"


@dataclass(frozen=True)
class Mode:
    """How long and how large each part runs."""

    name: str
    seconds_per_cell: float
    clip_batches: tuple[int, ...]
    blip_batches: tuple[int, ...]
    clients: int
    warmup_s: float
    window_s: float
    naive_window_s: float
    store_sizes: tuple[int, int]
    ann_min_rows: int
    queries: int
    recall_queries: int


FULL = Mode(
    name="full",
    seconds_per_cell=3.0,
    clip_batches=(1, 8, 32),
    blip_batches=(1, 8, 16),
    clients=32,
    # 32 clients keep ~2 caption batches queued: the first answers take ~20 s.
    warmup_s=30.0,
    window_s=90.0,
    naive_window_s=60.0,
    store_sizes=(10_000, 100_000),
    ann_min_rows=50_000,
    queries=300,
    recall_queries=100,
)
QUICK = Mode(
    name="quick",
    seconds_per_cell=0.5,
    clip_batches=(1, 8),
    blip_batches=(1, 4),
    clients=32,
    warmup_s=10.0,
    window_s=20.0,
    naive_window_s=12.0,
    store_sizes=(2_000, 10_000),
    ann_min_rows=5_000,
    queries=40,
    recall_queries=30,
)


# -- machine -----------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags_line = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"]
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
    info = {
        "date (UTC)": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu": model.group(1).strip() if model else platform.processor() or "?",
        "cores": str(os.cpu_count()),
        "cpu flags": ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted),
        "memory": f"{int(mem.group(1)) / 1024**2:.0f} GiB" if mem else "?",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for package in ("transformers", "ray", "lancedb"):
        try:
            info[package] = __import__(package).__version__
        except Exception:
            info[package] = "?"
    return info


def say(message: str) -> None:
    print(f"[suite {time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine_busy_s() -> float:
    """CPU seconds all processes on this machine have used since boot (not idle)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_busy_s() -> float:
    """CPU seconds this run has used: this process, its children, and the Ray processes
    it started (children that have exited count through os.times)."""
    own = os.times()
    ray_cpu = sum(p.cpu_s for p in ray_processes(os.getpid()))
    return own.user + own.system + own.children_user + own.children_system + ray_cpu


def load_average() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


# -- models ------------------------------------------------------------------------


def prepare_models(root: Path, max_new_tokens: int) -> tuple[Path, Path]:
    """Full-size random-weight BLIP and CLIP directories. BLIP's saved generation config
    gets min_new_tokens, so the served captioner, the seed and the bound all generate
    exactly max_new_tokens tokens."""
    from transformers import GenerationConfig

    clip = save_random_clip(root / "clip-vit-base-patch32-random", "base")
    blip = save_random_blip(root / "blip-captioning-base-random", "base")
    generation = GenerationConfig.from_pretrained(blip)
    generation.min_new_tokens = max_new_tokens
    generation.save_pretrained(blip)
    return blip, clip


def text_forward_ms(clip_dir: Path, num_threads: int | None, seconds: float) -> float:
    """One query through the CLIP text tower in `auto` dtype, at the thread count the
    served embedder uses: the floor of any text search."""
    before = torch.get_num_threads()
    embedder = ClipEmbedder(
        EmbedderSettings(model=ModelSettings(model_id=str(clip_dir), num_threads=num_threads))
    )
    try:
        rate = measure(embedder.embed_texts, ["a photo of a dog on the beach"], seconds)
    finally:
        torch.set_num_threads(before)
    return 1000.0 / rate


# -- load ----------------------------------------------------------------------------


@dataclass
class Load:
    ok: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)
    # Answers over the whole run, warm-up and drain included (for CPU per answer).
    all_ok: int = 0

    @property
    def rate(self) -> float:
        """Answers per second. Batched answers arrive in bursts (16 captions at once),
        so counting whole bursts into a fixed window is off by up to a burst: this
        counts from the first burst in the window to the last answer instead."""
        times = sorted(self.finished)
        first_burst = [t for t in times if t <= times[0] + _BURST_S] if times else []
        if len(times) - len(first_burst) < 2:
            return self.ok / self.seconds if self.seconds else 0.0
        return (len(times) - len(first_burst)) / (times[-1] - times[0])


Request = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]
# Answers closer together than this belong to one batch.
_BURST_S = 0.5


async def closed_loop(
    base_url: str,
    clients: int,
    warmup_s: float,
    window_s: float,
    request: Request,
    ok: set[int],
    drain: bool = True,
) -> Load:
    """`clients` loops, each sending its next request when the last is answered. Counts
    answers that arrive within the window after the warm-up. The requests still in
    flight at the end are not counted; with `drain` they are awaited, so that the next
    measurement starts on an idle server, else abandoned (a server about to be stopped)."""
    load = Load(seconds=window_s)
    counter = itertools.count()
    started = time.perf_counter()
    window_start, window_end = started + warmup_s, started + warmup_s + window_s
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=600.0, limits=limits) as client:

        async def loop() -> None:
            while time.perf_counter() < window_end:
                sent = time.perf_counter()
                try:
                    response = await request(client, next(counter))
                except httpx.HTTPError as exc:
                    load.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                done = time.perf_counter()
                if response.status_code not in ok:
                    load.errors.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                load.all_ok += 1
                if window_start <= done <= window_end:
                    load.ok += 1
                    load.latencies_ms.append((done - sent) * 1000)
                    load.finished.append(done)

        tasks = [asyncio.create_task(loop()) for _ in range(clients)]
        if drain:
            await asyncio.gather(*tasks)
        else:
            await asyncio.wait(tasks, timeout=max(0.0, window_end - time.perf_counter()))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return load


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def photos(count: int, seed: int) -> list[bytes]:
    """Distinct 640x480 JPEGs with photo-like smooth content (~30-60 KB each)."""
    rng = np.random.default_rng(seed)
    out: list[bytes] = []
    for _ in range(count):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 13, (480, 640, 3))
        pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def upload(path: str, images: list[bytes]) -> Request:
    def send(client: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        return client.post(
            path, files={"file": (f"p{i}.jpg", images[i % len(images)], "image/jpeg")}
        )

    return send


async def wait_healthy(base_url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:
        while True:
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{base_url} did not become healthy in {timeout_s:.0f} s")
            await asyncio.sleep(1.0)


def peak_rss_mib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    match = re.search(r"^VmHWM:\s*(\d+) kB", status, re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


# -- naive baseline ------------------------------------------------------------------


@dataclass
class NaiveRun:
    dtype: str
    load: Load
    peak_rss_mib: float


@asynccontextmanager
async def naive_seed_server(
    blip: Path, clip: Path, dtype: str, *extra: str
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """The naive seed (benchmarks/naive_seed.py) on a free port, healthy: its base URL
    and process; stopped on exit."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "benchmarks.naive_seed",
        "--blip",
        str(blip),
        "--clip",
        str(clip),
        "--port",
        str(port),
        "--dtype",
        dtype,
        *extra,
    ]
    process = await asyncio.create_subprocess_exec(*command, cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_healthy(base, 300)
        yield base, process
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=30)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()


async def run_naive(
    blip: Path, clip: Path, dtype: str, mode: Mode, images: list[bytes], max_new_tokens: int
) -> NaiveRun:
    extra = ("--max-new-tokens", str(max_new_tokens))
    async with naive_seed_server(blip, clip, dtype, *extra) as (base, process):
        load = await closed_loop(
            base,
            mode.clients,
            mode.warmup_s,
            mode.naive_window_s,
            upload("/embed-image/", images),
            {200},
            drain=False,  # the server is stopped next
        )
        say(f"naive {dtype}: {load.rate:.2f}/s, {len(load.errors)} errors")
        return NaiveRun(dtype, load, peak_rss_mib(process.pid))


# -- served --------------------------------------------------------------------------


def serve_layout(config_path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The first application's args and its per-deployment options, as in the file."""
    config = yaml.safe_load(config_path.read_text())
    application = config["applications"][0]
    options = {
        d["name"]: {k: v for k, v in d.items() if k != "name"} for d in application["deployments"]
    }
    return dict(application.get("args") or {}), options


def served_args(
    raw: dict[str, Any], blip: Path, clip: Path, data_dir: Path, mode: Mode
) -> dict[str, Any]:
    args = json.loads(json.dumps(raw))
    args.setdefault("storage", {})["data_dir"] = str(data_dir)
    vectors = args["storage"].setdefault("vectors", {"kind": "lancedb"})
    # The ANN index must appear during the run: the suite's threshold, checked often.
    vectors["index_upkeep"] = {
        **vectors.get("index_upkeep", {}),
        "ann_min_rows": mode.ann_min_rows,
        "interval_s": 2.0,
    }
    args.setdefault("captioner", {}).setdefault("model", {})["model_id"] = str(blip)
    args.setdefault("embedder", {}).setdefault("model", {})["model_id"] = str(clip)
    # The suite measures the whole pipeline per request (ingest against the pipeline
    # bound): captions inline. benchmarks/captions.py measures the background mode.
    args["captioning"] = {**args.get("captioning", {}), "mode": "inline"}
    return args


def deploy(args: dict[str, Any], options: dict[str, dict[str, Any]], port: int) -> None:
    import ray
    from ray import serve

    from deployments.captioner import Captioner
    from deployments.embedder import Embedder
    from ingress.app import compose
    from ingress.http.deployment import Ingress
    from ingress.settings import AppArgs
    from ingress.workers.caption_worker import CaptionWorkerDeployment

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = compose(
        AppArgs.model_validate(args),
        Captioner.options(**options.get("Captioner", {})),
        Embedder.options(**options.get("Embedder", {})),
        Ingress.options(**options.get("Ingress", {})),
        CaptionWorkerDeployment.options(**options.get("CaptionWorker", {})),
    )
    serve.run(app, name="imagesearch", route_prefix="/")


def undeploy() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@dataclass(frozen=True)
class Proc:
    name: str
    pid: int
    cpu_s: float


def ray_processes(root_pid: int) -> list[Proc]:
    """This run's Ray processes (descendants of `root_pid`, not another Ray's), named by
    the title Ray gives its workers (`ray::ServeReplica:<app>:<deployment>` gives the
    deployment); Ray's own daemons count as "ray system"."""
    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    cpu: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            titles[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, UnicodeDecodeError):
            continue
        # The command in parentheses may hold spaces; the fields after it are fixed.
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == root_pid:
                return True
        return False

    found: list[Proc] = []
    for pid, title in titles.items():
        if not ours(pid):
            continue
        match = re.match(r"ray::(?:ServeReplica:[^:]+:)?(\w+)", title)
        name = match.group(1) if match else "ray system"
        if name != "IDLE":
            found.append(Proc(name, pid, cpu[pid]))
    return found


def replica_memory(root_pid: int) -> dict[str, tuple[int, float]]:
    """Per deployment (and Serve's own actors): processes alive and the largest peak RSS."""
    found: dict[str, tuple[int, float]] = {}
    for proc in ray_processes(root_pid):
        count, peak = found.get(proc.name, (0, 0.0))
        found[proc.name] = (count + 1, max(peak, peak_rss_mib(proc.pid)))
    return found


def cpu_seconds(root_pid: int) -> dict[str, float]:
    """CPU seconds used so far per process kind, this process (the clients) included."""
    totals: dict[str, float] = {}
    for proc in ray_processes(root_pid):
        totals[proc.name] = totals.get(proc.name, 0.0) + proc.cpu_s
    own = os.times()
    totals["benchmark clients"] = own.user + own.system
    return totals


@dataclass(frozen=True)
class CpuUse:
    """Where the cores went during one load phase."""

    wall_s: float
    answered: int
    by_process: dict[str, float]

    @classmethod
    def since(cls, before: tuple[dict[str, float], float], answered: int) -> CpuUse:
        start, started = before
        now = cpu_seconds(os.getpid())
        used = {name: now[name] - start.get(name, 0.0) for name in now}
        return cls(time.perf_counter() - started, answered, used)


# -- the embedded store at scale ------------------------------------------------------


def clustered_vectors(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    """Unit vectors in groups, like embeddings of many distinct subjects; uniformly
    random vectors have no neighbours worth finding and would misjudge any ANN index."""
    dim = centres.shape[1]
    picks = rng.integers(0, len(centres), n)
    points = centres[picks] + rng.normal(0, 0.8 / np.sqrt(dim), (n, dim)).astype(np.float32)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


async def bulk_load(store: Any, model: str, vectors: np.ndarray, start: int) -> None:
    from ingress.stores.records import ImageRecord, IndexedImage

    created = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    chunk = 5_000
    for offset in range(0, len(vectors), chunk):
        images = [
            IndexedImage(
                record=ImageRecord(
                    id=str(uuid.UUID(int=start + offset + i + 1)),
                    caption=f"synthetic picture {start + offset + i}",
                    width=640,
                    height=480,
                    content_type="image/jpeg",
                    size_bytes=50_000,
                    sha256=f"{start + offset + i:064x}",
                    created_at=created,
                    caption_model="synthetic",
                    embedding_model=model,
                ),
                vector=vector,
            )
            for i, vector in enumerate(vectors[offset : offset + chunk])
        ]
        await store.upsert(images)


async def settled(store: Any, upkeep: IndexUpkeepArgs, want_index: bool, timeout_s: float) -> float:
    """Wait until the ingress's background upkeep, as deployed with `upkeep`, has caught
    up (index built when wanted, new rows folded in, small files merged); seconds
    waited."""
    started = time.monotonic()
    while True:
        lag = await store.index_lag()
        if (
            (lag.vector_index or not want_index)
            and lag.unindexed_rows < upkeep.refresh_rows
            and lag.small_fragments < upkeep.compact_fragments
        ):
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"index upkeep did not settle in {timeout_s:.0f} s: {lag}")
        await asyncio.sleep(1.0)


async def text_latency(base_url: str, queries: int, tag: str) -> list[float]:
    """Sequential text searches, each with a query never sent before (the ingress
    remembers query vectors: a repeated text would skip the embedder)."""
    words = ["dog", "cat", "red car", "beach", "mountain", "city street", "bicycle", "tree"]
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=60.0) as client:
        for i in range(queries + 5):
            query = f"a photo of a {words[i % len(words)]} number {i} ({tag})"
            body = {"query": query, "limit": 10}
            sent = time.perf_counter()
            response = await client.post("/search/text", json=body)
            elapsed = (time.perf_counter() - sent) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"search/text: {response.status_code} {response.text[:200]}")
            if i >= 5:  # the first few warm the connection and caches
                latencies.append(elapsed)
    return latencies


async def recall_at_10(path: Path, table_name: str, queries: np.ndarray) -> float:
    """The served store's top 10 (through the ANN index) against exact cosine top 10
    over every row in the table."""
    import lancedb

    from ingress.stores.lancedb import LanceDBVectorStore

    db = await lancedb.connect_async(path)
    table = await db.open_table(table_name)
    everything = await table.query().select(["id", "vector"]).to_arrow()
    table.close()
    db.close()
    ids = np.asarray(everything["id"].to_pylist())
    matrix = np.asarray(everything["vector"].combine_chunks().flatten()).reshape(len(ids), -1)
    matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    found = 0
    model, dim = await LanceDBVectorStore.recorded_embedding(path, table_name)
    store = LanceDBVectorStore(path, model, dim, table_name=table_name)
    try:
        for query in queries:
            exact = set(ids[np.argsort(-(matrix @ query))[:10]])
            hits = await store.search(query, limit=10)
            found += len(exact & {hit.record.id for hit in hits})
    finally:
        await store.close()
    return found / (10 * len(queries))


# -- report --------------------------------------------------------------------------


@dataclass
class Check:
    label: str
    value: float
    target: str
    met: bool | None
    unit: str = "x"

    def row(self) -> str:
        shown = f"{self.value:.2f}{self.unit}" if self.value == self.value else "n/a"
        status = {True: "met", False: "NOT met", None: "-"}[self.met]
        return f"| {self.label} | {shown} | {self.target} | {status} |"


@dataclass
class Results:
    mode: Mode
    machine: dict[str, str]
    config: str
    rows: list[Row] = field(default_factory=list)
    text_forward_ms: float = float("nan")
    text_forward_threads: str = ""
    loads: dict[str, Load] = field(default_factory=dict)
    naive: dict[str, NaiveRun] = field(default_factory=dict)
    latency: dict[int, list[float]] = field(default_factory=dict)
    recall: float = float("nan")
    index_wait_s: float = float("nan")
    memory: dict[str, tuple[int, float]] = field(default_factory=dict)
    cpu: dict[str, CpuUse] = field(default_factory=dict)
    load_averages: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # (phase, wall clock, machine busy CPU s, this run's CPU s) at each phase start.
    marks: list[tuple[str, float, float, float]] = field(default_factory=list)

    def mark(self, phase: str) -> None:
        self.load_averages.append((phase, load_average()))
        self.marks.append((phase, time.monotonic(), machine_busy_s(), own_busy_s()))
        say(f"{phase} (load average {self.load_averages[-1][1]:.1f})")

    def foreign_load(self) -> list[tuple[str, float]]:
        """Per phase, the cores that processes outside this run kept busy on average:
        0 on a quiet machine; the run shared the machine where it is not."""
        out = []
        for (phase, t0, busy0, own0), (_, t1, busy1, own1) in itertools.pairwise(self.marks):
            if phase == "teardown":
                continue  # Ray's processes exit unreaped: their CPU leaves the books
            out.append((phase, max(0.0, (busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-9)))
        return out

    def bound(self, path: str) -> Row:
        return max((r for r in self.rows if r.path == path), key=lambda r: r.items_per_s)

    def pipeline_bound(self) -> float:
        caption, embed = self.bound("blip caption"), self.bound("clip image")
        return 1.0 / (1.0 / caption.items_per_s + 1.0 / embed.items_per_s)

    def checks(self) -> list[Check]:
        checks: list[Check] = []
        for path, target in (("clip image", 5.0), ("blip caption", 2.0)):
            if any(r.path == path for r in self.rows):
                auto, fp32 = best(self.rows, path, "auto"), best(self.rows, path, "float32")
                ratio = auto.items_per_s / fp32.items_per_s
                name = "embedder" if path == "clip image" else "captioner"
                checks.append(
                    Check(
                        f"{name} `auto` / float32 throughput",
                        ratio,
                        f">= {target:g}x",
                        ratio >= target,
                    )
                )
        if INGEST in self.loads and any(r.path == "blip caption" for r in self.rows):
            ratio = self.loads[INGEST].rate / self.pipeline_bound()
            checks.append(
                Check("served ingest / pipeline model bound", ratio, ">= 0.8", ratio >= 0.8, "")
            )
        served = self.loads.get(EMBED)
        for dtype, label in (
            ("float32", "the seed as written (float32)"),
            ("bfloat16", "the seed in bfloat16"),
            ("float16", "the seed in float16"),
        ):
            naive = self.naive.get(dtype)
            if served and naive and naive.load.rate:
                ratio = served.rate / naive.load.rate
                checks.append(
                    Check(
                        f"batching gain: /embed-image/ served / {label}",
                        ratio,
                        ">= 4x",
                        ratio >= 4.0,
                    )
                )
        if self.latency and self.text_forward_ms == self.text_forward_ms:
            size = max(self.latency)
            p50 = percentile(self.latency[size], 0.5) / self.text_forward_ms
            p99 = percentile(self.latency[size], 0.99) / self.text_forward_ms
            checks.append(
                Check(f"text search p50 at {size:,} / CLIP text forward", p50, "<= 2x", p50 <= 2.0)
            )
            checks.append(
                Check(f"text search p99 at {size:,} / CLIP text forward", p99, "<= 4x", p99 <= 4.0)
            )
        if self.recall == self.recall:
            checks.append(
                Check(
                    f"recall@10 at {max(self.latency or {0: []}):,} (ANN vs exact)",
                    self.recall,
                    "(kept ~1)",
                    None,
                    "",
                )
            )
        return checks

    def markdown(self, command: str, notes: str) -> str:
        lines = [
            "# Benchmark results",
            "",
            f"Written by `{command}` ({self.mode.name} mode). Full-size BLIP-base and CLIP-B/32",
            "architectures with random weights; every caption is exactly 20 tokens. All ratios come",
            "from this one run on this one machine.",
            "",
            "## Machine",
            "",
            "| | |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in self.machine.items()),
            f"| serve config | `{self.config}` |",
            "| load average (1 min) at phase start | "
            + ", ".join(f"{phase} {value:.1f}" for phase, value in self.load_averages)
            + " |",
            "| cores kept busy by other processes during each phase | "
            + ", ".join(f"{phase} {cores:.2f}" for phase, cores in self.foreign_load())
            + " |",
            "",
            "## Targets",
            "",
            "| measure | value | target | status |",
            "|---|---|---|---|",
            *(check.row() for check in self.checks()),
            "",
        ]
        lines += ["## 1. Model bound (in-process, all cores)", ""]
        lines += ["| path | dtype | batch | items/s |", "|---|---|---|---|"]
        lines += [f"| {r.path} | {r.dtype} | {r.batch} | {r.items_per_s:.2f} |" for r in self.rows]
        if any(r.path == "blip caption" for r in self.rows):
            lines += [
                "",
                f"Pipeline bound (captioner and embedder sharing the machine, each at its best): "
                f"{self.pipeline_bound():.2f} images/s.",
            ]
        lines += [
            "",
            f"CLIP text forward alone (one query, `auto`): {self.text_forward_threads}.",
            "",
            "## 2-3. Served throughput (HTTP over loopback, closed loop)",
            "",
            "| what | clients | answered in window | images/s | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|---|---|",
        ]
        served_rows = [(f"served `{name}`", load) for name, load in self.loads.items()]
        served_rows += [
            (f"naive seed `/embed-image/` ({run.dtype})", run.load) for run in self.naive.values()
        ]
        for name, load in served_rows:
            lines.append(
                f"| {name} | {self.mode.clients} | {load.ok} in {load.seconds:.0f} s | {load.rate:.2f} | "
                f"{percentile(load.latencies_ms, 0.5):.0f} | {percentile(load.latencies_ms, 0.99):.0f} | "
                f"{len(load.errors)} |"
            )
        if self.cpu:
            phases = list(self.cpu)
            lines += [
                "",
                "Where the cores went (CPU seconds per answered request over each whole phase, "
                "warm-up and drain included; the last row is cores busy on average):",
                "",
                "| process | " + " | ".join(f"`{phase}`" for phase in phases) + " |",
                "|---|" + "---|" * len(phases),
            ]
            names = sorted({name for use in self.cpu.values() for name in use.by_process})
            for name in names:
                cells = [
                    f"{use.by_process.get(name, 0.0) / max(use.answered, 1):.3f}"
                    for use in self.cpu.values()
                ]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            busy = [f"{sum(use.by_process.values()) / use.wall_s:.2f}" for use in self.cpu.values()]
            lines.append("| cores busy | " + " | ".join(busy) + " |")
        lines += ["", "## 4. Text search latency (one client, sequential)", ""]
        lines += [
            "| stored vectors | queries | p50 ms | p99 ms | p50 / text forward | p99 / text forward |"
        ]
        lines += ["|---|---|---|---|---|---|"]
        for size, values in sorted(self.latency.items()):
            p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
            lines.append(
                f"| {size:,} | {len(values)} | {p50:.1f} | {p99:.1f} | "
                f"{p50 / self.text_forward_ms:.2f}x | {p99 / self.text_forward_ms:.2f}x |"
            )
        if self.recall == self.recall:
            lines += [
                "",
                f"ANN index (IVF_RQ, refine x10) at {max(self.latency):,} rows: built by the ingress's "
                f"background upkeep, settled {self.index_wait_s:.0f} s after the bulk load; recall@10 "
                f"against exact search {self.recall:.3f} ({self.mode.recall_queries} held-out queries, "
                "clustered synthetic vectors).",
            ]
        lines += ["", "## 5. Peak resident memory (VmHWM) per process", ""]
        lines += ["| process | alive | peak RSS MiB |", "|---|---|---|"]
        for name, (count, peak) in sorted(self.memory.items()):
            lines.append(f"| {name} | {count} | {peak:.0f} |")
        for run in self.naive.values():
            lines.append(f"| naive seed ({run.dtype}) | 1 | {run.peak_rss_mib:.0f} |")
        errors = [e for load in self.loads.values() for e in load.errors]
        errors += [e for run in self.naive.values() for e in run.load.errors]
        if errors or self.notes:
            lines += ["", "## Run log", ""]
            lines += [f"- {note}" for note in self.notes]
            lines += [f"- error: {e}" for e in errors[:10]]
        lines += ["", notes.strip() if notes else f"{NOTES_HEADING}\n\n(none yet)", ""]
        return "\n".join(lines)

    def table(self) -> str:
        width = max(len(c.label) for c in self.checks()) if self.checks() else 20
        out = [f"{'measure':<{width}}  {'value':>10}  {'target':>8}  status"]
        for c in self.checks():
            shown = f"{c.value:.2f}{c.unit}" if c.value == c.value else "n/a"
            status = {True: "met", False: "NOT met", None: "-"}[c.met]
            out.append(f"{c.label:<{width}}  {shown:>10}  {c.target:>8}  {status}")
        return "\n".join(out)


def kept_notes(path: Path) -> str:
    """The hand-written notes section of an existing RESULTS.md, kept across runs."""
    if not path.exists():
        return ""
    text = path.read_text()
    index = text.find(f"\n{NOTES_HEADING}\n")
    return text[index + 1 :] if index >= 0 else ""


# -- the run -------------------------------------------------------------------------


async def served_part(
    results: Results, mode: Mode, blip: Path, clip: Path, scratch: Path, config: Path
) -> None:
    from ingress.stores.lancedb import LanceDBVectorStore

    raw_args, options = serve_layout(config)
    data_dir = scratch / "data"
    args = served_args(raw_args, blip, clip, data_dir, mode)
    # Where and how the deployed ingress keeps its vectors, as it reads its args.
    storage = AppArgs.model_validate(args).storage
    vectors = storage.vectors
    if not isinstance(vectors, LanceDBArgs):
        raise SystemExit("the suite measures the embedded store: use a LanceDB config")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    results.mark("deploy")
    await asyncio.to_thread(deploy, args, options, port)
    try:
        await wait_healthy(base, 300)
        ingest_images = photos(mode.clients * 40, seed=1)
        query_images = photos(64, seed=2)
        # Warm every path once (first requests compile kernels, open connections).
        async with httpx.AsyncClient(base_url=base, timeout=300.0) as client:
            for route in ("/embed-image/", "/search/image"):
                await upload(route, query_images)(client, 0)

        results.mark("ingest")
        before = cpu_seconds(os.getpid()), time.perf_counter()
        results.loads[INGEST] = await closed_loop(
            base,
            mode.clients,
            mode.warmup_s,
            mode.window_s,
            upload("/images", ingest_images),
            {201},
        )
        results.cpu[INGEST] = CpuUse.since(before, results.loads[INGEST].all_ok)
        say(
            f"ingest CPU s: { {k: round(v, 1) for k, v in results.cpu[INGEST].by_process.items()} }"
        )
        say(
            f"ingest: {results.loads[INGEST].rate:.2f}/s, {len(results.loads[INGEST].errors)} errors"
        )
        results.mark("embed-image")
        before = cpu_seconds(os.getpid()), time.perf_counter()
        results.loads[EMBED] = await closed_loop(
            base,
            mode.clients,
            mode.warmup_s,
            mode.window_s,
            upload("/embed-image/", query_images),
            {200},
        )
        results.cpu[EMBED] = CpuUse.since(before, results.loads[EMBED].all_ok)
        say(f"embed CPU s: { {k: round(v, 1) for k, v in results.cpu[EMBED].by_process.items()} }")

        say(
            f"embed-image: {results.loads[EMBED].rate:.2f}/s, {len(results.loads[EMBED].errors)} errors"
        )
        async with httpx.AsyncClient(base_url=base, timeout=60.0) as client:
            health = (await client.get("/healthz")).json()
        model, dim = health["embedding_model"], int(health["embedding_dim"])
        path = storage.lancedb_path(vectors)
        store = LanceDBVectorStore(path, model, dim, table_name=vectors.table)
        rng = np.random.default_rng(3)
        # About 100 vectors per subject at the largest size: every query has real
        # neighbours, as photos in a collection do.
        subjects = max(mode.store_sizes) // 100
        centres = rng.normal(0, 1 / np.sqrt(dim), (subjects, dim)).astype(np.float32)
        loaded = 0
        try:
            for size in mode.store_sizes:
                results.mark(f"load {size:,}")
                await bulk_load(
                    store, model, clustered_vectors(rng, centres, size - loaded), loaded
                )
                loaded = size
                want_index = size >= mode.ann_min_rows
                wait = await settled(store, vectors.index_upkeep, want_index, timeout_s=900)
                if want_index:
                    results.index_wait_s = wait
                results.mark(f"search {size:,}")
                results.latency[size] = await text_latency(base, mode.queries, f"{size} rows")
                say(
                    f"text search at {size:,}: p50 {percentile(results.latency[size], 0.5):.1f} ms, "
                    f"p99 {percentile(results.latency[size], 0.99):.1f} ms (settled after {wait:.0f} s)"
                )
        finally:
            await store.close()
        if max(mode.store_sizes) >= mode.ann_min_rows:
            results.recall = await recall_at_10(
                path, vectors.table, clustered_vectors(rng, centres, mode.recall_queries)
            )
        results.memory = replica_memory(os.getpid())
    finally:
        results.mark("teardown")
        await asyncio.to_thread(undeploy)


async def run(args: argparse.Namespace) -> Results:
    mode = QUICK if args.quick else FULL
    results = Results(mode=mode, machine=machine_info(), config=str(args.config))
    raw_args, _ = serve_layout(args.config)
    served_threads = (raw_args.get("embedder", {}).get("model", {}) or {}).get("num_threads")
    with tempfile.TemporaryDirectory(prefix="imagesearch-bench-") as tmp:
        scratch = Path(tmp)
        blip, clip = prepare_models(scratch / "models", args.max_new_tokens)

        if "models" in args.parts:
            results.mark("model bound")
            results.rows += bench_embedder(
                str(clip), ["float32", "auto"], list(mode.clip_batches), mode.seconds_per_cell
            )
            results.rows += bench_captioner(
                str(blip),
                ["float32", "auto"],
                list(mode.blip_batches),
                mode.seconds_per_cell,
                args.max_new_tokens,
            )
            for row in results.rows:
                say(f"{row.path} {row.dtype} batch {row.batch}: {row.items_per_s:.2f}/s")
            # The denominator of the latency ratios: the faster of the served embedder's
            # thread count and all cores, so that no thread setting flatters the ratio.
            timings = {
                threads: text_forward_ms(clip, threads, max(2.0, mode.seconds_per_cell))
                for threads in dict.fromkeys((served_threads, os.cpu_count()))
            }
            best_threads = min(timings, key=lambda t: timings[t])
            results.text_forward_ms = timings[best_threads]
            results.text_forward_threads = (
                ", ".join(f"{timings[t]:.1f} ms at {t} thread(s)" for t in timings)
                + f"; the ratios use {results.text_forward_ms:.1f} ms"
            )
            say(f"text forward: {results.text_forward_threads}")
            torch.set_num_threads(os.cpu_count() or 1)

        if "naive" in args.parts:
            images = photos(64, seed=4)
            # As written (float32), and in the dtype the served models get (`auto`).
            served_dtype = str(resolve_placement().dtype).removeprefix("torch.")
            for dtype in dict.fromkeys(("float32", served_dtype)):
                results.mark(f"naive {dtype}")
                results.naive[dtype] = await run_naive(
                    blip, clip, dtype, mode, images, args.max_new_tokens
                )

        if "served" in args.parts:
            await served_part(results, mode, blip, clip, scratch, args.config)
        results.mark("end")
        shutil.rmtree(scratch / "data", ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke-run every part in a few minutes"
    )
    parser.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument(
        "--parts",
        type=lambda text: set(text.split(",")),
        default={"models", "naive", "served"},
        help="comma-separated subset of models,naive,served (ratios need all three)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the report (default: benchmarks/RESULTS.md after a full run; "
        "a --quick run writes only where told)",
    )
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print()
    print(results.table())
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        command = "python -m benchmarks.suite" + (" --quick" if args.quick else "")
        out.write_text(results.markdown(command, kept_notes(out) or kept_notes(RESULTS)))
        print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
