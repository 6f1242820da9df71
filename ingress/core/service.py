"""What the service does, independent of HTTP: ingest, look up, delete and search.

The ordering rules of the storage contract live here: the blob is written before the
record, the record is written last, and delete removes the record before the blob, so a
record never points at a missing blob.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal, Protocol

import numpy as np

from ingress.core import queries, ranking
from ingress.core.errors import BadCursor, NotFound
from ingress.core.imaging import DecodedImage, ImageLimits, decode_image
from ingress.core.ranking import RankedHit
from ingress.core.storing import drop_unreferenced_blob
from ingress.settings import SearchArgs
from ingress.stores.base import BlobStore, VectorStore
from ingress.stores.records import (
    ImageFilter,
    ImageRecord,
    IndexedImage,
    Page,
    SearchHit,
    blob_key_for,
    image_id_for,
)

logger = logging.getLogger("ingress.core.service")


class Models(Protocol):
    """The model deployments as the service sees them."""

    caption_model: str
    embedding_model: str

    async def caption(self, pixels: np.ndarray) -> str: ...

    async def embed_image(self, pixels: np.ndarray) -> np.ndarray: ...

    async def embed_text(self, text: str) -> np.ndarray: ...


@dataclass(frozen=True)
class NearDuplicate:
    image_id: str
    score: float


@dataclass(frozen=True)
class Added:
    record: ImageRecord
    duplicate: bool
    # The most similar image indexed before this one, when it is nearly the same image.
    near_duplicate_of: NearDuplicate | None = None


@dataclass(frozen=True)
class SearchOptions:
    """What every search takes besides its query, already validated by the API."""

    limit: int
    offset: int = 0
    filters: ImageFilter | None = None
    min_score: float | None = None
    dedup: bool = False

    @property
    def depth(self) -> int:
        # One more than the page needs, to know whether another page follows.
        return self.offset + self.limit + 1


@dataclass(frozen=True)
class SearchOutcome:
    hits: list[RankedHit]
    took_ms: float
    offset: int = 0
    next_offset: int | None = None


# A store search for up to n candidates, best first.
_Fetch = Callable[[int], Awaitable[list[RankedHit]]]


async def _no_caption() -> None:
    return None


class ImageService:
    def __init__(
        self,
        models: Models,
        vectors: VectorStore,
        blobs: BlobStore,
        limits: ImageLimits,
        search: SearchArgs | None = None,
        query_side: int | None = None,
    ) -> None:
        self.models = models
        self.vectors = vectors
        self.blobs = blobs
        self.limits = limits
        # `query_side`: the embedder's input side (EmbedderInfo.input_side), if known.
        self.query_limits = limits.for_query(query_side)
        self.search = search or SearchArgs()

    async def decode(
        self, data: bytes, declared_type: str | None = None, *, for_query: bool = False
    ) -> DecodedImage:
        """`for_query`: an image only searched with, never stored, thumbnailed or
        captioned; decoded only as large as the embedder looks (ImageLimits.for_query)."""
        limits = self.query_limits if for_query else self.limits
        # CPU-bound (and a bomb is refused before the expensive part): off the event loop.
        return await asyncio.to_thread(decode_image, data, limits, declared_type)

    async def add(
        self,
        image: DecodedImage,
        tags: list[str],
        source_url: str | None = None,
        *,
        caption_now: bool = True,
    ) -> Added:
        """Store the image (blob first, record last). With `caption_now` the caption is
        made before the record is written; without, the record is written "pending"
        and the caption backlog (ingress.core.captioning) fills it in later."""
        image_id = image_id_for(image.sha256)
        existing = await self.vectors.get(image_id)
        if existing is not None:
            return Added(existing, duplicate=True)

        record_key = blob_key_for(image.sha256)
        caption, vector, stored = await asyncio.gather(
            self.models.caption(image.pixels) if caption_now else _no_caption(),
            self.models.embed_image(image.pixels),
            self.blobs.put(record_key, image.data, image.content_type),
            return_exceptions=True,
        )
        failure = next((r for r in (caption, vector, stored) if isinstance(r, BaseException)), None)
        if failure is not None:
            if not isinstance(stored, BaseException):
                await self._drop_unreferenced_blob(image_id, record_key)
            raise failure
        assert (caption is None or isinstance(caption, str)) and isinstance(vector, np.ndarray)

        try:
            near = await self._nearest_other(image_id, vector)
        except BaseException:
            await self._drop_unreferenced_blob(image_id, record_key)
            raise
        record = ImageRecord(
            id=image_id,
            caption=caption,
            caption_status="done" if caption_now else "pending",
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
        return Added(record, duplicate=False, near_duplicate_of=near)

    async def _nearest_other(self, image_id: str, vector: np.ndarray) -> NearDuplicate | None:
        """The indexed image most similar to `vector`, when it is a near-duplicate.
        Two candidates: a concurrent add of the same bytes may already have written
        this very id."""
        if not self.search.report_near_duplicates:
            return None
        hits = await self.vectors.search(vector, 2)
        other = next((hit for hit in hits if hit.record.id != image_id), None)
        if other is None or other.score < self.search.near_duplicate_similarity:
            return None
        return NearDuplicate(other.record.id, other.score)

    async def _drop_unreferenced_blob(self, image_id: str, key: str) -> None:
        # The one rule of ingress.core.storing, shared with the bulk job's writer.
        await drop_unreferenced_blob(self.vectors, self.blobs, image_id, key)

    async def get(self, image_id: str) -> ImageRecord:
        record = await self.vectors.get(image_id)
        if record is None:
            raise NotFound(image_id)
        return record

    async def list(
        self, limit: int, cursor: str | None, filters: ImageFilter | None = None
    ) -> tuple[Page, int]:
        try:
            page = await self.vectors.list(limit, cursor, filters)
        except ValueError as exc:
            raise BadCursor(str(exc)) from exc
        return page, await self.vectors.count(filters)

    async def update_tags(self, image_id: str, tags: Sequence[str]) -> ImageRecord:
        record = await self.vectors.update_tags(image_id, tags)
        if record is None:
            raise NotFound(image_id)
        logger.info("tags of %s set to %s", image_id, list(tags))
        return record

    async def delete(self, image_id: str) -> None:
        record = await self.vectors.get(image_id)
        if record is None:
            raise NotFound(image_id)
        # Record first: a failure between the two steps leaves an unreferenced blob,
        # never a record without its image.
        await self.vectors.delete(image_id)
        await self.blobs.delete(record.blob_key)
        logger.info("deleted %s", image_id)

    async def search_text(
        self,
        query: str | Sequence[queries.Term],
        options: SearchOptions,
        mode: Literal["vector", "hybrid"] = "vector",
        alpha: float | None = None,
    ) -> SearchOutcome:
        """By words: one text, or weighted terms (ingress.core.queries). Hybrid mode
        looks for the positive terms' words only."""
        started = time.perf_counter()
        terms = queries.text_terms(query, self.search.max_query_chars)
        # Each distinct text once, concurrently: the embedder batches them.
        texts = list(dict.fromkeys(term.text for term in terms))
        embedded = dict(
            zip(texts, await asyncio.gather(*map(self.models.embed_text, texts)), strict=True)
        )
        vector = queries.weighted_sum(
            [embedded[term.text] for term in terms], [term.weight for term in terms]
        )
        if mode == "vector":
            return await self._vector_search(vector, options, started)
        return await self._hybrid_search(
            queries.keyword_text(terms),
            vector,
            options,
            self.search.default_alpha if alpha is None else alpha,
            started,
        )

    async def search_image(self, image: DecodedImage, options: SearchOptions) -> SearchOutcome:
        started = time.perf_counter()
        vector = await self.models.embed_image(image.pixels)
        return await self._vector_search(vector, options, started)

    async def search_similar(
        self, ids: str | Sequence[str], options: SearchOptions, negative_ids: Sequence[str] = ()
    ) -> SearchOutcome:
        """More like these (and less like `negative_ids`): the average of their stored
        vectors as the query (ingress.core.queries); none of them is among the results."""
        started = time.perf_counter()
        examples = queries.examples([ids] if isinstance(ids, str) else ids, negative_ids)
        found = await asyncio.gather(
            *map(self.vectors.get_vector, (*examples.positive, *examples.negative))
        )
        vectors = queries.stored_vectors((*examples.positive, *examples.negative), found)
        split = len(examples.positive)
        vector = queries.average_vector(vectors[:split], vectors[split:])
        excluded = examples.excluded

        async def fetch(n: int) -> list[RankedHit]:
            # More by as many as are left out: the examples are usually the first hits.
            hits = await self.vectors.search(vector, n + len(excluded), options.filters)
            return ranking.from_vector_hits([h for h in hits if h.record.id not in excluded][:n])

        return await self._rank(fetch, options, started, grows=True)

    async def _vector_search(
        self, vector: np.ndarray, options: SearchOptions, started: float
    ) -> SearchOutcome:

        async def fetch(n: int) -> list[RankedHit]:
            return ranking.from_vector_hits(await self.vectors.search(vector, n, options.filters))

        return await self._rank(fetch, options, started, grows=True)

    async def _hybrid_search(
        self,
        query: str,
        vector: np.ndarray,
        options: SearchOptions,
        alpha: float,
        started: float,
    ) -> SearchOutcome:

        async def none() -> list[SearchHit]:
            return []

        async def fetch(n: int) -> list[RankedHit]:
            # A part with no weight cannot change the order: it is not asked at all.
            vector_hits, keyword_hits = await asyncio.gather(
                self.vectors.search(vector, n, options.filters) if alpha > 0 else none(),
                self.vectors.keyword_search(query, n, options.filters) if alpha < 1 else none(),
            )
            return ranking.fuse(vector_hits, keyword_hits, alpha, vector)

        # The pool is fixed (not grown): min-max normalisation depends on it, and a page
        # must rank the same way as the page before it.
        return await self._rank(fetch, options, started, grows=False)

    def _pool(self, options: SearchOptions, grows: bool) -> int:
        """How many candidates to ask each store list for first."""
        config = self.search
        if grows and not options.dedup:
            # Plain vector order does not depend on the pool: fetch what the page needs.
            pool = options.depth
        else:
            pool = max(options.depth, config.candidate_pool)
        if options.dedup:
            pool *= config.dedup_overfetch
        return min(pool, max(config.max_candidates, options.depth))

    async def _rank(
        self, fetch: _Fetch, options: SearchOptions, started: float, *, grows: bool
    ) -> SearchOutcome:
        """Cut-off, dedup and the offset window over the candidates `fetch` returns.
        With `grows`, asks for more candidates while the page is short of results that
        more candidates could still fill."""
        config = self.search
        pool = self._pool(options, grows)
        while True:
            candidates = await fetch(pool)
            hits = ranking.above(candidates, options.min_score)
            if options.dedup:
                hits = ranking.collapse_near_duplicates(hits, config.near_duplicate_similarity)
            if not grows or len(hits) >= options.depth or pool >= config.max_candidates:
                break
            exhausted = len(candidates) < pool
            # Vector candidates come best first: once the last is under the cut-off, so
            # is every candidate after it.
            if exhausted or (
                options.min_score is not None and candidates[-1].score < options.min_score
            ):
                break
            pool = min(pool * 2, config.max_candidates)
        page, next_offset = ranking.window(hits, options.offset, options.limit, config.max_depth)
        return SearchOutcome(
            page,
            took_ms=(time.perf_counter() - started) * 1000,
            offset=options.offset,
            next_offset=next_offset,
        )

    async def describe(self, image: DecodedImage) -> tuple[str, np.ndarray]:
        """Caption and embedding without storing anything (the seed's /embed-image/)."""
        caption, vector = await asyncio.gather(
            self.models.caption(image.pixels), self.models.embed_image(image.pixels)
        )
        return caption, vector
