"""Storing prepared images: the blob first, the record last, and no half record.

One rule for every writer (ImageService.add for one upload, the bulk job for a batch):
a record is written only after its blob is, and when a record cannot be written its
blob is removed again, unless a concurrent writer of the same bytes has meanwhile
written a record that points at it (ids and blob keys are functions of the bytes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from ingress.stores.base import BlobStore, VectorStore
from ingress.stores.records import IndexedImage

logger = logging.getLogger("ingress.core.storing")

# Blob writes in flight at once for one batch.
_BLOB_CONCURRENCY = 16


@dataclass(frozen=True)
class PreparedImage:
    """A record with its vector, and the original bytes its blob holds."""

    image: IndexedImage
    data: bytes = field(repr=False)


async def drop_unreferenced_blob(
    vectors: VectorStore, blobs: BlobStore, image_id: str, key: str
) -> None:
    """Undo the blob of a failed ingest, unless a record with that id exists (written by
    a concurrent add of the same bytes): it points at this very blob."""
    try:
        if await vectors.get(image_id) is None:
            await blobs.delete(key)
    except Exception:
        logger.exception("could not remove blob %s of failed ingest %s", key, image_id)


async def store_batch(
    vectors: VectorStore, blobs: BlobStore, batch: Sequence[PreparedImage]
) -> list[str | None]:
    """Write the blobs of batch, then the records of those whose blob was written, in one
    upsert. For each item, in order: None when it is stored, else why not. A failed
    upsert fails every item whose blob was written, and removes those blobs again."""
    gate = asyncio.Semaphore(_BLOB_CONCURRENCY)

    async def put(item: PreparedImage) -> str | None:
        record = item.image.record
        async with gate:
            try:
                await blobs.put(record.blob_key, item.data, record.content_type)
            except Exception as e:
                return f"blob write failed: {type(e).__name__}: {e}"
        return None

    outcomes = list(await asyncio.gather(*(put(item) for item in batch)))
    written = [item for item, why in zip(batch, outcomes, strict=True) if why is None]
    if not written:
        return outcomes
    try:
        await vectors.upsert([item.image for item in written])
    except Exception as e:
        why = f"record write failed: {type(e).__name__}: {e}"
        for item in written:
            record = item.image.record
            await drop_unreferenced_blob(vectors, blobs, record.id, record.blob_key)
        return [why if outcome is None else outcome for outcome in outcomes]
    return outcomes
