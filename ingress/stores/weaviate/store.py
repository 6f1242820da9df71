"""VectorStore on a Weaviate server (weaviate-client v4, async API).

Everything goes through ``WeaviateAsyncClient``: nothing blocks the event loop. The
collection holds self-provided vectors in an HNSW index with cosine distance (the
classic unnamed vector: it works with every client in the supported range and with every
server those clients accept); ingress.stores.weaviate.schema describes it, and
ingress.stores.weaviate.collection connects, creates and verifies it.

Behaviours this module relies on (weaviate-client 4.9 to 4.x):

- The object id is the record id (already a UUID). A batch write of an existing id
  replaces the whole object, vector included, so upsert is a plain gRPC batch write
  (``data.insert_many``, in chunks); no delete-then-insert is needed.
- Listing with ``after`` uses Weaviate's cursor API, which walks objects in UUID byte
  order; for canonical (lowercase) UUID strings that is the same as ordering by id.
  The cursor API takes no filter, so a filtered listing asks for "admitted and
  ``_id`` > the cursor", sorted by ``_id``: the same order and cursors, no offsets.
- Filters (ingress.stores.weaviate.filters) are applied by the server before the HNSW or
  BM25 search, so a filter never shortens a result that admitted objects could fill.
- ``source_domain`` came later: ensure_schema adds the property to a collection made
  before it, and the replica that adds it fills it in from source_url.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

import numpy as np
import weaviate
from weaviate.classes.data import DataObject
from weaviate.classes.query import Filter, MetadataQuery, Sort
from weaviate.collections import CollectionAsync
from weaviate.exceptions import UnexpectedStatusCodeError, WeaviateInsertManyAllFailedError

from ingress.stores.base import StoreError, checked_keyword_query, checked_query
from ingress.stores.records import (
    ImageFilter,
    ImageRecord,
    IndexedImage,
    Page,
    SearchHit,
    backfilled_source_domain,
    ranked_hits,
)
from ingress.stores.weaviate.collection import WeaviateCollection, close_quietly
from ingress.stores.weaviate.filters import weaviate_filter
from ingress.stores.weaviate.mapping import (
    CURSORS,
    NIL_UUID,
    canonical_uuid,
    object_record,
    object_vector,
    similarity_from_distance,
    to_objects,
)
from ingress.stores.weaviate.schema import RECORD_PROPERTIES, image_properties

# Objects per page when filling source_domain into a collection made before it.
_BACKFILL_PAGE = 500
# Records per gRPC batch request; keeps each message well under the default size limit.
_INSERT_CHUNK = 256


class WeaviateVectorStore(WeaviateCollection):
    """Image records with their vectors in one Weaviate collection."""

    # -- schema ------------------------------------------------------------------

    async def ensure_schema(self) -> None:
        async with self._open_lock:
            if self._collection is not None:
                return
            if self._client is None:
                self._client = self._new_client()
            client = self._client
            try:
                # Connecting reads /v1/meta (a query) besides the init checks.
                await self._call(
                    "connect", client.connect, self.init_timeout_s + self.query_timeout_s
                )
                collection, missing = await self._open_or_create(client)
                if missing:
                    await self._add_properties(client, collection, missing)
            except BaseException:
                self._client = None
                await close_quietly(client)
                raise
            self._collection = collection

    async def _add_properties(
        self,
        client: weaviate.WeaviateAsyncClient,
        collection: CollectionAsync,
        names: Sequence[str],
    ) -> None:
        """Add properties an earlier version's collection lacks. The replica that adds
        source_domain or caption_status also fills them in on the objects already there:
        source_domain from source_url, caption_status "done" (they were captioned), so
        that filters on either find the old objects too."""
        by_name = {prop.name: prop for prop in image_properties()}
        added = [
            name for name in names if await self._add_property(client, collection, by_name[name])
        ]
        if {"source_domain", "caption_status"} & set(added):
            await self._backfill(collection)

    async def _backfill(self, collection: CollectionAsync) -> None:
        # The collection keeps no null-state index, so "the property is absent" cannot
        # be a filter: every object is visited, a page at a time, in cursor API order.
        after = NIL_UUID
        while True:
            page = await self._fetch_page(
                collection,
                after,
                _BACKFILL_PAGE,
                ["source_url", "source_domain", "caption_status"],
            )
            for obj in page:
                props = obj.properties
                patch: dict[str, Any] = {}
                domain = backfilled_source_domain(
                    props.get("source_url"), props.get("source_domain")
                )
                if domain is not None:
                    patch["source_domain"] = domain
                if not props.get("caption_status"):
                    patch["caption_status"] = "done"
                if patch:
                    await self._patch(collection, str(obj.uuid), patch)
            if len(page) < _BACKFILL_PAGE:
                return
            after = str(page[-1].uuid)

    async def _fetch_page(
        self,
        collection: CollectionAsync,
        after: str,
        limit: int,
        properties: Sequence[str],
    ) -> builtins.list[Any]:
        """Up to ``limit`` objects after ``after`` in UUID order (the cursor API)."""
        result = await self._call(
            "list",
            lambda: collection.query.fetch_objects(
                limit=limit, after=after, return_properties=builtins.list(properties)
            ),
            self.query_timeout_s,
        )
        return builtins.list(result.objects)

    async def _patch(
        self, collection: CollectionAsync, object_id: str, properties: dict[str, Any]
    ) -> bool:
        """Set some properties of one object (a PATCH: the others and the vector stay);
        False when there is no such object."""
        try:
            await self._call(
                "update",
                lambda: collection.data.update(object_id, properties=properties),
                self.insert_timeout_s,
            )
        except StoreError as e:
            cause = e.__cause__
            if isinstance(cause, UnexpectedStatusCodeError) and cause.status_code == 404:
                return False
            raise
        return True

    async def _get_collection(self) -> CollectionAsync:
        if self._collection is None:
            await self.ensure_schema()
        assert self._collection is not None
        return self._collection

    # -- writes ------------------------------------------------------------------

    async def upsert(self, images: Sequence[IndexedImage]) -> None:
        if not images:
            return
        objects = to_objects(images, self.embedding_model, self.dim)
        collection = await self._get_collection()
        failed: dict[str, str] = {}
        for start in range(0, len(objects), _INSERT_CHUNK):
            chunk = objects[start : start + _INSERT_CHUNK]
            failed.update(await self._insert_chunk(collection, chunk))
        if failed:
            first = next(iter(failed.values()))
            raise StoreError(
                f"weaviate upsert failed for {len(failed)} of {len(objects)} records "
                f"({', '.join(sorted(failed))}): {first}"
            )

    async def _insert_chunk(
        self, collection: CollectionAsync, chunk: builtins.list[DataObject[Any, Any]]
    ) -> dict[str, str]:
        """Failed ids with their error messages; a batch write replaces existing ids."""
        try:
            result = await self._call(
                "upsert", lambda: collection.data.insert_many(chunk), self.insert_timeout_s
            )
        except StoreError as e:
            if isinstance(e.__cause__, WeaviateInsertManyAllFailedError):
                return {str(obj.uuid): str(e.__cause__) for obj in chunk}
            raise
        return {str(chunk[i].uuid): error.message for i, error in result.errors.items()}

    async def delete(self, image_id: str) -> bool:
        object_id = canonical_uuid(image_id)
        if object_id is None:
            return False
        collection = await self._get_collection()
        return bool(
            await self._call(
                "delete", lambda: collection.data.delete_by_id(object_id), self.insert_timeout_s
            )
        )

    # -- reads -------------------------------------------------------------------

    async def existing_ids(self, ids: Sequence[str]) -> set[str]:
        # Only canonical UUID text can name an object (as in get); Weaviate answers in it.
        wanted = [i for i in dict.fromkeys(ids) if canonical_uuid(i) is not None]
        if not wanted:
            return set()
        collection = await self._get_collection()
        result = await self._call(
            "existing ids",
            lambda: collection.query.fetch_objects(
                filters=Filter.by_id().contains_any(wanted),
                limit=len(wanted),
                return_properties=[],
            ),
            self.query_timeout_s,
        )
        return {str(obj.uuid) for obj in result.objects}.intersection(wanted)

    async def get(self, image_id: str) -> ImageRecord | None:
        object_id = canonical_uuid(image_id)
        if object_id is None:
            return None
        collection = await self._get_collection()
        obj = await self._call(
            "get",
            lambda: collection.query.fetch_object_by_id(
                object_id, return_properties=builtins.list(RECORD_PROPERTIES)
            ),
            self.query_timeout_s,
        )
        return None if obj is None else object_record(obj)

    async def get_vector(self, image_id: str) -> np.ndarray | None:
        object_id = canonical_uuid(image_id)
        if object_id is None:
            return None
        collection = await self._get_collection()
        obj = await self._call(
            "get vector",
            lambda: collection.query.fetch_object_by_id(
                object_id, include_vector=True, return_properties=False
            ),
            self.query_timeout_s,
        )
        if obj is None:
            return None
        return object_vector(obj)

    async def count(self, filters: ImageFilter | None = None) -> int:
        collection = await self._get_collection()
        where = weaviate_filter(filters)
        result = await self._call(
            "count",
            lambda: collection.aggregate.over_all(total_count=True, filters=where),
            self.query_timeout_s,
        )
        return int(result.total_count or 0)

    async def list(
        self, limit: int, cursor: str | None = None, filters: ImageFilter | None = None
    ) -> Page:
        if limit <= 0:
            raise ValueError("limit must be positive")
        after = CURSORS.after(cursor)
        collection = await self._get_collection()
        # One more than asked: see CursorCodec.page.
        if filters is None or filters.is_empty():
            objects = await self._fetch_page(
                collection, after or NIL_UUID, limit + 1, RECORD_PROPERTIES
            )
        else:
            objects = await self._fetch_filtered_page(collection, filters, after, limit + 1)
        return CURSORS.page([object_record(o) for o in objects], limit)

    async def _fetch_filtered_page(
        self, collection: CollectionAsync, filters: ImageFilter, after: str | None, limit: int
    ) -> builtins.list[Any]:
        """The cursor API takes no filter, so a filtered page is "admitted and id after
        the cursor, sorted by id": the same order and cursors as the unfiltered one, and
        no offset that grows with the page number."""
        where = weaviate_filter(filters, after_id=after)
        result = await self._call(
            "list",
            lambda: collection.query.fetch_objects(
                limit=limit,
                filters=where,
                sort=Sort.by_property("_id"),
                return_properties=builtins.list(RECORD_PROPERTIES),
            ),
            self.query_timeout_s,
        )
        return builtins.list(result.objects)

    async def search(
        self, vector: np.ndarray, limit: int, filters: ImageFilter | None = None
    ) -> builtins.list[SearchHit]:
        query_vector = checked_query(vector, limit, self.dim)
        collection = await self._get_collection()
        where = weaviate_filter(filters)
        # Weaviate filters before the HNSW search: the nearest admitted objects.
        result = await self._call(
            "search",
            lambda: collection.query.near_vector(
                near_vector=query_vector.tolist(),
                limit=limit,
                filters=where,
                include_vector=True,
                return_metadata=MetadataQuery(distance=True),
                return_properties=builtins.list(RECORD_PROPERTIES),
            ),
            self.query_timeout_s,
        )
        found: builtins.list[tuple[ImageRecord, float, np.ndarray]] = []
        for obj in result.objects:
            distance = obj.metadata.distance
            if distance is None:
                raise StoreError("weaviate search returned an object without a distance")
            found.append(
                (object_record(obj), similarity_from_distance(distance), object_vector(obj))
            )
        return ranked_hits("vector", found)

    async def keyword_search(
        self, text: str, limit: int, filters: ImageFilter | None = None
    ) -> builtins.list[SearchHit]:
        terms = checked_keyword_query(text, limit)
        if not terms:
            return []
        collection = await self._get_collection()
        where = weaviate_filter(filters)
        # BM25 over the caption only (the one searchable property), any term (OR).
        result = await self._call(
            "keyword search",
            lambda: collection.query.bm25(
                query=" ".join(terms),
                query_properties=["caption"],
                limit=limit,
                filters=where,
                include_vector=True,
                return_metadata=MetadataQuery(score=True),
                return_properties=builtins.list(RECORD_PROPERTIES),
            ),
            self.query_timeout_s,
        )
        found: builtins.list[tuple[ImageRecord, float, np.ndarray]] = []
        for obj in result.objects:
            score = obj.metadata.score
            if score is None:
                raise StoreError("weaviate keyword search returned an object without a score")
            found.append((object_record(obj), float(score), object_vector(obj)))
        return ranked_hits("keyword", found)

    # -- updates -----------------------------------------------------------------

    async def update_tags(self, image_id: str, tags: Sequence[str]) -> ImageRecord | None:
        return await self._update(image_id, {"tags": builtins.list(tags)})

    async def update_caption(
        self, image_id: str, caption: str, caption_model: str
    ) -> ImageRecord | None:
        return await self._update(image_id, _captioned(caption, caption_model))

    async def set_caption(
        self, image_id: str, caption: str, caption_model: str
    ) -> ImageRecord | None:
        return await self._update_pending(image_id, _captioned(caption, caption_model))

    async def fail_caption(self, image_id: str, reason: str) -> ImageRecord | None:
        return await self._update_pending(
            image_id, {"caption_status": "failed", "caption_error": reason}
        )

    async def requeue_caption(self, image_id: str) -> ImageRecord | None:
        return await self._update(image_id, {"caption_status": "pending", "caption_error": ""})

    async def _update_pending(
        self, image_id: str, properties: dict[str, Any]
    ) -> ImageRecord | None:
        """A PATCH of a record that is still pending. Weaviate has no conditional write:
        the status is read, then patched, and a PATCH of an object deleted in between
        answers 404 rather than creating it. What is left is a writer that captions the
        same record between the read and the PATCH; one caption worker runs at a time,
        and both would write a caption of the same image."""
        record = await self.get(image_id)
        if record is None or record.caption_status != "pending":
            return None
        return await self._update(image_id, properties)

    async def _update(self, image_id: str, properties: dict[str, Any]) -> ImageRecord | None:
        object_id = canonical_uuid(image_id)
        if object_id is None:
            return None
        collection = await self._get_collection()
        if not await self._patch(collection, object_id, properties):
            return None
        # Read back rather than patched locally: another replica may have changed the
        # object's other properties meanwhile. None when it was deleted in between.
        return await self.get(object_id)


def _captioned(caption: str, caption_model: str) -> dict[str, Any]:
    # An empty caption_error clears it: PATCH merges, it cannot unset a property.
    return {
        "caption": caption,
        "caption_model": caption_model,
        "caption_status": "done",
        "caption_error": "",
    }
