"""The connection to one Weaviate collection: the async client, a deadline on every
call, and the collection's creation and verification (WeaviateCollection, the base of
WeaviateVectorStore).

The client retries gRPC UNAVAILABLE with exponential backoff for about a minute before
giving up. Each call therefore runs under a deadline of its own (the configured timeout
plus a margin); when that fires, a quick liveness probe decides whether the server is
unreachable (StoreUnavailable) or only slow (StoreTimeout).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import weaviate
from weaviate.classes.config import Property, VectorDistances
from weaviate.classes.init import AdditionalConfig, Auth, Timeout
from weaviate.collections import CollectionAsync

from ingress.stores.base import StoreError, StoreTimeout, StoreUnavailable
from ingress.stores.recorded_embedding import not_created_here, refuse_other_embedding
from ingress.stores.weaviate.errors import map_weaviate_error
from ingress.stores.weaviate.schema import (
    ADDED_LATER,
    COLLECTION_NAME,
    RECORD_PROPERTIES,
    collection_config,
    distance_metric,
    parse_collection_description,
)

T = TypeVar("T")
C = TypeVar("C", bound="WeaviateCollection")

# Added to the client's own timeouts before our per-call deadline fires.
_DEADLINE_MARGIN_S = 5.0
_LIVENESS_PROBE_S = 2.0


class WeaviateCollection:
    """A client of one Weaviate server, for one collection made by this service."""

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
        if not COLLECTION_NAME.match(collection):
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
    def from_url(cls: type[C], url: str, embedding_model: str, dim: int, **kw: Any) -> C:
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
            raise not_created_here(f"collection {name!r}", f"description {config.description!r}")
        return config, made_for

    # -- connection and schema ----------------------------------------------------

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

    async def _open_or_create(
        self, client: weaviate.WeaviateAsyncClient
    ) -> tuple[CollectionAsync, list[str]]:
        """The collection, created if missing and verified, with the properties that an
        earlier version's collection lacks (for the caller to add)."""
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
        return client.collections.get(self.collection_name), missing

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

    async def _verify(self, client: weaviate.WeaviateAsyncClient) -> list[str]:
        """Refuse a collection made for another model or dim, or not made by this store.
        Returns the properties that an earlier version's collection lacks and that
        ensure_schema adds."""
        name = self.collection_name
        config, made_for = await self._recorded_config(client)
        refuse_other_embedding(f"collection {name!r}", made_for, self.embedding_model, self.dim)
        distance = distance_metric(config)
        if distance is not None and distance != VectorDistances.COSINE:
            raise StoreError(f"collection {name!r} uses {distance} distance, not cosine")
        present = {prop.name for prop in config.properties}
        missing = [p for p in RECORD_PROPERTIES if p not in present]
        if any(p not in ADDED_LATER for p in missing):
            raise StoreError(f"collection {name!r} lacks properties {missing}")
        return missing

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

    # -- lifecycle ---------------------------------------------------------------

    async def close(self) -> None:
        # Idempotent; a later call on this store connects again.
        async with self._open_lock:
            client, self._client, self._collection = self._client, None, None
            if client is not None:
                await close_quietly(client)


async def close_quietly(client: weaviate.WeaviateAsyncClient) -> None:
    # Best effort: the client is being dropped anyway.
    with contextlib.suppress(Exception):
        await client.close()
