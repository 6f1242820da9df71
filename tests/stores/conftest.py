"""Backends for the store contract suite.

Each backend is a factory that returns an *opener*: a picklable callable that builds a
fresh store on the same underlying collection or directory. The suite calls it in the
test process and in spawned worker processes alike, so an opener must not close over
live objects (classes and functools.partial of plain values pickle fine).

To add a backend: write a factory below, register it in VECTOR_BACKENDS or
BLOB_BACKENDS, and add its name to the fixture params. A factory that needs a server
(moto's S3, a Weaviate at WEAVIATE_URL) gets it via request.getfixturevalue, or calls
pytest.skip with the reason when it cannot have one.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ingress.stores.base import BlobStore, VectorStore
from ingress.stores.lancedb import LanceDBVectorStore
from ingress.stores.local_blobs import LocalBlobStore
from tests.stores.s3_backend import (
    moto_s3_endpoint,  # noqa: F401  (a fixture, for pytest)
    s3_blobs_backend,
)
from tests.stores.weaviate_backend import WEAVIATE_SKIP_REASON, weaviate_vector_backend

MODEL = "test/clip-tiny"
DIM = 16

# (embedding_model, dim) -> a store; pickled into worker processes.
VectorStoreOpener = Callable[[str, int], VectorStore]
BlobStoreOpener = Callable[[], BlobStore]


def _lancedb(request: pytest.FixtureRequest, tmp_path: Path) -> VectorStoreOpener:
    return functools.partial(LanceDBVectorStore, tmp_path / "lancedb")


def _local_blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStoreOpener:
    return functools.partial(LocalBlobStore, tmp_path / "blobs")


VECTOR_BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], VectorStoreOpener]] = {
    "lancedb": _lancedb,
    "weaviate": weaviate_vector_backend,  # a server at WEAVIATE_URL, else skipped
}
BLOB_BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], BlobStoreOpener]] = {
    "local": _local_blobs,
    "s3": s3_blobs_backend,  # moto's S3 server, started for the session
}


@pytest.fixture
def embedding_spec() -> tuple[str, int]:
    """(embedding_model, dim) of the stores the fixtures open."""
    return MODEL, DIM


@pytest.fixture(
    params=[
        "lancedb",
        pytest.param(
            "weaviate",
            marks=pytest.mark.skipif(
                not os.environ.get("WEAVIATE_URL"), reason=WEAVIATE_SKIP_REASON
            ),
        ),
    ]
)
def vector_store_opener(request: pytest.FixtureRequest, tmp_path: Path) -> VectorStoreOpener:
    return VECTOR_BACKENDS[request.param](request, tmp_path)


@pytest.fixture
async def vector_store(vector_store_opener: VectorStoreOpener) -> AsyncIterator[VectorStore]:
    store = vector_store_opener(MODEL, DIM)
    await store.ensure_schema()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=["local", "s3"])
def blob_store_opener(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStoreOpener:
    return BLOB_BACKENDS[request.param](request, tmp_path)


@pytest.fixture
async def blob_store(blob_store_opener: BlobStoreOpener) -> AsyncIterator[BlobStore]:
    store = blob_store_opener()
    try:
        yield store
    finally:
        await store.close()
