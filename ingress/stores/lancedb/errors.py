"""LanceDB failures as StoreErrors, and commits retried when they lose a race.

Several replica processes write to one table; Lance commits optimistically and already
retries conflicting commits internally. ``write`` bounds OUR retries on top, for the
conflicts it gives up on (e.g. a non-rebasable concurrent transaction).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from ingress.stores.base import StoreError, StoreTimeout

T = TypeVar("T")

_WRITE_ATTEMPTS = 6
_BACKOFF_BASE_S = 0.05
_CONFLICT_MARKERS = ("conflict", "incompatible transaction", "too many concurrent writers")


def _is_conflict(exc: BaseException) -> bool:
    message = str(exc).lower()
    return any(marker in message for marker in _CONFLICT_MARKERS)


@contextmanager
def store_errors(op: str) -> Iterator[None]:
    """Turn LanceDB / IO failures into StoreError, keeping the cause."""
    try:
        yield
    except StoreError:
        raise
    except TimeoutError as e:
        raise StoreTimeout(f"lancedb {op} timed out") from e
    except Exception as e:
        raise StoreError(f"lancedb {op} failed: {e}") from e


async def write(op: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run a commit, retrying optimistic-concurrency conflicts with jittered backoff."""
    for n in range(_WRITE_ATTEMPTS):
        try:
            with store_errors(op):
                return await attempt()
        except StoreError as e:
            if n == _WRITE_ATTEMPTS - 1 or not _is_conflict(e.__cause__ or e):
                raise
        await asyncio.sleep(_BACKOFF_BASE_S * 2**n * (0.5 + random.random()))
    raise AssertionError("unreachable")
