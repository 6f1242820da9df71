"""The caption backlog: records written with caption_status "pending" are captioned
later, by whoever runs a CaptionBacklog (the caption worker deployment in the graph).

The vector store is the queue. A pending record stays pending until a caption is
written with a conditional, partial update, so a process that dies mid-caption loses
nothing: the record is simply taken again. The update only applies while the record
is still pending and exists, so a delete in between is never undone, and a caption
written meanwhile (by another worker, or a re-caption) is never overwritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

import numpy as np

from ingress.core.imaging import ImageLimits, decode_image
from ingress.stores.base import BlobNotFound, BlobStore, VectorStore
from ingress.stores.records import ImageFilter, ImageRecord

logger = logging.getLogger("ingress.core.captioning")

PENDING = ImageFilter(caption_statuses=("pending",))


class Captioner(Protocol):
    """The captioner as the backlog sees it."""

    caption_model: str

    async def caption(self, pixels: np.ndarray) -> str: ...


@dataclass(frozen=True)
class BacklogPolicy:
    # Captions in flight at once: enough to fill the Captioner's batches on all of its
    # replicas, so that its autoscaler sees the backlog as ongoing requests.
    concurrency: int = 16
    # Records read from the store per page of the backlog.
    page_size: int = 64
    # Failures before a record is marked "failed" with the last reason.
    max_attempts: int = 3
    # Wait before retry n (1-based): backoff_s * 2 ** (n - 1).
    backoff_s: float = 5.0
    # Sleep between passes when the backlog is empty.
    idle_poll_s: float = 2.0


@dataclass
class BacklogStats:
    written: int = 0
    failed: int = 0


@dataclass
class _Retry:
    attempts: int
    not_before: float


class CaptionBacklog:
    """Drains the pending records of one vector store through a Captioner."""

    def __init__(
        self,
        vectors: VectorStore,
        blobs: BlobStore,
        captioner: Captioner,
        limits: ImageLimits,
        policy: BacklogPolicy | None = None,
        *,
        on_written: Callable[[float], None] | None = None,
        on_failed: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.vectors = vectors
        self.blobs = blobs
        self.captioner = captioner
        self.limits = limits
        self.policy = policy or BacklogPolicy()
        self._on_written = on_written
        self._on_failed = on_failed
        self._clock = clock
        # Failures so far of records still pending; lost with the process, which only
        # means a record gets its N tries again after a restart.
        self._retries: dict[str, _Retry] = {}
        self._hold_until = 0.0
        self._in_flight = 0
        self.stats = BacklogStats()

    def hold(self, seconds: float) -> None:
        """For `seconds`, interactive requests are being served: keep one caption in
        flight, not `concurrency`. One, not none: under steady traffic the backlog
        still drains, at the pace of one caption at a time. Holds overlap: the latest
        end wins."""
        self._hold_until = max(self._hold_until, self._clock() + seconds)

    async def _quiet(self) -> None:
        # A deadline that later holds push back, read in short steps (an Event would
        # not say when it moved).
        while self._in_flight >= 1 and self._hold_until > self._clock():  # noqa: ASYNC110
            await asyncio.sleep(0.1)

    async def drain_once(self) -> int:
        """One pass over the backlog as it is now; how many records were taken."""
        semaphore = asyncio.Semaphore(self.policy.concurrency)
        tasks: list[asyncio.Task[None]] = []
        cursor: str | None = None
        while True:
            page = await self.vectors.list(self.policy.page_size, cursor, PENDING)
            for record in page.records:
                if not self._due(record.id):
                    continue
                await self._quiet()
                await semaphore.acquire()
                # Counted before the task runs, so that the next _quiet sees it.
                self._in_flight += 1
                tasks.append(asyncio.create_task(self._caption_released(record, semaphore)))
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        if tasks:
            await asyncio.gather(*tasks)
        return len(tasks)

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until `stop` is set; store failures are logged and retried."""
        while not stop.is_set():
            try:
                taken = await self.drain_once()
            except Exception:
                logger.exception("caption backlog pass failed; retrying")
                taken = 0
            if taken == 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.policy.idle_poll_s)

    def _due(self, image_id: str) -> bool:
        retry = self._retries.get(image_id)
        return retry is None or retry.not_before <= self._clock()

    async def _caption_released(self, record: ImageRecord, semaphore: asyncio.Semaphore) -> None:
        try:
            await self.caption_one(record)
        finally:
            self._in_flight -= 1
            semaphore.release()

    async def caption_one(self, record: ImageRecord) -> None:
        """Caption one pending record and write it, or count the failure."""
        try:
            blob = await self.blobs.get(record.blob_key)
            image = await asyncio.to_thread(
                decode_image, blob.data, self.limits, record.content_type
            )
            caption = await self.captioner.caption(image.pixels)
        except BlobNotFound:
            # Deleted meanwhile (record first, then blob): nothing left to caption.
            self._retries.pop(record.id, None)
            return
        except Exception as exc:
            await self._failed(record, exc)
            return
        self._retries.pop(record.id, None)
        written = await self.vectors.set_caption(record.id, caption, self.captioner.caption_model)
        if written is None:
            # Deleted, or captioned by someone else, since it was listed.
            return
        lag_s = (datetime.now(timezone.utc) - record.created_at).total_seconds()
        self.stats.written += 1
        if self._on_written is not None:
            self._on_written(lag_s)

    async def _failed(self, record: ImageRecord, exc: Exception) -> None:
        retry = self._retries.get(record.id)
        attempts = (retry.attempts if retry else 0) + 1
        reason = failure_reason(exc)
        if attempts < self.policy.max_attempts:
            delay = self.policy.backoff_s * 2 ** (attempts - 1)
            self._retries[record.id] = _Retry(attempts, self._clock() + delay)
            logger.warning(
                "caption of %s failed (try %d of %d, again in %.0f s): %s",
                record.id,
                attempts,
                self.policy.max_attempts,
                delay,
                reason,
            )
            return
        self._retries.pop(record.id, None)
        if await self.vectors.fail_caption(record.id, reason) is not None:
            self.stats.failed += 1
            if self._on_failed is not None:
                self._on_failed()
            logger.error(
                "caption of %s failed %d times; marked failed: %s", record.id, attempts, reason
            )


def failure_reason(exc: BaseException) -> str:
    """One line for caption_error. A model deployment's error arrives wrapped with the
    remote traceback (Ray keeps the original exception as `.cause`): the reason is the
    original's type and message."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]
