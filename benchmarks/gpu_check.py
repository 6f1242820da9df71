"""The GPU check: model bound, preprocessing, served throughput and memory, in one run.

    bash benchmarks/gpu_check.sh            # a GPU machine, fresh checkout: < 8 min
    bash benchmarks/gpu_check.sh --smoke    # this machine's CPU, tiny models: a few minutes

benchmarks/gpu_check.sh installs what is missing and runs this module. On a GPU it
builds the full-size BLIP-base and CLIP-B/32 architectures with random weights (every
caption exactly 20 tokens), measures, and writes benchmarks/RESULTS-gpu.md:

1. Model bound, in-process: CLIP images/s and BLIP captions/s at several batch sizes
   (the models' own batch API, dtype `auto`), and the preprocessing alone, tensor path
   against the Hugging Face processor.
2. Served, through Ray Serve on this machine: the Embedder and the Captioner through
   deployment handles with enough concurrent calls to fill their batches (the served
   models), then over HTTP with many clients from several processes: POST /search/image,
   and POST /images in both captioning modes (inline: `wait_for_caption`, each upload
   captioned before its answer; background: answered at embedding speed).
3. GPU memory per replica (nvidia-smi), peak RSS per process.

The graph is serve_config.production.yaml's: its model args and the model
deployments' batch options, one replica each on the one GPU, on the embedded stores
(no Weaviate/S3 here), several Ingress replicas. `--smoke` runs every step on the CPU
with tiny models and serve_config.yaml, and writes its report outside the repository
(benchmarks/RESULTS-gpu.md holds GPU figures only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx
import numpy as np
import torch

from benchmarks.gpu_served import (
    Uploads,
    fill,
    gpu_memory_mib,
    handle_loop,
    local_args,
    start,
    stop,
)
from benchmarks.model_throughput import Row, bench_captioner, bench_embedder, measure, sample_images
from benchmarks.suite import (
    CpuUse,
    Load,
    cpu_seconds,
    machine_info,
    percentile,
    prepare_models,
    replica_memory,
    say,
    serve_layout,
)
from deployments.model_loading import resolve_placement
from deployments.preprocessing import pixel_pipeline
from tests.support.random_weights import save_random_blip, save_random_clip

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS-gpu.md"
SMOKE_RESULTS = Path(tempfile.gettempdir()) / "imagesearch-RESULTS-gpu-smoke.md"
CLIP_TARGET = 2500.0  # images/s: clip-retrieval's A100 offline figure
BLIP_TARGET = 500.0  # captions/s per GPU


@dataclass(frozen=True)
class Plan:
    name: str
    config: Path
    clip_batches: tuple[int, ...]
    blip_batches: tuple[int, ...]
    preprocess_batches: tuple[int, ...]
    seconds_per_cell: float
    clients: int
    client_processes: int
    warmup_s: float
    window_s: float


GPU = Plan(
    name="gpu",
    config=ROOT / "serve_config.production.yaml",
    clip_batches=(1, 32, 128, 256),
    blip_batches=(1, 32, 128),
    preprocess_batches=(32, 128),
    seconds_per_cell=2.0,
    clients=512,
    client_processes=6,
    warmup_s=8.0,
    window_s=20.0,
)
SMOKE = Plan(
    name="smoke",
    config=ROOT / "serve_config.yaml",
    clip_batches=(1, 8),
    blip_batches=(1, 4),
    preprocess_batches=(8,),
    seconds_per_cell=0.3,
    clients=16,
    # Two, so that the smoke run covers the multi-process clients too.
    client_processes=2,
    warmup_s=3.0,
    window_s=6.0,
)
TOKENS = 20


@dataclass(frozen=True)
class PreprocessRow:
    model: str
    path: str
    batch: int
    images_per_s: float


@dataclass
class Phase:
    name: str
    load: Load
    clients: int
    cpu: CpuUse | None = None


@dataclass
class Report:
    plan: Plan
    machine: dict[str, str]
    dtype: str
    rows: list[Row] = field(default_factory=list)
    preprocess: list[PreprocessRow] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    gpu_mib: dict[str, float] = field(default_factory=dict)
    rss: dict[str, tuple[int, float]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    def rate(self, name: str) -> float:
        return next((p.load.rate for p in self.phases if p.name == name), float("nan"))

    def markdown(self, command: str) -> str:
        smoke = self.plan.name == "smoke"
        lines = [
            "# GPU check results"
            + (" — SMOKE RUN (CPU, tiny models; not GPU figures)" if smoke else ""),
            "",
        ]
        lines += [
            f"Written by `{command}` in {self.wall_s / 60:.1f} min. "
            + (
                "Tiny random models on the CPU: the figures only show that every step runs."
                if smoke
                else "Full-size BLIP-base and CLIP-B/32 with random weights, every caption "
                f"exactly {TOKENS} tokens, dtype `auto` ({self.dtype})."
            ),
            "",
            "## Machine",
            "",
            "| | |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in self.machine.items()),
            f"| serve config | `{self.plan.config.name}` (deployment options below) |",
            "",
            "## Targets",
            "",
            "| measure | value | target | status |",
            "|---|---|---|---|",
        ]
        for label, name, target in (
            (
                "served CLIP image embedding, handle (images/s)",
                "Embedder.embed_image (handle)",
                CLIP_TARGET,
            ),
            ("served search by image, HTTP (images/s)", "POST /search/image", CLIP_TARGET),
            (
                "served BLIP captioning, handle (captions/s)",
                "Captioner.caption (handle)",
                BLIP_TARGET,
            ),
            (
                "served ingest inline, HTTP (captioned images/s)",
                "POST /images (inline)",
                BLIP_TARGET,
            ),
        ):
            value = self.rate(name)
            status = "met" if value >= target else "NOT met"
            lines.append(
                f"| {label} | {value:.1f} | >= {target:g} | {status if not smoke else '- (smoke)'} |"
            )
        lines += ["", "## 1. Model bound (in-process, dtype `auto`)", ""]
        lines += ["| path | dtype | batch | items/s |", "|---|---|---|---|"]
        lines += [f"| {r.path} | {r.dtype} | {r.batch} | {r.items_per_s:.1f} |" for r in self.rows]
        lines += [
            "",
            "Preprocessing alone (512x384 uint8 images to `pixel_values` on the device, "
            "one process, the replica's thread count):",
            "",
            "| model | path | batch | images/s |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {p.model} | {p.path} | {p.batch} | {p.images_per_s:.0f} |" for p in self.preprocess
        ]
        lines += [
            "",
            "## 2. Served (Ray Serve on this machine; HTTP over loopback, closed loop)",
            "",
            "| what | clients | answered in window | per s | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|---|---|",
        ]
        for phase in self.phases:
            load = phase.load
            lines.append(
                f"| `{phase.name}` | {phase.clients} | {load.ok} in {load.seconds:.0f} s | "
                f"{load.rate:.1f} | {percentile(load.latencies_ms, 0.5):.0f} | "
                f"{percentile(load.latencies_ms, 0.99):.0f} | {len(load.errors)} |"
            )
        with_cpu = [p for p in self.phases if p.cpu]
        if with_cpu:
            lines += [
                "",
                "Where the CPU went (CPU seconds per answered request, each phase; last row: "
                "cores busy on average; `benchmark clients` is the driver process only, "
                "not the HTTP client processes):",
                "",
                "| process | " + " | ".join(f"`{p.name}`" for p in with_cpu) + " |",
                "|---|" + "---|" * len(with_cpu),
            ]
            names = sorted({n for p in with_cpu if p.cpu for n in p.cpu.by_process})
            for name in names:
                cells = [
                    f"{p.cpu.by_process.get(name, 0.0) / max(p.cpu.answered, 1):.4f}"
                    for p in with_cpu
                    if p.cpu
                ]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            busy = [
                f"{sum(p.cpu.by_process.values()) / p.cpu.wall_s:.2f}" for p in with_cpu if p.cpu
            ]
            lines.append("| cores busy | " + " | ".join(busy) + " |")
        lines += ["", "## 3. Memory", "", "| process | alive | peak RSS MiB | GPU MiB |"]
        lines += ["|---|---|---|---|"]
        for name, (count, peak) in sorted(self.rss.items()):
            gpu = self.gpu_mib.get(name)
            lines.append(
                f"| {name} | {count} | {peak:.0f} | {'' if gpu is None else f'{gpu:.0f}'} |"
            )
        errors = [e for p in self.phases for e in p.load.errors]
        if errors:
            lines += ["", "## Errors (first 10)", ""] + [f"- {e}" for e in errors[:10]]
        lines += [
            "",
            "## Deployment options used",
            "",
            "```json",
            json.dumps(self.options, indent=1, sort_keys=True),
            "```",
            "",
        ]
        return "\n".join(lines)


# -- the steps ------------------------------------------------------------------------------


def build_models(root: Path, smoke: bool) -> tuple[Path, Path]:
    if not smoke:
        return prepare_models(root, TOKENS)
    from transformers import GenerationConfig

    blip = save_random_blip(root / "blip-tiny", "tiny")
    clip = save_random_clip(root / "clip-tiny", "tiny")
    generation = GenerationConfig.from_pretrained(blip)
    generation.min_new_tokens = TOKENS
    generation.save_pretrained(blip)
    return blip, clip


def _synchronised(fn: Callable[[Sequence[np.ndarray]], torch.Tensor]) -> Callable[[list[Any]], Any]:
    def run(images: list[Any]) -> Any:
        out = fn(images)
        if out.is_cuda:
            torch.cuda.synchronize()
        return out

    return run


def bench_preprocessing(
    blip: Path, clip: Path, batches: tuple[int, ...], seconds: float, threads: int
) -> list[PreprocessRow]:
    from transformers import AutoImageProcessor

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    placement = resolve_placement()
    rows: list[PreprocessRow] = []
    try:
        for name, directory in (("CLIP", clip), ("BLIP", blip)):
            processor = AutoImageProcessor.from_pretrained(directory)
            for path in ("processor", "tensor"):
                pipeline = pixel_pipeline(processor, placement, path)
                for batch in batches:
                    rate = measure(_synchronised(pipeline), sample_images(batch), seconds)
                    rows.append(PreprocessRow(name, path, batch, rate))
                    say(f"preprocess {name} {path} batch {batch}: {rate:.0f} images/s")
    finally:
        torch.set_num_threads(before)
    return rows


def single_machine_options(
    options: dict[str, dict[str, Any]], smoke: bool
) -> dict[str, dict[str, Any]]:
    """The config's deployment options on one machine: on a GPU, one Captioner and one
    Embedder replica sharing the card, and Ingress replicas for the remaining cores
    (no custom `cpu_pool` resource here)."""
    out = json.loads(json.dumps(options))
    if smoke:
        return out
    cpus = os.cpu_count() or 4
    for name in ("Captioner", "Embedder"):
        out[name].pop("autoscaling_config", None)
        out[name]["num_replicas"] = 1
    model_cpus = sum(
        out[n]["ray_actor_options"].get("num_cpus", 1) for n in ("Captioner", "Embedder")
    )
    ingress = out["Ingress"]
    ingress.pop("autoscaling_config", None)
    # Half of what the models leave: the other half runs the proxy and the clients.
    ingress["num_replicas"] = max(1, int(cpus - model_cpus) // 2)
    ingress["ray_actor_options"] = {"num_cpus": 1}
    worker = out["CaptionWorker"]
    worker["ray_actor_options"].pop("resources", None)
    return out


async def served(report: Report, blip: Path, clip: Path, scratch: Path) -> None:
    plan = report.plan
    raw, options = serve_layout(plan.config)
    args = local_args(raw, blip, clip, scratch / "data")
    deployed = single_machine_options(options, plan.name == "smoke")
    report.options = deployed
    layout = ", ".join(f"{name} x{o.get('num_replicas', 1)}" for name, o in deployed.items())
    say(f"deploying {layout}")
    graph = await start(args, deployed)
    try:
        async with httpx.AsyncClient(base_url=graph.base, timeout=300) as client:
            warm = Uploads("/search/image", 2).request(0)
            for i in range(4):
                await warm(client, i)

        def batch_of(name: str, queue: str | None = None) -> int:
            config = deployed[name]["user_config"]
            return int((config[queue] if queue else config)["max_batch_size"])

        images = sample_images(64)
        for deployment, method, batch in (
            ("Embedder", "embed_image", batch_of("Embedder", "image")),
            ("Captioner", "caption", batch_of("Captioner")),
        ):
            # Two batches' worth of calls in flight: one runs while the next gathers.
            clients = 2 * batch
            before = cpu_seconds(os.getpid()), time.perf_counter()
            load = await handle_loop(
                deployment, method, images, clients, plan.warmup_s, plan.window_s
            )
            name = f"{deployment}.{method} (handle)"
            report.phases.append(Phase(name, load, clients, CpuUse.since(before, load.all_ok)))
            say(f"{name}: {load.rate:.1f}/s, {len(load.errors)} errors")

        http = (
            ("POST /search/image", Uploads("/search/image", 2), {200}),
            (
                "POST /images (inline)",
                Uploads("/images", 5, unique=True, query="wait_for_caption=true"),
                {201},
            ),
            # Last: it leaves a caption backlog that the worker drains afterwards.
            ("POST /images (background)", Uploads("/images", 6, unique=True), {201}),
        )
        for name, uploads, ok in http:
            before = cpu_seconds(os.getpid()), time.perf_counter()
            load = await fill(
                graph.base,
                plan.clients,
                plan.client_processes,
                plan.warmup_s,
                plan.window_s,
                uploads,
                ok,
            )
            report.phases.append(Phase(name, load, plan.clients, CpuUse.since(before, load.all_ok)))
            say(f"{name}: {load.rate:.1f}/s, {len(load.errors)} errors")
        report.gpu_mib = gpu_memory_mib()
        report.rss = replica_memory(os.getpid())
    finally:
        await stop()


async def run(args: argparse.Namespace) -> Report:
    started = time.monotonic()
    plan = SMOKE if args.smoke else GPU
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke on a CPU machine")
    placement = resolve_placement()
    report = Report(plan, machine_info(), str(placement.dtype).removeprefix("torch."))
    with tempfile.TemporaryDirectory(prefix="imagesearch-gpu-check-") as tmp:
        scratch = Path(tmp)
        say(f"{plan.name}: building models")
        blip, clip = build_models(scratch / "models", args.smoke)
        report.rows += bench_embedder(
            str(clip), ["auto"], list(plan.clip_batches), plan.seconds_per_cell
        )
        report.rows += bench_captioner(
            str(blip), ["auto"], list(plan.blip_batches), plan.seconds_per_cell, TOKENS
        )
        for row in report.rows:
            say(f"{row.path} batch {row.batch}: {row.items_per_s:.1f}/s")
        raw, _ = serve_layout(plan.config)
        threads = (raw.get("embedder", {}).get("model", {}) or {}).get("num_threads") or 1
        report.preprocess = bench_preprocessing(
            blip, clip, plan.preprocess_batches, plan.seconds_per_cell, int(threads)
        )
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the in-process models leave the card to the replicas
        await served(report, blip, clip, scratch)
    report.wall_s = time.monotonic() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models, a few minutes")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or (SMOKE_RESULTS if args.smoke else RESULTS)
    if args.smoke and out.resolve() == RESULTS.resolve():
        raise SystemExit(f"a smoke run does not write {RESULTS}: it holds GPU figures only")
    report = asyncio.run(run(args))
    command = "bash benchmarks/gpu_check.sh" + (" --smoke" if args.smoke else "")
    out.write_text(report.markdown(command))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
