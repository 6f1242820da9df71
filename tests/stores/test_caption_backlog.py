"""The caption backlog (ingress.core.captioning) on the real embedded stores: pending
records are captioned once, deletes are never undone, a caption written meanwhile is
never overwritten, and failures are retried and then marked failed with the reason."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingress.core.captioning import PENDING, BacklogPolicy, CaptionBacklog
from ingress.core.imaging import ImageLimits
from ingress.core.service import ImageService
from ingress.stores.lancedb import LanceDBVectorStore
from ingress.stores.local_blobs import LocalBlobStore
from ingress.stores.records import ImageFilter
from tests.stores.test_ingest_consistency import DIM, _image, _Models


class _Captioner:
    """Counts its calls; fails the first `failures` of them, or always."""

    caption_model = "test-captioner"

    def __init__(self, failures: int = 0) -> None:
        self.calls = 0
        self.failures = failures
        self.gate: asyncio.Event | None = None

    async def caption(self, pixels: np.ndarray) -> str:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.calls <= self.failures:
            raise RuntimeError("the model could not caption this")
        return f"mean {pixels.mean():.1f}"


@pytest.fixture
async def stores(tmp_path: Path):
    vectors = LanceDBVectorStore(tmp_path / "lancedb", "test-embedder", DIM)
    await vectors.ensure_schema()
    blobs = LocalBlobStore(tmp_path / "blobs")
    yield vectors, blobs
    await vectors.close()


async def _add_pending(stores, count: int) -> list[str]:
    vectors, blobs = stores
    service = ImageService(_Models(), vectors, blobs, ImageLimits())
    ids = []
    for seed in range(count):
        added = await service.add(_image(seed), [], caption_now=False)
        assert added.record.caption_status == "pending"
        assert added.record.caption is None
        ids.append(added.record.id)
    return ids


def _backlog(stores, captioner: _Captioner, **policy: Any) -> CaptionBacklog:
    vectors, blobs = stores
    return CaptionBacklog(
        vectors, blobs, captioner, ImageLimits(), BacklogPolicy(concurrency=4, **policy)
    )


async def test_pending_records_are_captioned_once(stores) -> None:
    vectors, _ = stores
    ids = await _add_pending(stores, 6)
    assert await vectors.count(PENDING) == 6
    captioner = _Captioner()
    backlog = _backlog(stores, captioner)
    assert await backlog.drain_once() == 6
    assert await backlog.drain_once() == 0  # nothing left: nobody is captioned twice
    assert captioner.calls == 6
    for image_id in ids:
        record = await vectors.get(image_id)
        assert record is not None
        assert record.caption_status == "done"
        assert record.caption and record.caption.startswith("mean ")
        assert record.caption_model == "test-captioner"
    assert await vectors.count(PENDING) == 0
    assert await vectors.count(ImageFilter(caption_statuses=("done",))) == 6
    assert backlog.stats.written == 6


async def test_a_delete_while_captioning_stays_deleted(stores) -> None:
    vectors, blobs = stores
    [image_id] = await _add_pending(stores, 1)
    record = await vectors.get(image_id)
    assert record is not None
    captioner = _Captioner()
    captioner.gate = asyncio.Event()
    backlog = _backlog(stores, captioner)
    captioning = asyncio.create_task(backlog.caption_one(record))
    await asyncio.sleep(0.05)  # the caption is being made
    assert await vectors.delete(image_id)
    await blobs.delete(record.blob_key)
    captioner.gate.set()
    await captioning
    assert await vectors.get(image_id) is None
    assert await vectors.count() == 0
    assert backlog.stats.written == 0


async def test_a_caption_written_meanwhile_is_not_overwritten(stores) -> None:
    vectors, _ = stores
    [image_id] = await _add_pending(stores, 1)
    stale = await vectors.get(image_id)
    assert stale is not None
    # Another worker (or a re-caption) got there first.
    assert await vectors.set_caption(image_id, "the first caption", "other-model") is not None
    await _backlog(stores, _Captioner()).caption_one(stale)
    record = await vectors.get(image_id)
    assert record is not None
    assert (record.caption, record.caption_model) == ("the first caption", "other-model")
    # The update is conditional on the record still being pending.
    assert await vectors.set_caption(image_id, "a later caption", "test-captioner") is None


async def test_failures_are_retried_then_marked_failed(stores) -> None:
    vectors, _ = stores
    [retried, _] = await _add_pending(stores, 2)
    # Fails the first call only: retried after the backoff, then written.
    captioner = _Captioner(failures=1)
    backlog = _backlog(stores, captioner, max_attempts=3, backoff_s=0.0)
    await backlog.drain_once()
    await backlog.drain_once()
    assert await vectors.count(PENDING) == 0
    assert await vectors.count(ImageFilter(caption_statuses=("done",))) == 2
    assert (await vectors.get(retried)) is not None


async def test_a_caption_that_always_fails_ends_failed_with_its_reason(stores) -> None:
    vectors, _ = stores
    [image_id] = await _add_pending(stores, 1)
    captioner = _Captioner(failures=10**6)
    backlog = _backlog(stores, captioner, max_attempts=2, backoff_s=0.0)
    await backlog.drain_once()
    record = await vectors.get(image_id)
    assert record is not None and record.caption_status == "pending"  # one try left
    await backlog.drain_once()
    record = await vectors.get(image_id)
    assert record is not None
    assert record.caption_status == "failed"
    assert record.caption is None
    assert record.caption_error is not None
    assert "could not caption" in record.caption_error
    assert await backlog.drain_once() == 0  # failed records are not taken again
    assert captioner.calls == 2
    assert backlog.stats.failed == 1


async def test_backoff_holds_a_failed_record_back(stores) -> None:
    vectors, _ = stores
    await _add_pending(stores, 1)
    now = [0.0]
    vectors_, blobs = stores
    captioner = _Captioner(failures=1)
    backlog = CaptionBacklog(
        vectors_,
        blobs,
        captioner,
        ImageLimits(),
        BacklogPolicy(max_attempts=3, backoff_s=30.0),
        clock=lambda: now[0],
    )
    await backlog.drain_once()
    assert await backlog.drain_once() == 0  # within its backoff: not taken
    now[0] = 31.0
    assert await backlog.drain_once() == 1
    assert await vectors.count(PENDING) == 0


async def test_requeued_records_are_captioned_again(stores) -> None:
    vectors, _ = stores
    [image_id] = await _add_pending(stores, 1)
    backlog = _backlog(stores, _Captioner())
    await backlog.drain_once()
    assert await vectors.requeue_caption(image_id) is not None
    record = await vectors.get(image_id)
    assert record is not None and record.caption_status == "pending"
    await backlog.drain_once()
    record = await vectors.get(image_id)
    assert record is not None and record.caption_status == "done"


async def test_a_hold_keeps_one_caption_in_flight_until_it_ends(stores) -> None:
    vectors, blobs = stores
    await _add_pending(stores, 4)
    now = [0.0]
    captioner = _Captioner()
    captioner.gate = asyncio.Event()
    in_flight = []
    real_caption = captioner.caption

    async def counted(pixels: np.ndarray) -> str:
        in_flight.append(1)
        try:
            return await real_caption(pixels)
        finally:
            in_flight.pop()

    captioner.caption = counted  # type: ignore[method-assign]
    backlog = CaptionBacklog(
        vectors, blobs, captioner, ImageLimits(), BacklogPolicy(concurrency=4), clock=lambda: now[0]
    )
    backlog.hold(5.0)
    draining = asyncio.create_task(backlog.drain_once())
    await asyncio.sleep(0.3)
    # Users are being served: one caption at a time, not four.
    assert len(in_flight) == 1
    backlog.hold(1.0)  # a shorter hold does not cut the longer one
    now[0] = 4.0
    await asyncio.sleep(0.3)
    assert len(in_flight) == 1
    now[0] = 5.5
    await asyncio.sleep(0.3)
    assert len(in_flight) == 4  # the hold is over: the full concurrency
    captioner.gate.set()
    assert await draining == 4
    assert await vectors.count(PENDING) == 0
