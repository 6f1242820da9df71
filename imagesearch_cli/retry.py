"""When to try a request again, and how long to wait first; the client's defaults.

Only the standard library: `main` imports the defaults for its `--help`."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

# Answers that say "not now" rather than "never": overload, rate limits and a failing or
# slow dependency behind the service. Every other 4xx (413, 415, 422, ...) is final.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
# A 5xx without the service's JSON error body comes from Serve's proxy, not from the
# service: a replica died (crash, rolling upgrade) with the request inside it
# (ray-project/ray#47219). Whether the request took effect is unknown, so only calls
# that are safe to repeat try again. A JSON 500 is the service's own answer: final.
PROXY_FAILURE_STATUSES = range(500, 600)
# Seconds per request: above the service's own model timeout.
DEFAULT_TIMEOUT_S = 180.0
DEFAULT_RETRIES = 5


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits up to base·2ⁿ, at most
    `max_delay_s`. A server's Retry-After wins over the computed delay (it knows when
    capacity returns), but is capped too, so one bad header cannot stall a run."""

    retries: int = DEFAULT_RETRIES
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    # Injectable for tests: uniform(0, 1).
    jitter: Callable[[], float] = field(default=random.random, compare=False)

    def retryable(
        self, status: int, *, service_answered: bool = True, idempotent: bool = True
    ) -> bool:
        """Whether an answer with `status` is worth another try. `service_answered`: the
        body was the service's JSON error; `idempotent`: repeating the call is safe (a
        GET, a search, a DELETE, an upload of bytes, whose id is their hash)."""
        if status in RETRYABLE_STATUSES:
            return True
        return idempotent and not service_answered and status in PROXY_FAILURE_STATUSES

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0 = the first retry)."""
        if retry_after is not None:
            return min(retry_after, self.max_delay_s)
        ceiling = min(self.max_delay_s, self.base_delay_s * (2**attempt))
        # Full jitter: many clients backing off from the same overload spread out.
        return ceiling * self.jitter()
