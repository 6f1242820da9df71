"""Background upkeep of the embedded store's indices, without blocking anyone.

Every write to the LanceDB table adds a small data file and rows that no index covers
yet; Lance still finds them (it scans unindexed rows flat), but each read gets slower.
An :class:`IndexUpkeep` task in each ingress replica checks the table every
``interval_s`` and:

- builds the vector (ANN) index once the table has ``ann_min_rows`` rows; below that,
  search stays an exact flat scan;
- runs Lance's optimize once ``refresh_rows`` rows are missing from an index (vector or
  caption) or ``compact_fragments`` small files have piled up: it merges the files and
  folds the new rows into the indices.

Writes and searches go on meanwhile: Lance commits the new index or the merged files as
a new table version, and retries conflicting commits. Everything runs as LanceDB async
calls on its own threads, never on the replica's event loop. Replicas sharing the
directory take turns through a non-blocking file lock: whoever finds it taken skips the
round, so only one process builds at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ingress.settings import IndexUpkeepArgs
from ingress.stores.file_lock import FileLock

if TYPE_CHECKING:
    from ingress.stores.lancedb import LanceDBVectorStore

logger = logging.getLogger("ingress.stores.index")

Outcome = Literal["busy", "idle", "built", "optimized"]

# Upkeep tasks must outlive the call that started them; asyncio keeps only weak
# references to tasks.
_RUNNING: set[IndexUpkeep] = set()


@dataclass(frozen=True)
class IndexLag:
    """How far the table's indices and files are behind its writes."""

    rows: int
    vector_index: bool
    # The most rows that some index (vector or caption) does not cover yet.
    unindexed_rows: int
    small_fragments: int


def index_lock_path(store: LanceDBVectorStore) -> Path:
    """The file whose lock lets one process at a time work on a table's indices."""
    return store.path / f".{store.table_name}.index.lock"


class IndexUpkeep:
    """Keeps one LanceDB store's indices current from a background asyncio task."""

    def __init__(self, store: LanceDBVectorStore, args: IndexUpkeepArgs) -> None:
        self.store = store
        self.args = args
        self._lock = FileLock(index_lock_path(store))
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> Outcome:
        """One round: build, optimize or nothing; "busy" when another process holds the
        upkeep lock. Store failures propagate (the background loop logs them)."""
        if not await asyncio.to_thread(self._lock.acquire, False):
            return "busy"
        try:
            return await self._round()
        finally:
            self._lock.release()

    async def _round(self) -> Outcome:
        # Read under the lock: another replica may have just built or optimized.
        lag = await self.store.index_lag()
        started = time.perf_counter()
        if not lag.vector_index and lag.rows >= self.args.ann_min_rows:
            logger.info("building the vector index over %d rows", lag.rows)
            await self.store.create_ann_index_if_large(self.args.ann_min_rows)
            logger.info("vector index built in %.1f s", time.perf_counter() - started)
            return "built"
        if (
            lag.unindexed_rows >= self.args.refresh_rows
            or lag.small_fragments >= self.args.compact_fragments
        ):
            await self.store.optimize()
            logger.info(
                "optimized in %.1f s (%d rows not indexed, %d small files before)",
                time.perf_counter() - started,
                lag.unindexed_rows,
                lag.small_fragments,
            )
            return "optimized"
        return "idle"

    def start(self) -> None:
        """Start the background loop on the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
            _RUNNING.add(self)

    async def stop(self) -> None:
        task, self._task = self._task, None
        _RUNNING.discard(self)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.args.interval_s)
            try:
                outcome = await self.run_once()
            except Exception:
                # Searches stay correct without upkeep, only slower: keep trying.
                logger.exception("index upkeep of %s failed; retrying later", self.store.path)
                continue
            if outcome == "busy":
                logger.debug("index upkeep: another process holds the lock")


def start_index_upkeep(store: LanceDBVectorStore, args: IndexUpkeepArgs) -> IndexUpkeep | None:
    """Start upkeep of ``store`` in the background, unless the configuration turns it off."""
    if not args.enabled:
        logger.info("index upkeep is off for %s", store.path)
        return None
    upkeep = IndexUpkeep(store, args)
    upkeep.start()
    logger.info(
        "index upkeep every %g s: ANN index from %d rows", args.interval_s, args.ann_min_rows
    )
    return upkeep


def upkeep_of(store: object) -> IndexUpkeep | None:
    """The running upkeep of ``store``, if any (for shutdown and tests)."""
    return next((upkeep for upkeep in _RUNNING if upkeep.store is store), None)
