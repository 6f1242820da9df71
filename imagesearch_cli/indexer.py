"""One `imagesearch index` run: sources in, a summary out.

Per source: skip it if the journal says an earlier run did it; else read and hash
the bytes, ask the service whether that id exists (no upload when it does), upload,
and journal the outcome. `concurrency` sources are in flight at once; the client
retries transient failures, and what still fails is reported by source with the
service's reason. A service that cannot be reached, or refuses the API key, stops the
run: every remaining source would fail the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from imagesearch_cli.client import Answer, ApiClient, ServiceError
from imagesearch_cli.journal import Journal
from imagesearch_cli.progress import Counts, Progress
from imagesearch_cli.sources import Problem, Source, content_type_for
from ingress.stores.records import image_id_for


@dataclass
class Summary:
    total: int = 0
    counts: Counts = field(default_factory=Counts)
    failures: list[Problem] = field(default_factory=list)
    # Why the run stopped before the end (unreachable service, bad key), if it did.
    stopped: str | None = None
    # The ids this run added or found already there (for --wait-captions).
    ids: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Everything named is in the index now."""
        return self.stopped is None and not self.failures and self.counts.finished == self.total


class _Stop(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class IndexRun:
    def __init__(
        self,
        api: ApiClient,
        journal: Journal,
        *,
        tags: Sequence[str] = (),
        concurrency: int = 4,
        progress: Progress | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.api = api
        self.journal = journal
        self.tags = list(tags)
        self.concurrency = concurrency
        self.progress = progress
        # Live while running, so that an interrupted run can still report; the progress
        # display shows the same counts.
        self.summary = Summary(counts=progress.counts if progress is not None else Counts())

    async def run(self, sources: Sequence[Source], problems: Sequence[Problem] = ()) -> Summary:
        summary = self.summary
        summary.total = len(sources) + len(problems)
        # Lines that name no source fail as they are: nothing to send, nothing to journal.
        summary.counts.failed += len(problems)
        summary.failures.extend(problems)
        pending = []
        for source in sources:
            if self.journal.done(source.identity()):
                summary.counts.skipped += 1
            else:
                pending.append(source)
        self._tick()
        todo = iter(pending)
        workers = [
            asyncio.create_task(self._worker(todo))
            for _ in range(min(self.concurrency, len(pending)))
        ]
        try:
            await asyncio.gather(*workers)
        except _Stop as stop:
            summary.stopped = stop.reason
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return summary

    async def _worker(self, todo: Iterator[Source]) -> None:
        # One shared iterator: each source is taken by exactly one worker.
        for source in todo:
            outcome, image_id, reason = await self._index_one(source)
            self._finish(source, outcome, image_id, reason)

    async def _index_one(self, source: Source) -> tuple[str, str | None, str | None]:
        """(outcome, id, reason): outcome is indexed, exists or failed."""
        try:
            data = await source.read()
        except Exception as exc:  # a file or object that cannot be read, for any reason
            return "failed", None, f"cannot read: {type(exc).__name__}: {exc}"
        try:
            if data is None:
                answer = await self.api.add_url(source.label, self.tags)
            else:
                image_id = image_id_for(await asyncio.to_thread(_sha256, data))
                # The id is a function of the bytes: one GET spares a whole upload.
                if await self.api.get_image(image_id) is not None:
                    return "exists", image_id, None
                answer = await self.api.add_file(
                    data, source.filename, content_type_for(source.filename), self.tags
                )
        except ServiceError as exc:
            if exc.stops_run:  # every remaining source would fail the same way
                raise _Stop(exc.reason) from None
            return "failed", None, exc.reason
        return self._added(answer)

    @staticmethod
    def _added(answer: Answer) -> tuple[str, str | None, str | None]:
        record = answer.data if isinstance(answer.data, dict) else {}
        outcome = "exists" if record.get("duplicate") else "indexed"
        return outcome, record.get("id"), None

    def _finish(
        self, source: Source, outcome: str, image_id: str | None, reason: str | None
    ) -> None:
        counts = self.summary.counts
        if image_id is not None and outcome in ("indexed", "exists"):
            self.summary.ids.append(image_id)
        if outcome == "indexed":
            counts.indexed += 1
        elif outcome == "exists":
            counts.exists += 1
        else:
            counts.failed += 1
            self.summary.failures.append(Problem(source.label, reason or "unknown error"))
        self.journal.record(source.identity(), outcome, image_id, reason)
        self._tick()

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress.update()
