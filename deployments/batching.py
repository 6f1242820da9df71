"""The pieces both model deployments are built from (deployments.model_runner puts them
together): per-item failure isolation, batch settings changed through `user_config`,
liveness and the model thread (input validation is in deployments.contracts, which
callers import too)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from deployments.settings import BatchSettings

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


def apply_batch_settings(batch_method: Any, settings: BatchSettings) -> None:
    """Retune a `@serve.batch` method in place; in-flight batches are unaffected."""
    batch_method.set_max_batch_size(settings.max_batch_size)
    batch_method.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)


def current_batch_settings(batch_method: Any) -> BatchSettings:
    # Ray exposes the getters on the batch wrapper under private names only.
    return BatchSettings(
        max_batch_size=batch_method._get_max_batch_size(),
        batch_wait_timeout_s=batch_method._get_batch_wait_timeout_s(),
    )


def replica_tag() -> str:
    """The Serve replica this runs in, or "local" for a plain instance."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return str(serve.get_replica_context().replica_tag)
    except RayServeException:
        return "local"


def run_isolated(fn: Callable[[list[In]], Sequence[Out]], items: list[In]) -> list[Out | Exception]:
    """Run `fn` on the whole batch; if that fails, retry each item alone so that one bad
    item fails only its own request. `@serve.batch` would otherwise fail every request
    in the batch with the same exception. Failures are returned, not raised: the
    unbatched caller re-raises its own (see `unwrap`)."""
    try:
        return list(fn(items))
    except Exception as batch_exc:
        if len(items) == 1:
            return [batch_exc]
        logger.warning("batch of %d failed (%s); retrying items one by one", len(items), batch_exc)
    outcomes: list[Out | Exception] = []
    for item in items:
        try:
            outcomes.append(fn([item])[0])
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


def unwrap(outcome: Out | Exception) -> Out:
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class Liveness:
    """Lets `check_health` skip the probe forward pass while real traffic proves the
    model works, and run it when the replica has been idle."""

    def __init__(self, fresh_for_s: float = 30.0) -> None:
        self._fresh_for_s = fresh_for_s
        self._last_ok = 0.0

    def mark_ok(self) -> None:
        self._last_ok = time.monotonic()

    def needs_probe(self) -> bool:
        return time.monotonic() - self._last_ok > self._fresh_for_s


class ModelThread:
    """The one thread a replica runs its forward passes on.

    torch's OpenMP thread team belongs to the thread that calls into torch, so passes
    spread over the default executor's threads (asyncio.to_thread) build a team in each
    of them and leave the idle ones spinning on the cores the next pass needs. One long-lived thread keeps one warm team, and
    runs the passes of the replica's batch queues one at a time rather than fighting
    over the same cores.
    """

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def call(self, fn: Callable[..., Out], *args: Any) -> Out:
        """Run on the model thread and wait (start-up warm-ups, the public batch API)."""
        return self._executor.submit(fn, *args).result()

    async def run(self, fn: Callable[..., Out], *args: Any) -> Out:
        """Run on the model thread without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
