"""Weaviate for the store contract suite: a real server at WEAVIATE_URL, or a skip.

No Weaviate server can run on the machines this project is developed on (no Docker, no
downloads), so the suite runs against one only when WEAVIATE_URL names it, e.g.
``WEAVIATE_URL=http://localhost:8080`` (gRPC on the same host, port 50051, or
WEAVIATE_GRPC_PORT). WEAVIATE_API_KEY is sent when set. Each test gets a collection of
its own, dropped after the test.
"""

from __future__ import annotations

import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import weaviate
from weaviate.classes.init import Auth

from ingress.stores.weaviate import WeaviateVectorStore

WEAVIATE_SKIP_REASON = (
    "WEAVIATE_URL is not set: no Weaviate server can run on these machines (no Docker, "
    "no download); set WEAVIATE_URL=http://host:8080 to run the contract suite against one"
)


def weaviate_url() -> str | None:
    return os.environ.get("WEAVIATE_URL") or None


@dataclass(frozen=True)
class WeaviateOpener:
    """Picklable (embedding_model, dim) -> store on one collection of one server."""

    url: str
    collection: str
    api_key: str | None = None
    grpc_port: int = 50051

    def __call__(self, embedding_model: str, dim: int) -> WeaviateVectorStore:
        return WeaviateVectorStore.from_url(
            self.url,
            embedding_model,
            dim,
            api_key=self.api_key,
            collection=self.collection,
            grpc_port=self.grpc_port,
        )

    def drop_collection(self) -> None:
        """Delete the test's collection (blocking: runs at fixture teardown)."""
        probe = self("unused", 1)
        client = weaviate.connect_to_custom(
            http_host=probe.http_host,
            http_port=probe.http_port,
            http_secure=probe.http_secure,
            grpc_host=probe.grpc_host,
            grpc_port=probe.grpc_port,
            grpc_secure=probe.grpc_secure,
            auth_credentials=Auth.api_key(self.api_key) if self.api_key else None,
        )
        try:
            client.collections.delete(self.collection)
        finally:
            client.close()


def weaviate_vector_backend(request: pytest.FixtureRequest, tmp_path: Path) -> WeaviateOpener:
    """The contract suite's factory: a fresh collection per test, dropped afterwards."""
    url = weaviate_url()
    if url is None:
        pytest.skip(WEAVIATE_SKIP_REASON)
    opener = WeaviateOpener(
        url=url,
        collection=f"ImageTest_{uuid.uuid4().hex}",
        api_key=os.environ.get("WEAVIATE_API_KEY") or None,
        grpc_port=int(os.environ.get("WEAVIATE_GRPC_PORT") or 50051),
    )

    def drop() -> None:
        try:
            opener.drop_collection()
        except Exception as e:  # a leftover test collection is not worth failing a test
            warnings.warn(f"could not drop {opener.collection}: {e}", stacklevel=1)

    request.addfinalizer(drop)
    return opener
