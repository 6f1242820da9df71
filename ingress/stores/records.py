"""The image record: what the service knows about one stored image."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

import numpy as np
from pydantic import BaseModel, Field, model_validator

# Fixed namespace so that the same bytes get the same id in every deployment.
IMAGE_ID_NAMESPACE = uuid.UUID("5b0c4a4e-7f0e-4f3e-9c55-2f1f8f0d6b1a")


def image_id_for(sha256_hex: str) -> str:
    """Deterministic id for an image: UUIDv5 of the hash of its original bytes."""
    return str(uuid.uuid5(IMAGE_ID_NAMESPACE, sha256_hex))


def blob_key_for(sha256_hex: str) -> str:
    """Content-addressed blob key; the two-character fan-out keeps directories small."""
    return f"{sha256_hex[:2]}/{sha256_hex}"


def source_domain_of(url: str | None) -> str | None:
    """The host a URL names, lower-case, without port or credentials; None when there is
    none. Filters compare it exactly: "example.com" does not match "www.example.com"."""
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    host = (host or "").rstrip(".").lower()
    return host or None


def backfilled_source_domain(source_url: object, source_domain: object) -> str | None:
    """The source_domain to write on a stored row made before the field existed: derived
    from its source_url as a new record's is. None when there is nothing to write: the
    row has one already, or its URL names no host."""
    if source_domain is not None or not isinstance(source_url, str):
        return None
    return source_domain_of(source_url)


# pending: indexed (findable by vector) with its caption still to come; done: the
# caption is written; failed: captioning gave up, caption_error says why.
CaptionStatus = Literal["pending", "done", "failed"]
CAPTION_STATUSES: tuple[CaptionStatus, ...] = ("pending", "done", "failed")


class ImageRecord(BaseModel):
    """Metadata of one indexed image, as stored beside its vector."""

    id: str
    # None until the caption is written (caption_status pending or failed).
    caption: str | None
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
    # Derived from source_url; stored beside it so that stores can filter on it.
    source_domain: str | None = None
    # Records written before background captioning had their caption: they read "done".
    caption_status: CaptionStatus = "done"
    caption_error: str | None = None

    @model_validator(mode="after")
    def _derive_source_domain(self) -> ImageRecord:
        if self.source_domain is None and self.source_url:
            self.source_domain = source_domain_of(self.source_url)
        return self

    @property
    def blob_key(self) -> str:
        return blob_key_for(self.sha256)


@dataclass(frozen=True)
class IndexedImage:
    """A record together with its embedding (float32, L2-normalised)."""

    record: ImageRecord
    vector: np.ndarray


@dataclass(frozen=True)
class ImageFilter:
    """Conditions a record must meet to be listed, counted or found. Every condition
    given must hold (AND); an empty filter admits every record.

    Bounds: ``min_width``/``min_height`` are inclusive, ``created_after`` and
    ``created_before`` exclusive. ``tags_any``: at least one of these tags;
    ``tags_all``: every one of them. ``content_types`` and ``source_domains``: one of
    these values, compared exactly (domains lower-case, see source_domain_of).
    """

    tags_any: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()
    content_types: tuple[str, ...] = ()
    min_width: int | None = None
    min_height: int | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    source_domains: tuple[str, ...] = ()
    caption_statuses: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return self == ImageFilter()

    def matches(self, record: ImageRecord) -> bool:
        """The reference meaning of the filter, which every store must agree with."""
        tags = set(record.tags)
        return (
            (not self.tags_any or bool(tags.intersection(self.tags_any)))
            and tags.issuperset(self.tags_all)
            and (not self.content_types or record.content_type in self.content_types)
            and (self.min_width is None or record.width >= self.min_width)
            and (self.min_height is None or record.height >= self.min_height)
            and (self.created_after is None or record.created_at > self.created_after)
            and (self.created_before is None or record.created_at < self.created_before)
            and (not self.source_domains or record.source_domain in self.source_domains)
            and (not self.caption_statuses or record.caption_status in self.caption_statuses)
        )


@dataclass(frozen=True)
class SearchHit:
    record: ImageRecord
    # What the result is ranked by. Vector search: the cosine similarity (higher is
    # better, 1.0 is identical direction). Keyword search: the store's BM25 score.
    # Hybrid search: the fused score (see ingress.core.ranking).
    score: float
    # The parts behind a hybrid score; a store's search() fills vector_score (= score)
    # and keyword_search() fills keyword_score (= score).
    vector_score: float | None = None
    keyword_score: float | None = None
    # The record's stored vector (float32), so that callers can compare hits with each
    # other (near-duplicate collapsing) without another read.
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)


# Which search produced hits: a vector (nearest neighbours) or a keyword (BM25) search.
SearchKind = Literal["vector", "keyword"]


def ranked_hits(
    kind: SearchKind, found: Iterable[tuple[ImageRecord, float, np.ndarray]]
) -> list[SearchHit]:
    """A store's search results, (record, score, stored vector) each, as hits best first.
    The score also fills the part that ``kind`` names (vector_score or keyword_score),
    which hybrid ranking reads."""
    hits = [
        SearchHit(
            record=record,
            score=score,
            vector_score=score if kind == "vector" else None,
            keyword_score=score if kind == "keyword" else None,
            vector=vector,
        )
        for record, score, vector in found
    ]
    # Backends return best first already; sorting makes "best first" independent of them.
    hits.sort(key=lambda hit: hit.score, reverse=True)
    return hits


@dataclass(frozen=True)
class Page:
    records: list[ImageRecord]
    # Opaque; None when there is nothing after this page.
    next_cursor: str | None
