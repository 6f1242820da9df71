"""The ingress's nudge to the caption worker: at most twice per hold, never failing a
request, and only for POSTs (uploads, searches)."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from ingress.http.priority import InteractivePriority, WorkerNudge


class _Method:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[float] = []
        self.fail = fail

    def remote(self, seconds: float) -> None:
        if self.fail:
            raise RuntimeError("the worker is being replaced")
        self.calls.append(seconds)


class _Worker:
    def __init__(self, fail: bool = False) -> None:
        self.hold = _Method(fail)


def test_a_nudge_is_sent_at_most_twice_per_hold() -> None:
    worker: Any = _Worker()
    now = [0.0]
    nudge = WorkerNudge(worker, 1.0, clock=lambda: now[0])
    for t in (0.0, 0.1, 0.4, 0.5, 0.9, 1.2):
        now[0] = t
        nudge()
    assert worker.hold.calls == [1.0, 1.0, 1.0]  # at 0.0, 0.5 and 1.2


def test_an_unreachable_worker_does_not_fail_the_request() -> None:
    worker: Any = _Worker(fail=True)
    WorkerNudge(worker, 1.0)()


async def test_only_posts_nudge() -> None:
    nudges: list[int] = []
    app = FastAPI()

    @app.get("/images")
    async def listing() -> dict[str, str]:
        return {}

    @app.post("/search/text")
    async def search() -> dict[str, str]:
        return {}

    app.add_middleware(InteractivePriority, nudge=lambda: lambda: nudges.append(1))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/images")).status_code == 200
        assert nudges == []
        assert (await client.post("/search/text")).status_code == 200
    assert nudges == [1]
