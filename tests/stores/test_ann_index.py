"""The embedded store's ANN index upkeep (ingress.stores.lancedb.index), on a real
LanceDB directory: built only past its threshold, accurate, never in the way of writes,
and started by the factory with the serving stores."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from ingress.settings import IndexUpkeepArgs, StorageArgs
from ingress.stores.factory import open_stores
from ingress.stores.file_lock import FileLock
from ingress.stores.lancedb import LanceDBVectorStore
from ingress.stores.lancedb.index import IndexUpkeep, index_lock_path, upkeep_of
from ingress.stores.records import ImageRecord, IndexedImage

DIM = 32
MODEL = "test/clip-ann"


def _image(vector: np.ndarray, n: int) -> IndexedImage:
    record = ImageRecord(
        id=str(uuid.uuid4()),
        caption=f"picture number {n}",
        width=64,
        height=48,
        content_type="image/jpeg",
        size_bytes=1000 + n,
        sha256=f"{n:064x}",
        tags=[],
        created_at=datetime(2024, 1, 1, tzinfo=timezone.utc),
        caption_model="test/blip",
        embedding_model=MODEL,
    )
    return IndexedImage(record=record, vector=vector)


def _clustered(rng: np.random.Generator, n: int, clusters: int = 40) -> np.ndarray:
    """Well-separated groups of unit vectors, like embeddings of distinct subjects."""
    centres = rng.normal(size=(clusters, DIM))
    points = centres[rng.integers(0, clusters, n)] + rng.normal(scale=0.05, size=(n, DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


async def _fill(
    store: LanceDBVectorStore, vectors: np.ndarray, start: int = 0
) -> list[IndexedImage]:
    images = [_image(v, start + i) for i, v in enumerate(vectors)]
    for chunk in range(0, len(images), 200):
        await store.upsert(images[chunk : chunk + 200])
    return images


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LanceDBVectorStore]:
    opened = LanceDBVectorStore(tmp_path / "db", MODEL, DIM)
    await opened.ensure_schema()
    try:
        yield opened
    finally:
        await opened.close()


def _args(**overrides: object) -> IndexUpkeepArgs:
    return IndexUpkeepArgs.model_validate({"ann_min_rows": 300, **overrides})


async def test_index_only_past_the_threshold(store: LanceDBVectorStore) -> None:
    rng = np.random.default_rng(1)
    upkeep = IndexUpkeep(store, _args())
    await _fill(store, _clustered(rng, 299))
    assert await upkeep.run_once() == "idle"
    assert not (await store.index_lag()).vector_index

    await _fill(store, _clustered(rng, 1), start=299)
    assert await upkeep.run_once() == "built"
    lag = await store.index_lag()
    assert lag.vector_index and lag.rows == 300
    # Built once; the next rounds have nothing to do.
    assert await upkeep.run_once() == "idle"


async def test_indexed_search_finds_what_exact_search_finds(store: LanceDBVectorStore) -> None:
    rng = np.random.default_rng(2)
    vectors = _clustered(rng, 600)
    images = await _fill(store, vectors)
    queries = list(range(0, 600, 37))
    exact = {q: await store.search(vectors[q], limit=10) for q in queries}
    assert await IndexUpkeep(store, _args()).run_once() == "built"
    for q in queries:
        hits = await store.search(vectors[q], limit=10)
        assert hits[0].record.id == images[q].record.id == exact[q][0].record.id
        # Re-ranked on the full vectors: the scores are exact cosine similarities.
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        found = {hit.record.id for hit in hits}
        assert len(found & {hit.record.id for hit in exact[q]}) >= 9


async def test_writes_and_searches_go_on_while_the_index_builds(
    store: LanceDBVectorStore,
) -> None:
    rng = np.random.default_rng(3)
    await _fill(store, _clustered(rng, 400))
    upkeep = IndexUpkeep(store, _args())
    build = asyncio.create_task(upkeep.run_once())
    late = [_image(v, 1000 + i) for i, v in enumerate(_clustered(rng, 20))]
    for image in late:
        await store.upsert([image])
        hits = await store.search(image.vector, limit=1)
        assert hits[0].record.id == image.record.id
    assert await store.delete(late[0].record.id)
    assert await build == "built"
    assert await store.count() == 400 + len(late) - 1
    # Rows written during or after the build are found (flat) before any refresh.
    for image in late[1:]:
        hits = await store.search(image.vector, limit=1)
        assert hits[0].record.id == image.record.id
    assert await store.get(late[0].record.id) is None


async def test_new_rows_are_folded_into_the_index(store: LanceDBVectorStore) -> None:
    rng = np.random.default_rng(4)
    await _fill(store, _clustered(rng, 300))
    upkeep = IndexUpkeep(store, _args(refresh_rows=50))
    assert await upkeep.run_once() == "built"
    new = await _fill(store, _clustered(rng, 60), start=300)
    assert (await store.index_lag()).unindexed_rows >= 60
    hits = await store.search(new[7].vector, limit=1)
    assert hits[0].record.id == new[7].record.id

    assert await upkeep.run_once() == "optimized"
    lag = await store.index_lag()
    assert lag.unindexed_rows == 0 and lag.rows == 360
    hits = await store.search(new[7].vector, limit=1)
    assert hits[0].record.id == new[7].record.id


async def test_small_files_are_compacted_below_the_threshold(
    store: LanceDBVectorStore,
) -> None:
    rng = np.random.default_rng(5)
    images = [_image(v, i) for i, v in enumerate(_clustered(rng, 12))]
    for image in images:
        await store.upsert([image])
    upkeep = IndexUpkeep(store, _args(ann_min_rows=10_000, compact_fragments=10))
    assert (await store.index_lag()).small_fragments >= 10
    assert await upkeep.run_once() == "optimized"
    lag = await store.index_lag()
    assert lag.small_fragments < 10 and not lag.vector_index
    assert await store.count() == 12
    hits = await store.search(images[3].vector, limit=1)
    assert hits[0].record.id == images[3].record.id


async def test_only_one_process_works_at_a_time(store: LanceDBVectorStore) -> None:
    rng = np.random.default_rng(6)
    await _fill(store, _clustered(rng, 300))
    # What another replica holds while it builds.
    other = FileLock(index_lock_path(store))
    assert await asyncio.to_thread(other.acquire, False)
    try:
        assert await IndexUpkeep(store, _args()).run_once() == "busy"
        assert not (await store.index_lag()).vector_index
    finally:
        other.release()
    assert await IndexUpkeep(store, _args()).run_once() == "built"


async def _wait_for(condition: object, timeout_s: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_serving_stores_keep_their_index_in_the_background(tmp_path: Path) -> None:
    storage = StorageArgs.model_validate(
        {
            "data_dir": tmp_path,
            "vectors": {
                "kind": "lancedb",
                "index_upkeep": {"ann_min_rows": 300, "interval_s": 0.05},
            },
        }
    )
    vectors, blobs = await open_stores(storage, MODEL, DIM)
    assert isinstance(vectors, LanceDBVectorStore)
    upkeep = upkeep_of(vectors)
    assert upkeep is not None
    try:
        rng = np.random.default_rng(7)
        images = await _fill(vectors, _clustered(rng, 320))

        async def indexed() -> bool:
            return (await vectors.index_lag()).vector_index

        await _wait_for(indexed)
        hits = await vectors.search(images[5].vector, limit=1)
        assert hits[0].record.id == images[5].record.id
    finally:
        await upkeep.stop()
        await vectors.close()
        await blobs.close()
    assert upkeep_of(vectors) is None


async def test_upkeep_can_be_turned_off(tmp_path: Path) -> None:
    storage = StorageArgs.model_validate(
        {"data_dir": tmp_path, "vectors": {"kind": "lancedb", "index_upkeep": {"enabled": False}}}
    )
    vectors, blobs = await open_stores(storage, MODEL, DIM)
    try:
        assert upkeep_of(vectors) is None
    finally:
        await vectors.close()
        await blobs.close()


def test_upkeep_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="ann_min_rows"):
        IndexUpkeepArgs.model_validate({"ann_min_rows": 0})
    with pytest.raises(ValueError, match="interval"):
        StorageArgs.model_validate(
            {"vectors": {"kind": "lancedb", "index_upkeep": {"intervall_s": 5}}}
        )


async def test_writes_go_on_while_files_are_merged(store: LanceDBVectorStore) -> None:
    rng = np.random.default_rng(8)
    images = [_image(v, i) for i, v in enumerate(_clustered(rng, 40))]
    for image in images:
        await store.upsert([image])
    upkeep = IndexUpkeep(store, _args(ann_min_rows=10_000, compact_fragments=8))
    merge = asyncio.create_task(upkeep.run_once())
    late = [_image(v, 100 + i) for i, v in enumerate(_clustered(rng, 10))]
    for doomed, image in zip(images[:10], late, strict=True):
        assert await store.delete(doomed.record.id)
        await store.upsert([image])
        await store.upsert([image])  # an update of a row that may be being rewritten
    assert await merge == "optimized"
    assert await store.count() == 40
    for image in images[:10]:
        assert await store.get(image.record.id) is None
    for image in images[10:] + late:
        hits = await store.search(image.vector, limit=1)
        assert hits[0].record.id == image.record.id
