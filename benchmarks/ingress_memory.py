"""Peak resident memory of the Ingress replica, and what its imports alone cost.

    python -m benchmarks.ingress_memory

Deploys the graph on tiny random models (the Ingress does not run the models, so their
size does not change its memory), sends uploads and searches, and reads the replica's
VmHWM. Separately, imports what an Ingress replica imports in a fresh process and
reads that process's peak, and whether torch or transformers came with it.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REPLICA_IMPORTS = ("ingress.http.deployment", "ingress.app")


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s*(\d+) kB", status, re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


def replica_pids(app: str, deployment: str) -> list[int]:
    """Serve names replica processes `ray::ServeReplica:<app>:<deployment>`."""
    title = f"ServeReplica:{app}:{deployment}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and title in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    if not pids:
        raise RuntimeError(f"no replica of {app}:{deployment} found")
    return pids


def import_cost() -> dict[str, object]:
    code = (
        "import importlib, json, re, sys\n"
        f"for name in {list(REPLICA_IMPORTS)!r}: importlib.import_module(name)\n"
        "status = open('/proc/self/status').read()\n"
        "hwm = int(re.search(r'^VmHWM:\\s*(\\d+) kB', status, re.M).group(1)) / 1024\n"
        "print(json.dumps({'peak_mib': hwm, 'torch': 'torch' in sys.modules,"
        " 'transformers': 'transformers' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def served_peak(requests: int = 40) -> float:
    import ray
    from ray import serve

    from ingress.settings import AppArgs
    from tests.support.ports import free_port
    from tests.support.served_app import deploy_graph, tiny_graph_args
    from tests.support.tiny_models import build_tiny_blip, build_tiny_clip

    work = Path(tempfile.mkdtemp(prefix="ingress-memory-"))
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        args: AppArgs = tiny_graph_args(
            build_tiny_blip(work / "blip"), build_tiny_clip(work / "clip"), {"data_dir": str(work)}
        )
        deploy_graph(args, "memory", "/memory")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/memory", timeout=120) as client:
            for seed in range(requests):
                files = {"file": (f"{seed}.png", _png(seed), "image/png")}
                assert client.post("/images", files=files).status_code == 201
                found = client.post("/search/text", json={"query": f"picture {seed}"})
                assert found.status_code == 200
        return max(peak_rss_mib(pid) for pid in replica_pids("memory", "Ingress"))
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cost = import_cost()
    print(
        f"imports of an Ingress replica: peak {cost['peak_mib']:.0f} MiB, "
        f"torch loaded: {cost['torch']}, transformers loaded: {cost['transformers']}"
    )
    print(f"Ingress replica after 40 uploads and 40 text searches: peak {served_peak():.0f} MiB")


if __name__ == "__main__":
    main()
