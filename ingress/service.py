"""What the service does, independent of HTTP: ingest, look up, delete and search.

The ordering rules of the storage contract live here: the blob is written before the
record, the record is written last, and delete removes the record before the blob, so a
record never points at a missing blob.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

import numpy as np

from ingress.errors import ApiError
from ingress.imaging import DecodedImage, ImageLimits, decode_image
from ingress.records import (
    ImageRecord,
    IndexedImage,
    Page,
    SearchHit,
    blob_key_for,
    image_id_for,
)
from ingress.stores.base import BlobStore, VectorStore

logger = logging.getLogger("ingress.service")


class Models(Protocol):
    """The model deployments as the service sees them."""

    caption_model: str
    embedding_model: str

    async def caption(self, pixels: np.ndarray) -> str: ...

    async def embed_image(self, pixels: np.ndarray) -> np.ndarray: ...

    async def embed_text(self, text: str) -> np.ndarray: ...


@dataclass(frozen=True)
class Added:
    record: ImageRecord
    duplicate: bool


@dataclass(frozen=True)
class SearchOutcome:
    hits: list[SearchHit]
    took_ms: float


def not_found(image_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no image with id {image_id!r}")


class ImageService:
    def __init__(
        self, models: Models, vectors: VectorStore, blobs: BlobStore, limits: ImageLimits
    ) -> None:
        self.models = models
        self.vectors = vectors
        self.blobs = blobs
        self.limits = limits

    async def decode(self, data: bytes, declared_type: str | None = None) -> DecodedImage:
        # CPU-bound (and a bomb is refused before the expensive part): off the event loop.
        return await asyncio.to_thread(decode_image, data, self.limits, declared_type)

    async def add(
        self, image: DecodedImage, tags: list[str], source_url: str | None = None
    ) -> Added:
        image_id = image_id_for(image.sha256)
        existing = await self.vectors.get(image_id)
        if existing is not None:
            return Added(existing, duplicate=True)

        record_key = blob_key_for(image.sha256)
        caption, vector, stored = await asyncio.gather(
            self.models.caption(image.pixels),
            self.models.embed_image(image.pixels),
            self.blobs.put(record_key, image.data, image.content_type),
            return_exceptions=True,
        )
        failure = next((r for r in (caption, vector, stored) if isinstance(r, BaseException)), None)
        if failure is not None:
            if not isinstance(stored, BaseException):
                await self._drop_unreferenced_blob(image_id, record_key)
            raise failure
        assert isinstance(caption, str) and isinstance(vector, np.ndarray)

        record = ImageRecord(
            id=image_id,
            caption=caption,
            width=image.width,
            height=image.height,
            content_type=image.content_type,
            size_bytes=image.size_bytes,
            sha256=image.sha256,
            source_url=source_url,
            tags=tags,
            created_at=datetime.now(timezone.utc),
            caption_model=self.models.caption_model,
            embedding_model=self.models.embedding_model,
        )
        try:
            await self.vectors.upsert([IndexedImage(record, vector)])
        except BaseException:
            await self._drop_unreferenced_blob(image_id, record_key)
            raise
        logger.info("added %s (%dx%d, %s)", image_id, image.width, image.height, image.content_type)
        return Added(record, duplicate=False)

    async def _drop_unreferenced_blob(self, image_id: str, key: str) -> None:
        """Undo the blob of a failed ingest, unless a concurrent add of the same bytes
        has meanwhile written a record that points at it."""
        try:
            if await self.vectors.get(image_id) is None:
                await self.blobs.delete(key)
        except Exception:
            logger.exception("could not remove blob %s of failed ingest %s", key, image_id)

    async def get(self, image_id: str) -> ImageRecord:
        record = await self.vectors.get(image_id)
        if record is None:
            raise not_found(image_id)
        return record

    async def list(self, limit: int, cursor: str | None) -> tuple[Page, int]:
        try:
            page = await self.vectors.list(limit, cursor)
        except ValueError as exc:
            raise ApiError(400, "bad_cursor", str(exc)) from exc
        return page, await self.vectors.count()

    async def delete(self, image_id: str) -> None:
        record = await self.vectors.get(image_id)
        if record is None:
            raise not_found(image_id)
        # Record first: a failure between the two steps leaves an unreferenced blob,
        # never a record without its image.
        await self.vectors.delete(image_id)
        await self.blobs.delete(record.blob_key)
        logger.info("deleted %s", image_id)

    async def search_text(self, query: str, limit: int) -> SearchOutcome:
        started = time.perf_counter()
        vector = await self.models.embed_text(query)
        return await self._search(vector, limit, started)

    async def search_image(self, image: DecodedImage, limit: int) -> SearchOutcome:
        started = time.perf_counter()
        vector = await self.models.embed_image(image.pixels)
        return await self._search(vector, limit, started)

    async def _search(self, vector: np.ndarray, limit: int, started: float) -> SearchOutcome:
        hits = await self.vectors.search(vector, limit)
        return SearchOutcome(hits, took_ms=(time.perf_counter() - started) * 1000)

    async def describe(self, image: DecodedImage) -> tuple[str, np.ndarray]:
        """Caption and embedding without storing anything (the seed's /embed-image/)."""
        caption, vector = await asyncio.gather(
            self.models.caption(image.pixels), self.models.embed_image(image.pixels)
        )
        return caption, vector
