"""VectorStore on a Weaviate server (weaviate-client v4, async API).

Everything goes through ``WeaviateAsyncClient``: nothing blocks the event loop. The
collection holds self-provided vectors in an HNSW index with cosine distance (the
classic unnamed vector: it works with every client in the supported range and with every
server those clients accept). ``caption`` is the one BM25-searchable property; the other
record fields are filterable only, TEXT ones tokenised as ``field`` so that a filter
matches the whole value exactly.

Behaviours this module relies on (weaviate-client 4.9 to 4.x):

- The object id is the record id (already a UUID). A batch write of an existing id
  replaces the whole object, vector included, so upsert is a plain gRPC batch write
  (``data.insert_many``, in chunks); no delete-then-insert is needed.
- Listing with ``after`` uses Weaviate's cursor API, which walks objects in UUID byte
  order; for canonical (lowercase) UUID strings that is the same as ordering by id.
  The cursor API takes no filter, so a filtered listing asks for "admitted and
  ``_id`` > the cursor", sorted by ``_id``: the same order and cursors, no offsets.
- Filters (weaviate_filter) are applied by the server before the HNSW or BM25 search, so
  a filter never shortens a result that admitted objects could fill.
- ``source_domain`` came later: ensure_schema adds the property to a collection made
  before it, and the replica that adds it fills it in from source_url.
- Which embedding model and dimension filled the collection is written into its
  description at creation (Weaviate keeps no dimension of its own until the first
  vector), so that a replica of another model refuses it at ensure_schema.
- The client retries gRPC UNAVAILABLE with exponential backoff for about a minute before
  giving up. Each operation therefore runs under a deadline of its own (the configured
  timeout plus a margin); when that fires, a quick liveness probe decides whether the
  server is unreachable (StoreUnavailable) or only slow (StoreTimeout).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import contextlib
import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import httpx
import numpy as np
import weaviate
from weaviate.classes.config import (
    Configure,
    DataType,
    Property,
    Tokenization,
    VectorDistances,
)
from weaviate.classes.data import DataObject
from weaviate.classes.init import AdditionalConfig, Auth, Timeout
from weaviate.classes.query import Filter, MetadataQuery, Sort
from weaviate.collections import CollectionAsync
from weaviate.collections.classes.filters import _Filters
from weaviate.exceptions import (
    UnexpectedStatusCodeError,
    WeaviateClosedClientError,
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateInsertManyAllFailedError,
    WeaviateRetryError,
    WeaviateStartUpError,
    WeaviateTimeoutError,
)

from ingress.stores.base import (
    EmbeddingMismatch,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    checked_keyword_query,
    checked_query,
    checked_vectors,
)
from ingress.stores.records import (
    ImageFilter,
    ImageRecord,
    IndexedImage,
    Page,
    SearchHit,
    source_domain_of,
)

T = TypeVar("T")

# -- schema ---------------------------------------------------------------------------

# Marks the description this store writes; the JSON after it names model and dim.
_DESCRIPTION_PREFIX = "imagesearch:"
SCHEMA_VERSION = 1

# Weaviate collection names: a capital letter, then letters, digits, underscores.
_COLLECTION_NAME = re.compile(r"^[A-Z][_0-9A-Za-z]*$")

_TEXT_FIELDS = (
    "content_type",
    "sha256",
    "source_url",
    "caption_model",
    "embedding_model",
    "source_domain",
)
# Properties a collection made by an earlier version may lack; ensure_schema adds them.
_ADDED_LATER = ("source_domain",)
# Objects per page when filling source_domain into a collection made before it.
_BACKFILL_PAGE = 500
_INT_FIELDS = ("width", "height", "size_bytes")
_RECORD_PROPERTIES: tuple[str, ...] = tuple(
    name for name in ImageRecord.model_fields if name != "id"
)

# Records per gRPC batch request; keeps each message well under the default size limit.
_INSERT_CHUNK = 256
# Added to the client's own timeouts before our per-operation deadline fires.
_DEADLINE_MARGIN_S = 5.0
_LIVENESS_PROBE_S = 2.0

_CURSOR_PREFIX = "w1:"
# The first page asks for everything after the nil UUID, so that every page goes through
# the cursor API (UUID order, on every shard); the nil UUID itself is refused as an id.
_NIL_UUID = "00000000-0000-0000-0000-000000000000"


def image_properties() -> list[Property]:
    """The collection's properties: every ImageRecord field except ``id`` (the object id)."""
    properties = [
        Property(
            name="caption",
            data_type=DataType.TEXT,
            tokenization=Tokenization.WORD,
            index_searchable=True,
            index_filterable=True,
        ),
        *(
            Property(
                name=name,
                data_type=DataType.TEXT,
                tokenization=Tokenization.FIELD,
                index_searchable=False,
                index_filterable=True,
            )
            for name in _TEXT_FIELDS
        ),
        *(
            Property(name=name, data_type=DataType.INT, index_filterable=True)
            for name in _INT_FIELDS
        ),
        Property(
            name="tags",
            data_type=DataType.TEXT_ARRAY,
            tokenization=Tokenization.FIELD,
            index_searchable=False,
            index_filterable=True,
        ),
        Property(name="created_at", data_type=DataType.DATE, index_filterable=True),
    ]
    # Kept in record field order, which makes the schema easy to compare with the model.
    order = {name: i for i, name in enumerate(_RECORD_PROPERTIES)}
    return sorted(properties, key=lambda p: order[p.name])


def collection_config(embedding_model: str, dim: int) -> dict[str, Any]:
    """Keyword arguments for ``collections.create``, apart from the name."""
    return {
        "description": collection_description(embedding_model, dim),
        "properties": image_properties(),
        # The unnamed vector (vectorizer none, HNSW, cosine): every client and server in
        # the supported range takes it. Newer clients call these two arguments deprecated
        # in favour of named vectors, which 4.9 cannot create.
        "vectorizer_config": Configure.Vectorizer.none(),
        "vector_index_config": Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE),
    }


def collection_description(embedding_model: str, dim: int) -> str:
    payload = {"embedding_model": embedding_model, "dim": dim, "schema_version": SCHEMA_VERSION}
    return _DESCRIPTION_PREFIX + json.dumps(payload, sort_keys=True)


def parse_collection_description(description: str | None) -> tuple[str, int] | None:
    """(embedding_model, dim) from a description this store wrote; None for any other."""
    if not description or not description.startswith(_DESCRIPTION_PREFIX):
        return None
    try:
        payload = json.loads(description.removeprefix(_DESCRIPTION_PREFIX))
        model, dim = payload["embedding_model"], payload["dim"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(model, str) or not isinstance(dim, int) or isinstance(dim, bool):
        return None
    return model, dim


# -- records ------------------------------------------------------------------------


def _utc(dt: datetime) -> datetime:
    # Naive datetimes are taken as UTC; aware ones are converted, so every stored instant
    # reads back in one timezone.
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def canonical_uuid(value: str) -> str | None:
    """The id if it is a canonical (lowercase, hyphenated) UUID string, else None."""
    try:
        parsed = uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return None
    text = str(parsed)
    return text if text == value else None


def record_to_properties(record: ImageRecord) -> dict[str, Any]:
    """Weaviate properties for a record; ``id`` is the object id, not a property.

    A missing source_url (and so source_domain) is left out rather than sent as null.
    """
    props = record.model_dump(exclude={"id"})
    props["created_at"] = _utc(record.created_at)
    props["tags"] = builtins.list(record.tags)
    for name in ("source_url", "source_domain"):
        if props[name] is None:
            del props[name]
    return props


def properties_to_record(object_id: uuid.UUID | str, props: Mapping[str, Any]) -> ImageRecord:
    """The record for a Weaviate object; created_at comes back tz-aware in UTC."""
    created_at = props["created_at"]
    if isinstance(created_at, str):
        created_at = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    return ImageRecord(
        id=str(uuid.UUID(str(object_id))),
        caption=props["caption"],
        width=int(props["width"]),
        height=int(props["height"]),
        content_type=props["content_type"],
        size_bytes=int(props["size_bytes"]),
        sha256=props["sha256"],
        source_url=props.get("source_url"),
        tags=builtins.list(props.get("tags") or []),
        created_at=_utc(created_at),
        caption_model=props["caption_model"],
        embedding_model=props["embedding_model"],
        # Absent on objects written before the property existed and not yet backfilled;
        # the record then derives it from source_url.
        source_domain=props.get("source_domain"),
    )


def similarity_from_distance(distance: float) -> float:
    """Cosine similarity from Weaviate's cosine distance (1 - cos, in [0, 2])."""
    if not math.isfinite(distance):
        raise ValueError(f"not a finite distance: {distance!r}")
    return 1.0 - float(distance)


# -- filters --------------------------------------------------------------------------


def weaviate_filter(filters: ImageFilter | None, after_id: str | None = None) -> _Filters | None:
    """The Weaviate filter admitting what ``filters`` admits, and only ids after
    ``after_id`` when given (objects' ``_id`` compares as its canonical UUID text, the
    order list() pages in); None when nothing is excluded.

    Text values are matched whole: content_type, source_domain and tags are tokenised as
    ``field``, so ContainsAny/ContainsAll compare complete values, not words.
    """
    parts: builtins.list[_Filters] = []
    if after_id is not None:
        parts.append(Filter.by_property("_id").greater_than(after_id))
    if filters is not None:
        if filters.tags_any:
            parts.append(Filter.by_property("tags").contains_any(builtins.list(filters.tags_any)))
        if filters.tags_all:
            parts.append(Filter.by_property("tags").contains_all(builtins.list(filters.tags_all)))
        if filters.content_types:
            values = builtins.list(filters.content_types)
            parts.append(Filter.by_property("content_type").contains_any(values))
        if filters.min_width is not None:
            parts.append(Filter.by_property("width").greater_or_equal(_int64(filters.min_width)))
        if filters.min_height is not None:
            min_height = _int64(filters.min_height)
            parts.append(Filter.by_property("height").greater_or_equal(min_height))
        if filters.created_after is not None:
            after = _utc(filters.created_after)
            parts.append(Filter.by_property("created_at").greater_than(after))
        if filters.created_before is not None:
            before = _utc(filters.created_before)
            parts.append(Filter.by_property("created_at").less_than(before))
        if filters.source_domains:
            values = builtins.list(filters.source_domains)
            parts.append(Filter.by_property("source_domain").contains_any(values))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Filter.all_of(parts)


def _int64(value: int) -> int:
    # Weaviate's INT is 64-bit; a larger bound is clamped rather than refused.
    return max(-(2**63) + 1, min(int(value), 2**63 - 1))


# -- cursors --------------------------------------------------------------------------


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + last_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The id a cursor points after; ValueError for anything this store did not make."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise ValueError("malformed cursor") from e
    last_id = text.removeprefix(_CURSOR_PREFIX)
    # The round trip also rejects non-canonical encodings: one position, one cursor.
    if (
        not text.startswith(_CURSOR_PREFIX)
        or canonical_uuid(last_id) is None
        or encode_cursor(last_id) != cursor
    ):
        raise ValueError("malformed cursor")
    return last_id


# -- errors ---------------------------------------------------------------------------

_UNAVAILABLE_TYPES: tuple[type[BaseException], ...] = (
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateRetryError,  # only raised after gRPC UNAVAILABLE retries ran out
    WeaviateClosedClientError,
    httpx.ConnectError,
    httpx.NetworkError,
    ConnectionError,
)
_TIMEOUT_TYPES: tuple[type[BaseException], ...] = (
    WeaviateTimeoutError,
    httpx.TimeoutException,
    TimeoutError,
    asyncio.TimeoutError,
)


def _classify(exc: BaseException) -> type[StoreError] | None:
    if isinstance(exc, _TIMEOUT_TYPES):
        return StoreTimeout
    if isinstance(exc, WeaviateStartUpError):
        # Also raised for a server version the client does not support: not an outage.
        return StoreError if "not supported" in str(exc) else StoreUnavailable
    if isinstance(exc, _UNAVAILABLE_TYPES):
        return StoreUnavailable
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            return StoreUnavailable
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return StoreTimeout
    if isinstance(exc, UnexpectedStatusCodeError) and not isinstance(
        exc.__cause__ or exc.__context__, grpc.RpcError
    ):
        if exc.status_code == 503:
            return StoreUnavailable
        if exc.status_code == 504:
            return StoreTimeout
    return None


def map_weaviate_error(exc: BaseException, op: str = "request") -> StoreError:
    """The StoreError for a client failure: 503, 504 or 502 once it reaches the API.

    The client often wraps the transport error (an AioRpcError inside a
    WeaviateQueryError, an httpx error inside a WeaviateConnectionError), so the whole
    cause/context chain is searched; the outermost recognisable link decides.
    """
    if isinstance(exc, StoreError):
        return exc
    seen: set[int] = set()
    link: BaseException | None = exc
    kind: type[StoreError] = StoreError
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        found = _classify(link)
        if found is not None:
            kind = found
            break
        link = link.__cause__ or link.__context__
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    mapped = kind(f"weaviate {op} failed: {detail}")
    mapped.__cause__ = exc
    return mapped


# -- the store --------------------------------------------------------------------------


class WeaviateVectorStore:
    """Image records with their vectors in one Weaviate collection."""

    def __init__(
        self,
        embedding_model: str,
        dim: int,
        http_host: str,
        http_port: int = 8080,
        http_secure: bool = False,
        grpc_host: str | None = None,
        grpc_port: int = 50051,
        grpc_secure: bool = False,
        api_key: str | None = None,
        collection: str = "Image",
        init_timeout_s: float = 10,
        query_timeout_s: float = 30,
        insert_timeout_s: float = 60,
    ) -> None:
        if dim <= 0:
            raise ValueError("dim must be positive")
        if not _COLLECTION_NAME.match(collection):
            raise ValueError(
                f"collection {collection!r} is not a Weaviate collection name "
                "(a capital letter, then letters, digits or underscores)"
            )
        if min(init_timeout_s, query_timeout_s, insert_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")
        self.embedding_model = embedding_model
        self.dim = dim
        self.http_host = http_host
        self.http_port = http_port
        self.http_secure = http_secure
        self.grpc_host = grpc_host or http_host
        self.grpc_port = grpc_port
        self.grpc_secure = grpc_secure
        self.collection_name = collection
        self.init_timeout_s = init_timeout_s
        self.query_timeout_s = query_timeout_s
        self.insert_timeout_s = insert_timeout_s
        self._api_key = api_key
        self._client: weaviate.WeaviateAsyncClient | None = None
        self._collection: CollectionAsync | None = None
        # Coroutines of one process share the client; connect once.
        self._open_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, embedding_model: str, dim: int, **kw: Any) -> WeaviateVectorStore:
        """A store for ``http[s]://host[:port]``; gRPC on the same host unless kw says.

        Without a port, http means 8080 (Weaviate's default) and https 443. gRPC is
        secure when HTTP is, on port 50051 unless ``grpc_port`` is given.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL with a host: {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"a Weaviate URL has no path, query or fragment: {url!r}")
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 8080)
        kw.setdefault("grpc_secure", secure)
        return cls(
            embedding_model, dim, http_host=parts.hostname, http_port=port, http_secure=secure, **kw
        )

    @classmethod
    async def recorded_embedding(cls, url: str, **kw: Any) -> tuple[str, int]:
        """(embedding_model, dim) that an existing collection was created for, read from
        the description this store writes: what a tool that must not load the models
        needs to open the store. ``url`` and ``kw`` as for from_url. Creates nothing;
        StoreError naming the collection when it does not exist or was not created by
        this store."""
        # The probe's own model and dim are placeholders that nothing compares with.
        probe = cls.from_url(url, "", 1, **kw)
        try:
            return await probe._read_recorded_embedding()
        finally:
            await probe.close()

    async def _read_recorded_embedding(self) -> tuple[str, int]:
        async with self._open_lock:
            if self._client is None:
                self._client = self._new_client()
            client = self._client
        await self._call("connect", client.connect, self.init_timeout_s + self.query_timeout_s)
        name = self.collection_name
        if not await self._exists(client):
            raise StoreError(
                f"no collection {name!r} in weaviate at {self.http_host}:{self.http_port}"
            )
        _, made_for = await self._recorded_config(client)
        return made_for

    async def _recorded_config(
        self, client: weaviate.WeaviateAsyncClient
    ) -> tuple[Any, tuple[str, int]]:
        """The collection's config and the (model, dim) its description records; a
        StoreError for a collection this store did not create."""
        name = self.collection_name
        config = await self._call(
            "schema read", lambda: client.collections.get(name).config.get(), self.query_timeout_s
        )
        made_for = parse_collection_description(config.description)
        if made_for is None:
            raise StoreError(
                f"collection {name!r} was not created by this service (description "
                f"{config.description!r}); refusing to use it"
            )
        return config, made_for

    # -- connection and schema ----------------------------------------------------

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
                collection = await self._open_or_create(client)
            except BaseException:
                self._client = None
                await _close_quietly(client)
                raise
            self._collection = collection

    def _new_client(self) -> weaviate.WeaviateAsyncClient:
        return weaviate.use_async_with_custom(
            http_host=self.http_host,
            http_port=self.http_port,
            http_secure=self.http_secure,
            grpc_host=self.grpc_host,
            grpc_port=self.grpc_port,
            grpc_secure=self.grpc_secure,
            auth_credentials=Auth.api_key(self._api_key) if self._api_key else None,
            additional_config=AdditionalConfig(
                timeout=Timeout(
                    init=self.init_timeout_s,
                    query=self.query_timeout_s,
                    insert=self.insert_timeout_s,
                )
            ),
        )

    async def _open_or_create(self, client: weaviate.WeaviateAsyncClient) -> CollectionAsync:
        if not await self._exists(client):
            try:
                await self._call(
                    "create collection", lambda: self._create(client), self.insert_timeout_s
                )
            except StoreError:
                # Usually "already exists": another replica won the race, and verifying
                # its collection below is what matters. If it is not there, the create
                # error is the one to report.
                if not await self._exists(client):
                    raise
        missing = await self._verify(client)
        collection = client.collections.get(self.collection_name)
        if missing:
            await self._add_properties(client, collection, missing)
        return collection

    async def _exists(self, client: weaviate.WeaviateAsyncClient) -> bool:
        name = self.collection_name
        return bool(
            await self._call(
                "schema check", lambda: client.collections.exists(name), self.query_timeout_s
            )
        )

    async def _create(self, client: weaviate.WeaviateAsyncClient) -> None:
        await client.collections.create(
            self.collection_name, **collection_config(self.embedding_model, self.dim)
        )

    async def _verify(self, client: weaviate.WeaviateAsyncClient) -> builtins.list[str]:
        """Refuse a collection made for another model or dim, or not made by this store.
        Returns the properties that an earlier version's collection lacks and that
        ensure_schema adds."""
        name = self.collection_name
        config, (model, dim) = await self._recorded_config(client)
        if (model, dim) != (self.embedding_model, self.dim):
            raise EmbeddingMismatch(
                f"collection {name!r} holds vectors of model {model!r} dim {dim}, not "
                f"{self.embedding_model!r} dim {self.dim}"
            )
        distance = _distance_metric(config)
        if distance is not None and distance != VectorDistances.COSINE:
            raise StoreError(f"collection {name!r} uses {distance} distance, not cosine")
        present = {prop.name for prop in config.properties}
        missing = [p for p in _RECORD_PROPERTIES if p not in present]
        if any(p not in _ADDED_LATER for p in missing):
            raise StoreError(f"collection {name!r} lacks properties {missing}")
        return missing

    async def _add_properties(
        self,
        client: weaviate.WeaviateAsyncClient,
        collection: CollectionAsync,
        names: Sequence[str],
    ) -> None:
        """Add properties an earlier version's collection lacks. The replica that adds
        source_domain also fills it in from source_url on the objects already there."""
        by_name = {prop.name: prop for prop in image_properties()}
        for name in names:
            added = await self._add_property(client, collection, by_name[name])
            if added and name == "source_domain":
                await self._backfill_source_domain(collection)

    async def _add_property(
        self, client: weaviate.WeaviateAsyncClient, collection: CollectionAsync, prop: Property
    ) -> bool:
        """True when this call added it, False when another replica got there first."""
        try:
            await self._call(
                "add property", lambda: collection.config.add_property(prop), self.insert_timeout_s
            )
        except StoreError:
            # Usually "already exists": another replica added it (and fills it in). If it
            # is still missing, the add error is the one to report.
            config, _ = await self._recorded_config(client)
            if prop.name not in {p.name for p in config.properties}:
                raise
            return False
        return True

    async def _backfill_source_domain(self, collection: CollectionAsync) -> None:
        after = _NIL_UUID
        while True:
            page = await self._fetch_page(
                collection, after, _BACKFILL_PAGE, ["source_url", "source_domain"]
            )
            for obj in page:
                url = obj.properties.get("source_url")
                domain = source_domain_of(url) if isinstance(url, str) else None
                if domain is not None and obj.properties.get("source_domain") is None:
                    await self._patch(collection, str(obj.uuid), {"source_domain": domain})
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

    async def _call(self, op: str, start: Callable[[], Awaitable[T]], timeout_s: float) -> T:
        """Run one client call under a deadline, mapping every failure to a StoreError."""
        try:
            return await asyncio.wait_for(start(), timeout_s + _DEADLINE_MARGIN_S)
        except StoreError:
            raise
        except asyncio.TimeoutError as e:
            # Our deadline, not the client's: tell an outage from a slow server.
            if await self._is_live():
                raise StoreTimeout(f"weaviate {op} did not answer in {timeout_s:g} s") from e
            raise StoreUnavailable(f"weaviate {op} failed: server unreachable") from e
        except Exception as e:
            raise map_weaviate_error(e, op) from e

    async def _is_live(self) -> bool:
        client = self._client
        if client is None:
            return False
        try:
            return bool(await asyncio.wait_for(client.is_live(), _LIVENESS_PROBE_S))
        except Exception:
            return False

    # -- writes ------------------------------------------------------------------

    async def upsert(self, images: Sequence[IndexedImage]) -> None:
        if not images:
            return
        objects = self._to_objects(images)
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

    def _to_objects(self, images: Sequence[IndexedImage]) -> builtins.list[DataObject[Any, Any]]:
        """Validate all, then convert; refuses other models' records and wrong vectors."""
        vectors = checked_vectors(images, self.embedding_model, self.dim)
        objects: builtins.list[DataObject[Any, Any]] = []
        for image, vector in zip(images, vectors, strict=True):
            record = image.record
            if canonical_uuid(record.id) is None or record.id == _NIL_UUID:
                raise ValueError(f"record id {record.id!r} is not a canonical, non-nil UUID")
            objects.append(
                DataObject(
                    properties=record_to_properties(record),
                    uuid=record.id,
                    vector=vector.tolist(),
                )
            )
        return objects

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

    async def get(self, image_id: str) -> ImageRecord | None:
        object_id = canonical_uuid(image_id)
        if object_id is None:
            return None
        collection = await self._get_collection()
        obj = await self._call(
            "get",
            lambda: collection.query.fetch_object_by_id(
                object_id, return_properties=builtins.list(_RECORD_PROPERTIES)
            ),
            self.query_timeout_s,
        )
        return None if obj is None else properties_to_record(obj.uuid, obj.properties)

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
        return _object_vector(obj)

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
        after = decode_cursor(cursor) if cursor is not None else None
        collection = await self._get_collection()
        # One more than asked tells whether another page exists, so the last page comes
        # back with next_cursor None instead of leaving an empty page to fetch.
        if filters is None or filters.is_empty():
            objects = await self._fetch_page(
                collection, after or _NIL_UUID, limit + 1, _RECORD_PROPERTIES
            )
        else:
            objects = await self._fetch_filtered_page(collection, filters, after, limit + 1)
        records = [properties_to_record(o.uuid, o.properties) for o in objects[:limit]]
        next_cursor = encode_cursor(records[-1].id) if len(objects) > limit else None
        return Page(records=records, next_cursor=next_cursor)

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
                return_properties=builtins.list(_RECORD_PROPERTIES),
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
                return_properties=builtins.list(_RECORD_PROPERTIES),
            ),
            self.query_timeout_s,
        )
        hits: builtins.list[SearchHit] = []
        for obj in result.objects:
            distance = obj.metadata.distance
            if distance is None:
                raise StoreError("weaviate search returned an object without a distance")
            score = similarity_from_distance(distance)
            hits.append(
                SearchHit(
                    record=properties_to_record(obj.uuid, obj.properties),
                    score=score,
                    vector_score=score,
                    vector=_object_vector(obj),
                )
            )
        hits.sort(key=lambda hit: hit.score, reverse=True)
        return hits

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
                return_properties=builtins.list(_RECORD_PROPERTIES),
            ),
            self.query_timeout_s,
        )
        hits: builtins.list[SearchHit] = []
        for obj in result.objects:
            score = obj.metadata.score
            if score is None:
                raise StoreError("weaviate keyword search returned an object without a score")
            hits.append(
                SearchHit(
                    record=properties_to_record(obj.uuid, obj.properties),
                    score=float(score),
                    keyword_score=float(score),
                    vector=_object_vector(obj),
                )
            )
        hits.sort(key=lambda hit: hit.score, reverse=True)
        return hits

    # -- updates -----------------------------------------------------------------

    async def update_tags(self, image_id: str, tags: Sequence[str]) -> ImageRecord | None:
        return await self._update(image_id, {"tags": builtins.list(tags)})

    async def update_caption(
        self, image_id: str, caption: str, caption_model: str
    ) -> ImageRecord | None:
        return await self._update(image_id, {"caption": caption, "caption_model": caption_model})

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

    # -- lifecycle ---------------------------------------------------------------

    async def close(self) -> None:
        # Idempotent; a later call on this store connects again.
        async with self._open_lock:
            client, self._client, self._collection = self._client, None, None
            if client is not None:
                await _close_quietly(client)


def _object_vector(obj: Any) -> np.ndarray:
    return np.asarray(_default_vector(obj.vector), dtype=np.float32)


def _default_vector(vector: Any) -> Any:
    # v4 returns {"default": [...]} for the unnamed vector; older shapes were a bare list.
    if isinstance(vector, Mapping):
        if "default" in vector:
            return vector["default"]
        if len(vector) == 1:
            return next(iter(vector.values()))
        raise StoreError(f"object has several vectors ({sorted(vector)}), expected one")
    return vector


def _distance_metric(config: Any) -> VectorDistances | None:
    """The distance of the collection's vector index, wherever this client reports it."""
    index = getattr(config, "vector_index_config", None)
    if index is None:
        named = getattr(config, "vector_config", None) or {}
        default = named.get("default")
        index = getattr(default, "vector_index_config", None)
    return getattr(index, "distance_metric", None)


async def _close_quietly(client: weaviate.WeaviateAsyncClient) -> None:
    # Best effort: the client is being dropped anyway.
    with contextlib.suppress(Exception):
        await client.close()
