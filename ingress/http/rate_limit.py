"""Rate limits: a token bucket per client (API key name, or address without keys).

Each ingress replica keeps its own buckets: with N replicas a client may get up to N
times the configured rate.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from ingress.settings import RateLimitArgs


class TokenBucketLimiter:
    """One token bucket per client: `burst` tokens, refilled at `rate` per second.

    Memory is bounded: beyond `max_clients` buckets the least recently seen is dropped
    (it comes back full). Not thread safe; meant for one event loop.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError("rate must be a positive number of requests per second")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self.rate = float(rate)
        self.burst = int(burst)
        self.max_clients = int(max_clients)
        self._clock = clock
        # client -> (tokens, time of the last update); oldest use first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, client: str) -> float | None:
        """Take a token: None when allowed, else the seconds until one is available."""
        now = self._clock()
        state = self._buckets.get(client)
        if state is None:
            tokens = float(self.burst)
        else:
            tokens, last = state
            tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
            self._buckets.move_to_end(client)
        wait: float | None
        if tokens >= 1.0 - 1e-9:
            tokens = max(0.0, tokens - 1.0)
            wait = None
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


def limiter_for(
    args: RateLimitArgs, clock: Callable[[], float] = time.monotonic
) -> TokenBucketLimiter | None:
    if not args.enabled:
        return None
    return TokenBucketLimiter(args.requests_per_s, args.burst, args.max_clients, clock)
