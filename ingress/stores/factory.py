"""Opens the stores that the configuration names."""

from __future__ import annotations

from ingress.settings import StorageArgs
from ingress.stores.base import BlobStore, VectorStore
from ingress.stores.lancedb_store import LanceDBVectorStore
from ingress.stores.local_blobs import LocalBlobStore


async def open_stores(
    storage: StorageArgs, embedding_model: str, dim: int
) -> tuple[VectorStore, BlobStore]:
    vectors = LanceDBVectorStore(
        storage.data_dir / "lancedb", embedding_model, dim, table_name=storage.table
    )
    # Fails the replica at start when the table was filled by another embedding model.
    await vectors.ensure_schema()
    blobs = LocalBlobStore(storage.data_dir / "blobs")
    return vectors, blobs
