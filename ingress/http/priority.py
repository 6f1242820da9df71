"""Interactive requests first: while an ingress serves uploads and searches, it tells
the caption worker to hold off, so that background captions take the cores only when
users are not waiting (see captioning.worker.yield_to_requests_s)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("ingress.http.priority")


class WorkerNudge:
    """Tells the caption worker to hold for `hold_s`, at most twice per hold, so that a
    busy ingress sends a handful of calls a second, not one per request."""

    def __init__(
        self,
        worker: DeploymentHandle,
        hold_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._worker = worker
        self._hold_s = hold_s
        self._clock = clock
        self._last = float("-inf")

    def __call__(self) -> None:
        now = self._clock()
        if now - self._last < self._hold_s / 2:
            return
        self._last = now
        try:
            # Not awaited: the request does not wait for the worker to hear it.
            self._worker.hold.remote(self._hold_s)
        except Exception:  # a worker being replaced must not fail a user's request
            logger.debug("could not reach the caption worker", exc_info=True)


class InteractivePriority:
    """ASGI middleware: every POST (an upload, a search, /embed-image/) nudges."""

    def __init__(self, app: ASGIApp, nudge: Callable[[], Callable[[], None] | None]) -> None:
        self.app = app
        self.nudge = nudge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            nudge = self.nudge()
            if nudge is not None:
                nudge()
        await self.app(scope, receive, send)
