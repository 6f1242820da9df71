"""The image record: what the service knows about one stored image."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydantic import BaseModel, Field

# Fixed namespace so that the same bytes get the same id in every deployment.
IMAGE_ID_NAMESPACE = uuid.UUID("5b0c4a4e-7f0e-4f3e-9c55-2f1f8f0d6b1a")


def image_id_for(sha256_hex: str) -> str:
    """Deterministic id for an image: UUIDv5 of the hash of its original bytes."""
    return str(uuid.uuid5(IMAGE_ID_NAMESPACE, sha256_hex))


def blob_key_for(sha256_hex: str) -> str:
    """Content-addressed blob key; the two-character fan-out keeps directories small."""
    return f"{sha256_hex[:2]}/{sha256_hex}"


class ImageRecord(BaseModel):
    """Metadata of one indexed image, as stored beside its vector."""

    id: str
    caption: str
    width: int
    height: int
    content_type: str
    size_bytes: int
    sha256: str
    source_url: str | None = None
    tags: list[str] = Field(default_factory=list)
    created_at: datetime
    caption_model: str
    embedding_model: str

    @property
    def blob_key(self) -> str:
        return blob_key_for(self.sha256)


@dataclass(frozen=True)
class IndexedImage:
    """A record together with its embedding (float32, L2-normalised)."""

    record: ImageRecord
    vector: np.ndarray


@dataclass(frozen=True)
class SearchHit:
    record: ImageRecord
    # Cosine similarity: higher is better, 1.0 is identical direction.
    score: float


@dataclass(frozen=True)
class Page:
    records: list[ImageRecord]
    # Opaque; None when there is nothing after this page.
    next_cursor: str | None
