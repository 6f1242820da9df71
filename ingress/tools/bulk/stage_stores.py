"""The stores as one pipeline actor holds them: opened once, on an event loop of the
actor's own, and used from Ray Data's synchronous batch calls."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from ingress.settings import StorageArgs
from ingress.stores.base import BlobStore, StoreError, VectorStore
from ingress.stores.factory import open_blob_store, open_vector_store
from ingress.tools.config import recorded_embedding

T = TypeVar("T")


class StageStores:
    def __init__(self, storage: StorageArgs) -> None:
        self.storage = storage
        self._loop = asyncio.new_event_loop()
        self._vectors: VectorStore | None = None
        self._blobs: BlobStore | None = None

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coroutine)

    def existing_vectors(self) -> VectorStore | None:
        """The vector store if its collection exists yet (None: nothing is stored, so
        nothing can be there already); opened at the first call that finds it."""
        if self._vectors is None:
            try:
                model, dim = self.run(recorded_embedding(self.storage))
            except StoreError:
                return None
            self._vectors = self.run(open_vector_store(self.storage, model, dim))
        return self._vectors

    def writable(self, embedding_model: str, dim: int) -> tuple[VectorStore, BlobStore]:
        """Both stores, the collection created for embedding_model and dim if missing
        (under the store's own creation lock, as replicas create it)."""
        if self._vectors is None:
            self._vectors = self.run(open_vector_store(self.storage, embedding_model, dim))
        if self._blobs is None:
            self._blobs = self.run(open_blob_store(self.storage))
        return self._vectors, self._blobs
