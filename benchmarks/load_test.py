"""Bounded load against a running service on this machine, then a consistency check.

    serve run serve_config.yaml          # in another terminal
    python benchmarks/load_test.py --clients 16 --seconds 60

Many concurrent clients mix adds (new images), duplicate adds, text and image
searches and deletes of their own images for a fixed time, then stop by themselves.
The report gives requests, errors (expected 0) and p50/p99 latency per operation.
At the end the stores are checked against what the clients were told: every image a
client was told exists is listed, readable, and has the bytes it uploaded; every image
a client deleted is gone. Exit status 0 only with no errors and no inconsistencies.

Loopback only: the script refuses any other target.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import ipaddress
import random
import statistics
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image


@dataclass
class Tally:
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    # What the clients were told: id -> sha256 of the bytes, and ids they deleted.
    alive: dict[str, str] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)


def _image(rng: random.Random) -> bytes:
    seed = rng.getrandbits(32)
    pixels = np.random.default_rng(seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=85)
    return out.getvalue()


async def _timed(tally: Tally, op: str, call: Awaitable[httpx.Response]) -> httpx.Response | None:
    started = time.perf_counter()
    try:
        response = await call
    except httpx.HTTPError as exc:
        tally.errors.append(f"{op}: {type(exc).__name__}: {exc}")
        return None
    tally.latencies_ms[op].append((time.perf_counter() - started) * 1000)
    return response


def _expect(tally: Tally, op: str, response: httpx.Response | None, *statuses: int) -> bool:
    if response is None:
        return False
    if response.status_code not in statuses:
        tally.errors.append(f"{op}: {response.status_code} {response.text[:200]}")
        return False
    return True


async def client_loop(
    client: httpx.AsyncClient, tally: Tally, deadline: float, tag: str, rng: random.Random
) -> None:
    mine: list[str] = []
    uploaded: list[bytes] = []
    while time.monotonic() < deadline:
        roll = rng.random()
        if roll < 0.35 or not mine:
            data = _image(rng)
            files = {"file": ("load.jpg", data, "image/jpeg")}
            response = await _timed(
                tally, "add", client.post("/images", files=files, data={"tags": tag})
            )
            if _expect(tally, "add", response, 201, 200):
                assert response is not None
                mine.append(response.json()["id"])
                uploaded.append(data)
                tally.alive[response.json()["id"]] = hashlib.sha256(data).hexdigest()
        elif roll < 0.45:
            # The same bytes again: must be a duplicate of an image this client added
            # (unless it deleted it meanwhile, then a new add).
            data = rng.choice(uploaded)
            files = {"file": ("again.jpg", data, "image/jpeg")}
            response = await _timed(tally, "add-duplicate", client.post("/images", files=files))
            if _expect(tally, "add-duplicate", response, 200, 201) and response is not None:
                image_id = response.json()["id"]
                tally.alive[image_id] = hashlib.sha256(data).hexdigest()
                tally.deleted.discard(image_id)
                if image_id not in mine:
                    mine.append(image_id)
        elif roll < 0.70:
            body = {"query": rng.choice(["a dog", "a red car", "people on a beach"]), "limit": 10}
            response = await _timed(tally, "search-text", client.post("/search/text", json=body))
            _expect(tally, "search-text", response, 200)
        elif roll < 0.85:
            files = {"file": ("q.jpg", _image(rng), "image/jpeg")}
            response = await _timed(
                tally, "search-image", client.post("/search/image", files=files)
            )
            _expect(tally, "search-image", response, 200)
        else:
            image_id = mine.pop(rng.randrange(len(mine)))
            response = await _timed(tally, "delete", client.delete(f"/images/{image_id}"))
            if _expect(tally, "delete", response, 204):
                tally.alive.pop(image_id, None)
                tally.deleted.add(image_id)


async def verify(client: httpx.AsyncClient, tally: Tally, tag: str) -> list[str]:
    """What the stores hold against what the clients were told."""
    problems: list[str] = []
    listed: dict[str, dict[str, object]] = {}
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/images", params=params)).json()
        for image in page["images"]:
            if tag in image["tags"] or image["id"] in tally.alive or image["id"] in tally.deleted:
                listed[image["id"]] = image
        cursor = page["next_cursor"]
        if cursor is None:
            break
    for image_id, sha in tally.alive.items():
        record = listed.get(image_id)
        if record is None:
            problems.append(f"told {image_id} exists, but it is not listed")
            continue
        content = await client.get(f"/images/{image_id}/content", follow_redirects=True)
        if content.status_code != 200 or hashlib.sha256(content.content).hexdigest() != sha:
            problems.append(f"{image_id}: content missing or not the uploaded bytes")
    for image_id in tally.deleted:
        if image_id in listed:
            problems.append(f"told {image_id} was deleted, but it is still listed")
        if (await client.get(f"/images/{image_id}")).status_code != 404:
            problems.append(f"told {image_id} was deleted, but GET still finds it")
    for image_id in listed:
        if image_id not in tally.alive and image_id not in tally.deleted:
            problems.append(f"{image_id} is listed with this run's tag but no client added it")
    return problems


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(tally: Tally, seconds: float, problems: list[str]) -> None:
    print(f"\n{'operation':<16}{'requests':>10}{'p50 ms':>10}{'p99 ms':>10}")
    everything: list[float] = []
    for op, values in sorted(tally.latencies_ms.items()):
        everything += values
        print(
            f"{op:<16}{len(values):>10}{statistics.median(values):>10.0f}{_percentile(values, 0.99):>10.0f}"
        )
    if everything:
        print(
            f"{'all':<16}{len(everything):>10}{statistics.median(everything):>10.0f}{_percentile(everything, 0.99):>10.0f}"
        )
    print(f"\n{len(everything) / seconds:.1f} requests/s over {seconds:.0f} s")
    print(f"errors: {len(tally.errors)}")
    for line in tally.errors[:20]:
        print("  ", line)
    print(
        f"inconsistencies: {len(problems)} (checked {len(tally.alive)} alive, {len(tally.deleted)} deleted)"
    )
    for line in problems[:20]:
        print("  ", line)


def _loopback_only(url: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        sys.exit(f"refusing {url}: this load script only targets this machine (loopback)")


async def main_async(args: argparse.Namespace) -> int:
    _loopback_only(args.url)
    tag = f"loadtest-{uuid.uuid4().hex[:8]}"
    tally = Tally()
    limits = httpx.Limits(max_connections=args.clients * 2)
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout, limits=limits) as client:
        health = await client.get("/healthz")
        if health.status_code != 200:
            print(f"service not healthy: {health.status_code} {health.text}")
            return 2
        started = time.monotonic()
        deadline = started + args.seconds
        rngs = [random.Random(args.seed * 1000 + i) for i in range(args.clients)]
        await asyncio.gather(*(client_loop(client, tally, deadline, tag, rng) for rng in rngs))
        elapsed = time.monotonic() - started
        problems = await verify(client, tally, tag)
    report(tally, elapsed, problems)
    return 0 if not tally.errors and not problems else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=120.0, help="per request")
    parser.add_argument("--seed", type=int, default=1)
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
