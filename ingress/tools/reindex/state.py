"""Where a reindex run is: the checkpoint saved after every page, the progress line, and
the walk over the source that keeps both up to date."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from imagesearch_cli.progress import duration
from ingress.settings import LanceDBArgs, StorageArgs
from ingress.stores.base import VectorStore
from ingress.stores.records import ImageRecord
from ingress.stores.walk import record_pages

logger = logging.getLogger("ingress.tools.reindex")

# Failed ids kept in the state file across resumed runs; the count is always exact.
FAILURES_KEPT = 1000
STATE_VERSION = 1


class UsageError(Exception):
    """The command cannot run as asked; the message says why (exit status 2)."""


@dataclass
class Checkpoint:
    """Where a run is: written after every page, read back by the next run of the same
    job (the same stores and models); another job's file is ignored."""

    job: dict[str, Any]
    # The page to continue from and the last id finished (None: from the start).
    cursor: str | None = None
    last_id: str | None = None
    walked: int = 0
    changed: int = 0
    skipped: int = 0
    # Records deleted between the listing and their update.
    gone: int = 0
    failed: int = 0
    # id -> why, the first FAILURES_KEPT of them.
    failures: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, job: dict[str, Any]) -> Checkpoint | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read the state file {path}: {e}") from e
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise UsageError(f"{path} is not a state file of this command; remove it or --state")
        if data.get("job") != job:
            print(
                f"note: {path} belongs to another run ({data.get('job')}); starting afresh",
                file=sys.stderr,
            )
            return None
        counts = {name: data[name] for name in cls._count_names() if name in data}
        return cls(job=job, **counts)

    def save(self, path: Path) -> None:
        # Written beside and renamed over: an interruption never leaves half a file.
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": STATE_VERSION, "job": self.job, **self._counts()}
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(data, indent=1))
        os.replace(partial, path)

    @staticmethod
    def remove(path: Path) -> None:
        """A completed run leaves no state: the next one starts from the beginning."""
        path.unlink(missing_ok=True)

    @classmethod
    def _count_names(cls) -> list[str]:
        """The fields the state file holds beside version and job, in declaration order."""
        return [f.name for f in fields(cls) if f.name != "job"]

    def _counts(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._count_names()}

    def fail(self, image_id: str, why: str) -> None:
        self.failed += 1
        if len(self.failures) < FAILURES_KEPT:
            self.failures[image_id] = why
        logger.warning("%s failed: %s", image_id, why)


def resumed(path: Path, job: dict[str, Any]) -> Checkpoint:
    """The checkpoint of job saved at path, or a fresh one."""
    state = Checkpoint.load(path, job)
    if state is None:
        return Checkpoint(job)
    print(
        f"resuming from {path}: {state.walked} records done before "
        f"({state.changed} changed, {state.failed} failed)",
        file=sys.stderr,
    )
    return state


def default_state_path(storage: StorageArgs, name: str) -> Path:
    return storage.data_dir / "reindex" / f"{name}.json"


def vectors_name(storage: StorageArgs) -> str:
    """The table (collection) storage names, for the state file's name."""
    vectors = storage.vectors
    return vectors.table if isinstance(vectors, LanceDBArgs) else vectors.collection


class Progress:
    """One line on stderr per page: done/total, rate and ETA."""

    def __init__(self, what: str, verb: str, total: int, state: Checkpoint) -> None:
        self.what = what
        self.verb = verb
        self.total = total
        self.state = state
        self._started = time.monotonic()
        self._walked_at_start = state.walked

    def report(self) -> None:
        state = self.state
        total = max(self.total, state.walked)
        share = f" ({100 * state.walked / total:.0f}%)" if total else ""
        walked_now = state.walked - self._walked_at_start
        elapsed = time.monotonic() - self._started
        rate = walked_now / elapsed if elapsed > 0 else 0.0
        eta = duration((total - state.walked) / rate) if rate > 0 else "?"
        print(
            f"{self.what}: {state.walked}/{total} records{share}, {state.changed} {self.verb}, "
            f"{state.skipped} skipped, {state.failed} failed; {rate:.1f} records/s, ETA {eta}",
            file=sys.stderr,
            flush=True,
        )


async def pages(
    store: VectorStore,
    state: Checkpoint,
    what: str,
    verb: str,
    *,
    batch_size: int,
    state_path: Path,
) -> AsyncIterator[Sequence[ImageRecord]]:
    """The store's records, a page at a time in id order, from state's cursor. Once the
    caller is done with a page it is counted into state, progress is reported and (but
    for the last page) state is saved with the next cursor. The caller removes the state
    file when the whole run is done."""
    progress = Progress(what, verb, await store.count(), state)
    async for page in record_pages(store, batch_size, cursor=state.cursor):
        yield page.records
        state.walked += len(page.records)
        if page.records:
            state.last_id = page.records[-1].id
        progress.report()
        if page.next_cursor is not None:
            state.cursor = page.next_cursor
            state.save(state_path)
