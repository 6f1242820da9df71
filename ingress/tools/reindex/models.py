"""The models in-process, and the images they are given: each record's stored image,
decoded as ingest decodes it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ingress.core.errors import IntakeError
from ingress.core.imaging import ImageLimits, decode_image
from ingress.stores.base import BlobNotFound, BlobStore, StoreError
from ingress.stores.records import ImageRecord
from ingress.tools.reindex.state import Checkpoint, UsageError

if TYPE_CHECKING:
    from deployments.settings import CaptionerSettings, EmbedderSettings

Out = TypeVar("Out")

# Blobs read and decoded at once.
_BLOB_CONCURRENCY = 8


async def load_pixels(
    blobs: BlobStore, records: Sequence[ImageRecord], limits: ImageLimits, state: Checkpoint
) -> list[tuple[ImageRecord, np.ndarray]]:
    """The compact RGB copy of each record's stored image, decoded as ingest decodes it;
    the records whose image cannot be had are recorded as failures in state."""
    gate = asyncio.Semaphore(_BLOB_CONCURRENCY)

    async def one(record: ImageRecord) -> np.ndarray | str:
        async with gate:
            try:
                blob = await blobs.get(record.blob_key)
            except BlobNotFound:
                return f"blob {record.blob_key} is missing"
            except StoreError as e:
                return f"blob store failed: {e}"
            try:
                image = await asyncio.to_thread(decode_image, blob.data, limits, blob.content_type)
            except IntakeError as e:
                return f"stored image cannot be decoded: {e}"
        if image.sha256 != record.sha256:
            return f"blob {record.blob_key} does not hold the bytes the record was made from"
        return image.pixels

    outcomes = await asyncio.gather(*(one(record) for record in records))
    loaded: list[tuple[ImageRecord, np.ndarray]] = []
    for record, outcome in zip(records, outcomes, strict=True):
        if isinstance(outcome, str):
            state.fail(record.id, outcome)
        else:
            loaded.append((record, outcome))
    return loaded


async def through_model(
    model: Callable[[list[np.ndarray]], Awaitable[Sequence[Out | Exception]]],
    what: str,
    blobs: BlobStore,
    records: Sequence[ImageRecord],
    limits: ImageLimits,
    state: Checkpoint,
) -> list[tuple[ImageRecord, Out]]:
    """Each record's stored image through model (a Captioner or an Embedder), in one
    batch: (record, output) for the records it worked for; the others are recorded as
    failures in state ("<what> failed: ..." when the model failed on it)."""
    loaded = await load_pixels(blobs, records, limits, state) if records else []
    if not loaded:
        return []
    outputs = await model([pixels for _, pixels in loaded])
    done: list[tuple[ImageRecord, Out]] = []
    for (record, _), output in zip(loaded, outputs, strict=True):
        if isinstance(output, Exception):
            state.fail(record.id, f"{what} failed: {output}")
        else:
            done.append((record, output))
    return done


class Captioner:
    """The configured captioner, loaded on first use (a run with nothing to re-caption
    loads no model)."""

    def __init__(self, settings: CaptionerSettings) -> None:
        self.settings = settings
        self.model_id = settings.model.model_id
        self._model: Any = None

    async def load(self) -> None:
        if self._model is None:
            from deployments.captioner import BlipCaptioner

            try:
                self._model = await asyncio.to_thread(BlipCaptioner, self.settings)
            except RuntimeError as e:
                # What load_pretrained raises for a model that cannot be loaded.
                raise UsageError(f"cannot load the captioner: {e}") from e

    async def __call__(self, images: list[np.ndarray]) -> list[str | Exception]:
        await self.load()
        return await _isolated(self._model.caption_many, images)


class Embedder:
    """The configured embedder; loaded up front, since the target needs its dimension."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.model_id: str = model.model_id
        self.dim: int = model.dim

    @classmethod
    async def load(cls, settings: EmbedderSettings) -> Embedder:
        from deployments.embedder import DualEncoderEmbedder

        try:
            return cls(await asyncio.to_thread(DualEncoderEmbedder, settings))
        except RuntimeError as e:
            raise UsageError(f"cannot load the embedder: {e}") from e

    async def __call__(self, images: list[np.ndarray]) -> list[np.ndarray | Exception]:
        return await _isolated(self._model.embed_images, images)


async def _isolated(
    batch_api: Callable[[list[np.ndarray]], Sequence[Out]], images: list[np.ndarray]
) -> list[Out | Exception]:
    """One call of a model's batch API (which runs on the model's own warmed thread, see
    deployments.batching.ModelThread), waited for off the event loop; run_isolated
    retries a failed batch item by item, so one bad image fails alone."""
    from deployments.batching import run_isolated

    return await asyncio.to_thread(run_isolated, batch_api, images)
