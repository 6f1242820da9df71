"""The pipeline's stages, each a Ray Data batch function over rows (ingress.tools.bulk.rows):

- ``decode``: a CPU task. Reads the bytes, then decodes with the service's intake rules
  (ImageLimits: size, pixels, frames, formats, EXIF), which also hash them into the id.
- ``Lookup``: finishes the rows whose id is stored already, or was claimed by another
  source of this run (ingress.tools.bulk.claims), before any model sees them.
- ``Embed`` and ``Caption``: one model per actor, through the model classes' public
  batch API; a failing batch is retried item by item, so one bad image fails alone.
- ``Write``: blobs first, records last, per batch (ingress.core.storing), after asking
  the store once more which ids were written meanwhile (the service may be running).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ingress.core.errors import IntakeError
from ingress.core.imaging import ImageLimits, decode_image
from ingress.core.storing import PreparedImage, store_batch
from ingress.settings import StorageArgs
from ingress.stores.records import CaptionStatus, ImageRecord, IndexedImage, image_id_for
from ingress.tools.bulk.rows import (
    DUPLICATE,
    EXISTS,
    FAILED,
    INDEXED,
    finish,
    pending,
    pixels_of,
    rows_of,
    table_of,
)
from ingress.tools.bulk.sources import ReadSettings, read_rows
from ingress.tools.bulk.stage_stores import StageStores

CaptionMode = Literal["background", "inline", "none"]
NOT_CAPTIONED = "not captioned: indexed by imagesearch-bulk --captions none"
# Background records wait for the service's caption worker; "none" ones are failed, so
# that the worker leaves them alone until `reindex requeue` hands them to it.
_CAPTION_STATUS: dict[CaptionMode, CaptionStatus] = {
    "inline": "done",
    "background": "pending",
    "none": "failed",
}


def decode(table: pa.Table, read: ReadSettings, limits: ImageLimits) -> pa.Table:
    rows = rows_of(table)
    read_rows(pending(rows), read)
    for row in pending(rows):
        try:
            image = decode_image(row["data"], limits)
        except IntakeError as e:
            finish(row, FAILED, str(e))
            continue
        height, width = image.pixels.shape[:2]
        row.update(
            id=image_id_for(image.sha256),
            sha256=image.sha256,
            content_type=image.content_type,
            width=image.width,
            height=image.height,
            pixels=image.pixels.tobytes(),
            pixels_h=height,
            pixels_w=width,
        )
    return table_of(rows)


class Lookup:
    def __init__(self, storage: StorageArgs, claims: Any) -> None:
        self.stores = StageStores(storage)
        self.claims = claims

    def __call__(self, table: pa.Table) -> pa.Table:
        import ray

        rows = rows_of(table)
        todo = pending(rows)
        vectors = self.stores.existing_vectors() if todo else None
        if vectors is not None:
            there = self.stores.run(vectors.existing_ids([row["id"] for row in todo]))
            for row in todo:
                if row["id"] in there:
                    finish(row, EXISTS)
        todo = pending(rows)
        if todo:
            firsts = ray.get(self.claims.claim.remote([(r["id"], r["source"]) for r in todo]))
            for row, first in zip(todo, firsts, strict=True):
                if first is not None:
                    finish(row, DUPLICATE, f"the same bytes as {first}")
        return table_of(rows)


class Embed:
    def __init__(self, settings: Any, keep_pixels: bool) -> None:
        from deployments.embedder import ClipEmbedder

        self.model = ClipEmbedder(settings)
        self.keep_pixels = keep_pixels

    def __call__(self, table: pa.Table) -> pa.Table:
        from deployments.batching import run_isolated

        rows = rows_of(table)
        todo = pending(rows)
        outputs = run_isolated(self.model.embed_images, [pixels_of(row) for row in todo])
        for row, vector in zip(todo, outputs, strict=True):
            if isinstance(vector, Exception):
                finish(row, FAILED, f"embedding failed: {vector}")
                continue
            row["vector"] = np.asarray(vector, dtype=np.float32).tolist()
            if not self.keep_pixels:
                row["pixels"] = b""
        return table_of(rows)


class Caption:
    def __init__(self, settings: Any) -> None:
        from deployments.captioner import BlipCaptioner

        self.model = BlipCaptioner(settings)

    def __call__(self, table: pa.Table) -> pa.Table:
        from deployments.batching import run_isolated

        rows = rows_of(table)
        todo = pending(rows)
        outputs = run_isolated(self.model.caption_many, [pixels_of(row) for row in todo])
        for row, caption in zip(todo, outputs, strict=True):
            if isinstance(caption, Exception):
                finish(row, FAILED, f"captioning failed: {caption}")
            else:
                row["caption"] = caption
                row["pixels"] = b""
        return table_of(rows)


@dataclass(frozen=True)
class RecordSettings:
    """What every record of the run shares."""

    embedding_model: str
    caption_model: str
    captions: CaptionMode
    tags: tuple[str, ...] = ()


class Write:
    def __init__(self, storage: StorageArgs, settings: RecordSettings) -> None:
        self.stores = StageStores(storage)
        self.settings = settings

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = rows_of(table)
        todo = pending(rows)
        if todo:
            vectors, blobs = self.stores.writable(
                self.settings.embedding_model, len(todo[0]["vector"])
            )
            there = self.stores.run(vectors.existing_ids([row["id"] for row in todo]))
            for row in todo:
                if row["id"] in there:
                    finish(row, EXISTS)
            todo = pending(rows)
            batch = [
                PreparedImage(IndexedImage(self._record(r), _vector(r)), r["data"]) for r in todo
            ]
            outcomes = self.stores.run(store_batch(vectors, blobs, batch))
            for row, why in zip(todo, outcomes, strict=True):
                finish(row, INDEXED if why is None else FAILED, why or "")
        return table_of(rows)

    def _record(self, row: dict[str, Any]) -> ImageRecord:
        mode = self.settings.captions
        status = _CAPTION_STATUS[mode]
        return ImageRecord(
            id=row["id"],
            caption=row["caption"] if mode == "inline" else None,
            caption_status=status,
            caption_error=NOT_CAPTIONED if mode == "none" else None,
            width=row["width"],
            height=row["height"],
            content_type=row["content_type"],
            size_bytes=len(row["data"]),
            sha256=row["sha256"],
            source_url=row["location"] if row["kind"] == "url" else None,
            tags=list(self.settings.tags),
            created_at=datetime.now(timezone.utc),
            caption_model=self.settings.caption_model,
            embedding_model=self.settings.embedding_model,
        )


def _vector(row: dict[str, Any]) -> np.ndarray:
    return np.asarray(row["vector"], dtype=np.float32)
