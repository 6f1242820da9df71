"""The storage contract every backend implements."""

from __future__ import annotations

import builtins
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

import numpy as np

from ingress.stores.records import ImageFilter, ImageRecord, IndexedImage, Page, SearchHit


class StoreError(Exception):
    """A store failed in a way the caller cannot fix (maps to 502/503)."""


class StoreUnavailable(StoreError):
    """The store could not be reached (maps to 503)."""


class StoreTimeout(StoreError):
    """The store did not answer in time (maps to 504)."""


class EmbeddingMismatch(StoreError):
    """A vector of another model or dimension than the collection holds."""


class BlobNotFound(KeyError):
    """No blob under that key."""


@dataclass(frozen=True)
class Blob:
    data: bytes
    content_type: str


@dataclass(frozen=True)
class BlobStream:
    """A blob read piece by piece: its metadata up front, the bytes as they come.

    ``chunks`` is an async generator in every backend; iterate it to the end or call its
    ``aclose()`` to release the open file or connection early. Errors while reading
    (a connection lost halfway) surface from the iteration as StoreError.
    """

    content_type: str
    size: int
    chunks: AsyncIterator[bytes]


def checked_vectors(
    images: Sequence[IndexedImage], embedding_model: str, dim: int
) -> builtins.list[np.ndarray]:
    """The rule every vector store applies before writing: one model and one dimension
    per collection, finite non-zero vectors, no id twice in one upsert (two rows with
    one id in one batch would both be inserted). Returns the vectors as float32."""
    ids: set[str] = set()
    vectors: builtins.list[np.ndarray] = []
    for image in images:
        record = image.record
        if record.embedding_model != embedding_model:
            raise EmbeddingMismatch(
                f"record {record.id} was embedded by {record.embedding_model!r}; "
                f"this store holds {embedding_model!r}"
            )
        vector = np.asarray(image.vector, dtype=np.float32)
        if vector.shape != (dim,):
            raise EmbeddingMismatch(
                f"record {record.id} has a vector of shape {vector.shape}, expected ({dim},)"
            )
        if not np.all(np.isfinite(vector)) or not np.any(vector):
            raise ValueError(f"record {record.id} has a zero or non-finite vector")
        if record.id in ids:
            raise ValueError(f"record {record.id} appears twice in one upsert")
        ids.add(record.id)
        vectors.append(vector)
    return vectors


def checked_query(vector: np.ndarray, limit: int, dim: int) -> np.ndarray:
    """The same rule for a search: a positive limit and a usable vector of the
    collection's dimension. Returns the vector as float32."""
    if limit <= 0:
        raise ValueError("limit must be positive")
    query = np.asarray(vector, dtype=np.float32)
    if query.shape != (dim,):
        raise EmbeddingMismatch(f"query vector has shape {query.shape}, expected ({dim},)")
    if not np.all(np.isfinite(query)) or not np.any(query):
        raise ValueError("query vector is zero or non-finite")
    return query


# A searchable term: a run of letters and digits (how both backends split captions).
_KEYWORD_TERM = re.compile(r"[^\W_]+")


def checked_keyword_query(text: str, limit: int) -> builtins.list[str]:
    """The rule every store applies before a keyword search: a positive limit; returns
    the terms to look for, lower-case, in order. A store answers a text without any
    with no hits rather than asking its backend, whose answer to an empty query differs
    between backends (nothing, everything, an error)."""
    if limit <= 0:
        raise ValueError("limit must be positive")
    return _KEYWORD_TERM.findall(text.lower())


@runtime_checkable
class VectorStore(Protocol):
    """Image records with their vectors.

    A store is bound to one embedding model and dimension; it refuses vectors of any
    other (EmbeddingMismatch), at ensure_schema for an existing collection and at upsert.
    """

    embedding_model: str
    dim: int

    async def ensure_schema(self) -> None:
        """Create the collection if missing; idempotent and safe to race from several processes."""

    async def upsert(self, images: Sequence[IndexedImage]) -> None:
        """Insert or replace by record id."""

    async def get(self, image_id: str) -> ImageRecord | None: ...

    async def get_vector(self, image_id: str) -> np.ndarray | None: ...

    async def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ids have a record: one query for the lot (the bulk job asks this of
        every batch before it embeds anything)."""

    async def delete(self, image_id: str) -> bool:
        """True when a record was removed, False when there was none."""

    async def list(
        self, limit: int, cursor: str | None = None, filters: ImageFilter | None = None
    ) -> Page:
        """Records ordered by id, only those the filter admits; pass next_cursor back
        (with the same filter) to get the following page."""

    async def count(self, filters: ImageFilter | None = None) -> int:
        """How many records the filter admits (all of them without one)."""

    # builtins.list: inside this class body `list` is the method above.
    async def search(
        self, vector: np.ndarray, limit: int, filters: ImageFilter | None = None
    ) -> builtins.list[SearchHit]:
        """The nearest records the filter admits, by cosine similarity, best first.

        Each hit has score = vector_score = the cosine similarity, and its vector.
        The filter is applied before the limit: a filter never shortens a result that
        more admitted records could have filled.
        """

    async def keyword_search(
        self, text: str, limit: int, filters: ImageFilter | None = None
    ) -> builtins.list[SearchHit]:
        """BM25 over captions: records whose caption contains at least one of the
        text's terms (case-insensitive), the filter applied first, best first.

        Each hit has score = keyword_score = the store's BM25 score (positive; larger is
        a better match; not comparable between backends), and its vector. Text with no
        searchable term finds nothing.
        """

    async def update_tags(self, image_id: str, tags: Sequence[str]) -> ImageRecord | None:
        """Replace a record's tags, leaving everything else as it is; the updated record,
        or None when there is no record with that id."""

    async def update_caption(
        self, image_id: str, caption: str, caption_model: str
    ) -> ImageRecord | None:
        """Replace a record's caption (and the model that wrote it) whatever its status,
        and mark it done; keyword search finds it by the new caption from then on. The
        updated record, or None."""

    # The caption backlog's three steps. Each is a partial update of the caption fields
    # only, applied only to a record that exists (and, for the first two, is still
    # pending): a record deleted meanwhile stays deleted, and a caption written
    # meanwhile is never overwritten.

    async def set_caption(
        self, image_id: str, caption: str, caption_model: str
    ) -> ImageRecord | None:
        """Write the caption of a pending record and mark it done; the updated record,
        or None when there is no pending record with that id."""

    async def fail_caption(self, image_id: str, reason: str) -> ImageRecord | None:
        """Mark a pending record failed with the reason; the updated record, or None."""

    async def requeue_caption(self, image_id: str) -> ImageRecord | None:
        """Mark a record pending again (re-captioning by the worker); its caption stays
        until the new one is written. The updated record, or None."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class BlobInfo:
    """One stored blob as a listing sees it."""

    # The key as put() took it (no backend prefix).
    key: str
    # When its bytes were last written; timezone-aware, UTC. A put of the same key
    # again moves it forward, so it tells a blob an ingest is writing right now from
    # one left behind long ago.
    modified_at: datetime


@runtime_checkable
class BlobStore(Protocol):
    """Original image bytes under content-addressed keys."""

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write atomically: a reader sees the whole blob or none."""

    async def get(self, key: str) -> Blob:
        """Raises BlobNotFound."""

    async def stream(self, key: str, chunk_size: int = 256 * 1024) -> BlobStream:
        """The blob as chunks of at most chunk_size bytes.

        Raises BlobNotFound from this call, before any chunk, so that a caller can
        answer 404 before it starts a response. Once it returns, the blob is pinned:
        a concurrent delete or put does not break or mix the stream.
        """

    async def delete(self, key: str) -> None:
        """Idempotent: deleting a missing key is not an error."""

    async def exists(self, key: str) -> bool: ...

    async def stat(self, key: str) -> BlobInfo | None:
        """The blob's BlobInfo, or None when there is no blob under key."""

    def list_blobs(self) -> AsyncIterator[BlobInfo]:
        """Every stored blob, each once, in no particular order (an async generator).

        Only keys that put() could have taken: a backend's own files (temp files,
        metadata) and foreign objects with invalid keys are left out. Blobs put or
        deleted while the listing runs may or may not appear. Failures surface from the
        iteration as StoreError.
        """

    async def close(self) -> None: ...


@runtime_checkable
class PresigningBlobStore(Protocol):
    """A blob store that can hand out time-limited direct download URLs (S3)."""

    def presigned_url(self, key: str, expires_s: int = 300) -> str: ...
