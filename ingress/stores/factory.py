"""Opens the stores that the configuration names. Backends for production are imported
only when chosen, so the embedded default needs none of their clients at start."""

from __future__ import annotations

import logging
import os
from typing import Any

from ingress.settings import LanceDBArgs, LocalBlobArgs, S3Args, StorageArgs, WeaviateArgs
from ingress.stores.base import BlobStore, VectorStore

logger = logging.getLogger("ingress.stores")


async def open_stores(
    storage: StorageArgs, embedding_model: str, dim: int
) -> tuple[VectorStore, BlobStore]:
    """The stores of a serving replica: as open_vector_store and open_blob_store, plus
    the embedded vector store's background index upkeep (tools that only read or clean
    up open the stores one by one and start none)."""
    vectors = await open_vector_store(storage, embedding_model, dim)
    try:
        blobs = await open_blob_store(storage)
    except BaseException:
        await vectors.close()
        raise
    if isinstance(storage.vectors, LanceDBArgs):
        from ingress.stores.lancedb import LanceDBVectorStore
        from ingress.stores.lancedb.index import start_index_upkeep

        assert isinstance(vectors, LanceDBVectorStore)
        # Runs for the life of the replica process; see ingress.stores.lancedb.index.
        start_index_upkeep(vectors, storage.vectors.index_upkeep)
    return vectors, blobs


async def open_vector_store(storage: StorageArgs, embedding_model: str, dim: int) -> VectorStore:
    config = storage.vectors
    store: VectorStore
    if isinstance(config, LanceDBArgs):
        from ingress.stores.lancedb import LanceDBVectorStore

        path = storage.lancedb_path(config)
        store = LanceDBVectorStore(path, embedding_model, dim, table_name=config.table)
        where = str(path)
    else:
        store = _weaviate(config, embedding_model, dim)
        where = f"{config.url} ({config.collection})"
    # Fails the replica at start when the collection was filled by another embedding model.
    await store.ensure_schema()
    logger.info("vectors: %s at %s", config.kind, where)
    return store


def weaviate_options(config: WeaviateArgs) -> dict[str, Any]:
    """Connection settings for WeaviateVectorStore.from_url, the API key from the
    environment variable the config names (read now, never at import)."""
    api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
    return {
        "grpc_host": config.grpc_host,
        "grpc_port": config.grpc_port,
        "grpc_secure": config.grpc_secure,
        "api_key": api_key or None,
        "collection": config.collection,
        "init_timeout_s": config.init_timeout_s,
        "query_timeout_s": config.query_timeout_s,
        "insert_timeout_s": config.insert_timeout_s,
    }


def _weaviate(config: WeaviateArgs, embedding_model: str, dim: int) -> VectorStore:
    from ingress.stores.weaviate import WeaviateVectorStore

    return WeaviateVectorStore.from_url(
        config.url, embedding_model, dim, **weaviate_options(config)
    )


async def open_blob_store(storage: StorageArgs) -> BlobStore:
    config = storage.blobs
    if isinstance(config, LocalBlobArgs):
        from ingress.stores.local_blobs import LocalBlobStore

        path = storage.blob_path(config)
        logger.info("blobs: local directory %s", path)
        return LocalBlobStore(path)
    return await _s3(config)


async def _s3(config: S3Args) -> BlobStore:
    from ingress.stores.s3_blobs import S3BlobStore

    store = S3BlobStore(
        bucket=config.bucket,
        prefix=config.prefix,
        region=config.region,
        endpoint_url=config.endpoint_url,
        create_bucket=config.create_bucket,
    )
    await store.ensure_bucket()
    logger.info(
        "blobs: s3://%s/%s via %s", config.bucket, config.prefix, config.endpoint_url or "AWS"
    )
    return store
