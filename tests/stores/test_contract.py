"""The store contract: every VectorStore and BlobStore backend passes these tests.

Backends come from the fixtures in conftest.py; nothing here names one, except the
LanceDB-only section at the end.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingress.stores.base import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    BlobStream,
    EmbeddingMismatch,
    VectorStore,
)
from ingress.stores.lancedb import LanceDBVectorStore
from ingress.stores.local_blobs import LocalBlobStore
from ingress.stores.records import ImageFilter, ImageRecord, IndexedImage, SearchHit, blob_key_for
from tests.stores.filter_cases import (
    ADMIT_ALL,
    ADMIT_NONE,
    FILTER_CASES,
    POPULATION_SIZE,
    created,
    population_fields,
)

VectorStoreOpener = Callable[[str, int], VectorStore]
BlobStoreOpener = Callable[[], BlobStore]

# Ids in the multi-process tests are derived, so that the parent knows what to expect.
_TEST_NAMESPACE = uuid.UUID("0e7d3f38-8a43-4c43-a0a4-2b0d1f6c9e55")
_WORKERS = 4
_PER_WORKER = 25
_SHARED = 5
_JOIN_TIMEOUT_S = 180


# -- record factories -------------------------------------------------------------


def unit_vector(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def make_record(embedding_model: str, image_id: str | None = None, **overrides: Any) -> ImageRecord:
    image_id = image_id or str(uuid.uuid4())
    sha = uuid.uuid5(_TEST_NAMESPACE, image_id).hex * 2  # 64 hex chars, like a sha256
    fields: dict[str, Any] = {
        "id": image_id,
        "caption": f"a photo of {image_id[:8]}",
        "width": 640,
        "height": 480,
        "content_type": "image/jpeg",
        "size_bytes": 12345,
        "sha256": sha,
        "source_url": None,
        "tags": [],
        "created_at": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc),
        "caption_model": "test/blip-tiny",
        "embedding_model": embedding_model,
    }
    fields.update(overrides)
    return ImageRecord(**fields)


def make_image(
    rng: np.random.Generator, store: VectorStore, image_id: str | None = None, **overrides: Any
) -> IndexedImage:
    return IndexedImage(
        record=make_record(store.embedding_model, image_id, **overrides),
        vector=unit_vector(rng, store.dim),
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


async def fill(store: VectorStore, rng: np.random.Generator, n: int) -> list[IndexedImage]:
    images = [make_image(rng, store) for _ in range(n)]
    await store.upsert(images)
    return images


# -- VectorStore ------------------------------------------------------------------


async def test_implements_protocol(vector_store: VectorStore) -> None:
    assert isinstance(vector_store, VectorStore)


async def test_ensure_schema_is_idempotent(
    vector_store: VectorStore,
    vector_store_opener: VectorStoreOpener,
    embedding_spec: tuple[str, int],
    rng: np.random.Generator,
) -> None:
    await vector_store.upsert([make_image(rng, vector_store)])
    await vector_store.ensure_schema()
    await vector_store.ensure_schema()
    # A second store on the same collection opens it rather than recreating it.
    other = vector_store_opener(*embedding_spec)
    try:
        await other.ensure_schema()
        assert await other.count() == 1
    finally:
        await other.close()
    assert await vector_store.count() == 1


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "source_url": "https://example.com/a%20b.jpg?x='1'",
            "tags": ["cat", "sofa", "ünïcode"],
            # Not UTC on purpose: the instant must survive, and come back tz-aware.
            "created_at": datetime(
                2023, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2))
            ),
            "caption": 'it\'s a "quoted" caption',
        },
    ],
    ids=["minimal", "every-field"],
)
async def test_upsert_then_get_round_trips_every_field(
    vector_store: VectorStore, rng: np.random.Generator, overrides: dict[str, Any]
) -> None:
    image = make_image(rng, vector_store, **overrides)
    await vector_store.upsert([image])

    got = await vector_store.get(image.record.id)
    assert got is not None
    assert got.model_dump() == image.record.model_dump()
    assert got.created_at.tzinfo is not None
    assert got.created_at == image.record.created_at

    vector = await vector_store.get_vector(image.record.id)
    assert vector is not None
    assert vector.dtype == np.float32
    np.testing.assert_allclose(vector, image.vector, rtol=0, atol=1e-7)


async def test_upsert_same_id_replaces(vector_store: VectorStore, rng: np.random.Generator) -> None:
    first = make_image(rng, vector_store, caption="first")
    await vector_store.upsert([first])
    second = make_image(rng, vector_store, image_id=first.record.id, caption="second")
    await vector_store.upsert([second])

    assert await vector_store.count() == 1
    got = await vector_store.get(first.record.id)
    assert got is not None and got.caption == "second"
    vector = await vector_store.get_vector(first.record.id)
    assert vector is not None
    np.testing.assert_allclose(vector, second.vector, atol=1e-7)


async def test_upsert_many_mixes_inserts_and_replacements(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    images = await fill(vector_store, rng, 5)
    replaced = make_image(rng, vector_store, image_id=images[0].record.id, caption="new")
    await vector_store.upsert([replaced, *(make_image(rng, vector_store) for _ in range(3))])
    assert await vector_store.count() == 8
    got = await vector_store.get(images[0].record.id)
    assert got is not None and got.caption == "new"


async def test_upsert_nothing_is_a_no_op(vector_store: VectorStore) -> None:
    await vector_store.upsert([])
    assert await vector_store.count() == 0


@pytest.mark.parametrize("image_id", [str(uuid.uuid4()), "x' OR '1'='1", "", '"; --'])
async def test_missing_ids(
    vector_store: VectorStore, rng: np.random.Generator, image_id: str
) -> None:
    # Hostile ids must match nothing rather than everything.
    await fill(vector_store, rng, 3)
    assert await vector_store.get(image_id) is None
    assert await vector_store.get_vector(image_id) is None
    assert await vector_store.delete(image_id) is False
    assert await vector_store.count() == 3


async def test_delete_true_then_false(vector_store: VectorStore, rng: np.random.Generator) -> None:
    images = await fill(vector_store, rng, 3)
    target = images[1].record.id
    assert await vector_store.delete(target) is True
    assert await vector_store.get(target) is None
    assert await vector_store.count() == 2
    assert await vector_store.delete(target) is False
    assert {r.id for r in (await vector_store.list(10)).records} == {
        images[0].record.id,
        images[2].record.id,
    }


async def test_count(vector_store: VectorStore, rng: np.random.Generator) -> None:
    assert await vector_store.count() == 0
    await fill(vector_store, rng, 7)
    assert await vector_store.count() == 7


async def list_all(
    store: VectorStore, limit: int, filters: ImageFilter | None = None
) -> tuple[list[str], int]:
    """Every id (the filter admits), page by page, and the number of pages it took."""
    ids: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await store.list(limit, cursor, filters)
        pages += 1
        assert len(page.records) <= limit
        ids.extend(r.id for r in page.records)
        if page.next_cursor is None:
            return ids, pages
        assert page.records, "a page with a next_cursor must not be empty"
        cursor = page.next_cursor
        assert pages <= 100, "cursor does not advance"


@pytest.mark.parametrize("limit", [1, 4, 5, 20, 21, 100])
async def test_list_pages_through_everything_in_id_order(
    vector_store: VectorStore, rng: np.random.Generator, limit: int
) -> None:
    images = []
    # Several upserts, so that a backend storing them in pieces is exercised too.
    for _ in range(4):
        images += await fill(vector_store, rng, 5)
    expected = sorted(image.record.id for image in images)

    ids, pages = await list_all(vector_store, limit)

    assert ids == expected  # ordered, no duplicates, no gaps
    assert pages == max(1, -(-len(expected) // limit))  # no empty trailing page


async def test_list_returns_full_records(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    image = make_image(rng, vector_store, tags=["x"], source_url="https://e.x/1.png")
    await vector_store.upsert([image])
    page = await vector_store.list(10)
    assert [r.model_dump() for r in page.records] == [image.record.model_dump()]
    assert page.next_cursor is None


async def test_list_empty(vector_store: VectorStore) -> None:
    page = await vector_store.list(10)
    assert page.records == [] and page.next_cursor is None


@pytest.mark.parametrize("cursor", ["", "not a cursor", "%%%", "Zm9v", "AAAA", "djE6"])
async def test_list_rejects_malformed_cursor(
    vector_store: VectorStore, rng: np.random.Generator, cursor: str
) -> None:
    await fill(vector_store, rng, 3)
    with pytest.raises(ValueError):
        await vector_store.list(2, cursor)


async def test_list_rejects_non_positive_limit(vector_store: VectorStore) -> None:
    with pytest.raises(ValueError):
        await vector_store.list(0)


async def test_search_finds_the_exact_vector_first(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    images = await fill(vector_store, rng, 30)
    target = images[17]

    hits = await vector_store.search(target.vector, limit=5)

    assert len(hits) == 5
    assert hits[0].record.id == target.record.id
    assert hits[0].record.model_dump() == target.record.model_dump()
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("limit", [1, 3, 30, 100])
async def test_search_honours_limit(
    vector_store: VectorStore, rng: np.random.Generator, limit: int
) -> None:
    await fill(vector_store, rng, 30)
    hits = await vector_store.search(unit_vector(rng, vector_store.dim), limit=limit)
    assert len(hits) == min(limit, 30)
    assert len({hit.record.id for hit in hits}) == len(hits)


async def test_search_empty(vector_store: VectorStore, rng: np.random.Generator) -> None:
    assert await vector_store.search(unit_vector(rng, vector_store.dim), limit=5) == []


async def test_search_scores_are_cosine_similarities(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    images = await fill(vector_store, rng, 40)
    ids = np.array([image.record.id for image in images])
    matrix = np.stack([image.vector for image in images]).astype(np.float64)
    for _ in range(4):
        # Not unit length: a score that is a dot product rather than a cosine fails here.
        query = unit_vector(rng, vector_store.dim) * 3.5
        expected = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
        order = np.argsort(-expected)[:10]

        hits = await vector_store.search(query, limit=10)

        assert [hit.record.id for hit in hits] == list(ids[order])
        np.testing.assert_allclose([hit.score for hit in hits], expected[order], atol=1e-5)


async def test_upsert_refuses_wrong_dimension(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    good = make_image(rng, vector_store)
    bad = IndexedImage(record=make_record(vector_store.embedding_model), vector=np.ones(3))
    with pytest.raises(EmbeddingMismatch):
        await vector_store.upsert([good, bad])
    # All or nothing: the good record of a refused batch is not written either.
    assert await vector_store.count() == 0


async def test_upsert_refuses_another_models_record(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    image = IndexedImage(
        record=make_record("someone/else"), vector=unit_vector(rng, vector_store.dim)
    )
    with pytest.raises(EmbeddingMismatch):
        await vector_store.upsert([image])
    assert await vector_store.count() == 0


async def test_search_refuses_wrong_dimension(vector_store: VectorStore) -> None:
    with pytest.raises(EmbeddingMismatch):
        await vector_store.search(np.ones(vector_store.dim + 1, dtype=np.float32), limit=3)


@pytest.mark.parametrize("change", ["model", "dim"])
async def test_reopening_with_another_model_or_dim_is_refused(
    vector_store: VectorStore,
    vector_store_opener: VectorStoreOpener,
    embedding_spec: tuple[str, int],
    change: str,
) -> None:
    model, dim = embedding_spec
    other = vector_store_opener(*(("other/model", dim) if change == "model" else (model, dim * 2)))
    try:
        with pytest.raises(EmbeddingMismatch):
            await other.ensure_schema()
    finally:
        await other.close()
    # The refused store did not damage the collection.
    await vector_store.ensure_schema()
    assert await vector_store.count() == 0


# -- filters, keyword search, in-place updates ----------------------------------------


def _population(store: VectorStore, rng: np.random.Generator) -> list[IndexedImage]:
    return [make_image(rng, store, **population_fields(i)) for i in range(POPULATION_SIZE)]


async def test_filters_admit_exactly_what_the_reference_admits(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    """list, count, search and keyword_search agree with ImageFilter.matches, field by
    field and combined (one population for every case keeps the suite quick)."""
    images = _population(vector_store, rng)
    await vector_store.upsert(images)
    records = [image.record for image in images]
    query = unit_vector(rng, vector_store.dim)
    assert len(FILTER_CASES) == len({name for name, _ in FILTER_CASES})

    for name, f in FILTER_CASES:
        expected = sorted(r.id for r in records if f.matches(r))
        assert await vector_store.count(f) == len(expected), name

        ids, _ = await list_all(vector_store, 5, f)
        assert ids == expected, name  # in id order, paged with the filter

        hits = await vector_store.search(query, limit=len(records) + 5, filters=f)
        assert sorted(hit.record.id for hit in hits) == expected, name

        found = await vector_store.keyword_search("photo", limit=len(records) + 5, filters=f)
        assert sorted(hit.record.id for hit in found) == expected, name

    # The population really exercises every case: none admits all or nothing by accident,
    # apart from the cases meant to.
    counts = {name: sum(f.matches(r) for r in records) for name, f in FILTER_CASES}
    assert [n for n, c in counts.items() if c == 0] == ADMIT_NONE
    assert [n for n, c in counts.items() if c == len(records)] == ADMIT_ALL


async def test_filtered_list_pages_end_without_an_empty_page(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    images = _population(vector_store, rng)
    await vector_store.upsert(images)
    f = ImageFilter(tags_any=("cat",))
    expected = sorted(image.record.id for image in images if f.matches(image.record))
    assert len(expected) == 12
    for limit in (1, 4, 12, 13):
        ids, pages = await list_all(vector_store, limit, f)
        assert ids == expected
        assert pages == -(-len(expected) // limit)
    # A cursor from a filtered page, used with the same filter, continues after it.
    first = await vector_store.list(5, None, f)
    second = await vector_store.list(5, first.next_cursor, f)
    assert [r.id for r in first.records + second.records] == expected[:10]


async def test_filtered_search_fills_the_limit_from_admitted_records(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    # The 40 records nearest the query are not admitted; the 8 admitted ones are far.
    query = unit_vector(rng, vector_store.dim)
    near = [
        IndexedImage(
            record=make_record(vector_store.embedding_model, tags=["common"]),
            vector=_unit(query + 0.3 * unit_vector(rng, vector_store.dim)),
        )
        for _ in range(40)
    ]
    far = [
        IndexedImage(
            record=make_record(vector_store.embedding_model, tags=["rare"]),
            vector=_unit(-query + 0.5 * unit_vector(rng, vector_store.dim)),
        )
        for _ in range(8)
    ]
    await vector_store.upsert(near + far)
    f = ImageFilter(tags_any=("rare",))

    hits = await vector_store.search(query, limit=5, filters=f)

    cosine = {image.record.id: float(image.vector @ query) for image in far}
    best = sorted(cosine, key=cosine.__getitem__, reverse=True)[:5]
    assert [hit.record.id for hit in hits] == best
    np.testing.assert_allclose([hit.score for hit in hits], [cosine[i] for i in best], atol=1e-5)
    assert len(await vector_store.search(query, limit=20, filters=f)) == 8


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


async def test_search_hits_carry_their_vector_and_vector_score(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    images = await fill(vector_store, rng, 10)
    by_id = {image.record.id: image for image in images}
    hits = await vector_store.search(images[3].vector, limit=4)
    for hit in hits:
        assert hit.vector_score == hit.score and hit.keyword_score is None
        assert hit.vector is not None and hit.vector.dtype == np.float32
        np.testing.assert_allclose(hit.vector, by_id[hit.record.id].vector, atol=1e-7)


async def _captioned(
    store: VectorStore, rng: np.random.Generator, captions: Sequence[str], **overrides: Any
) -> list[IndexedImage]:
    images = [make_image(rng, store, caption=caption, **overrides) for caption in captions]
    await store.upsert(images)
    return images


def _ids(hits: Sequence[SearchHit]) -> list[str]:
    return [hit.record.id for hit in hits]


async def test_keyword_search_matches_terms_case_insensitively(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    red_car, blue_car, tree, boat = await _captioned(
        vector_store,
        rng,
        ["A RED Car parked outside", "a blue car in the rain", "a tall tree", "Boats, at sea"],
    )
    for text in ["red", "RED", "Red!", "  red  "]:
        assert _ids(await vector_store.keyword_search(text, 10)) == [red_car.record.id], text
    assert set(_ids(await vector_store.keyword_search("CAR", 10))) == {
        red_car.record.id,
        blue_car.record.id,
    }
    # Words, not substrings: "boat" is not "Boats", "ree" is not "tree".
    assert await vector_store.keyword_search("boat", 10) == []
    assert await vector_store.keyword_search("ree", 10) == []
    assert _ids(await vector_store.keyword_search("boats", 10)) == [boat.record.id]
    assert await vector_store.keyword_search("zebra", 10) == []
    assert tree.record.id in _ids(await vector_store.keyword_search("zebra OR tree", 10))


async def test_keyword_search_ranks_more_matching_terms_first(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    # Same length, so that only the number of matched terms tells them apart.
    both, one, other, _ = await _captioned(
        vector_store,
        rng,
        [
            "red car parked outside",
            "red bike parked outside",
            "green car parked inside",
            "blue boat moored nearby",
        ],
    )
    hits = await vector_store.keyword_search("red car", 10)
    assert _ids(hits)[0] == both.record.id
    assert set(_ids(hits)) == {both.record.id, one.record.id, other.record.id}
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > scores[1]
    assert _ids(await vector_store.keyword_search("red car", 1)) == [both.record.id]


async def test_keyword_hits_carry_score_and_vector(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    (image,) = await _captioned(vector_store, rng, ["a dog on a sofa"])
    (hit,) = await vector_store.keyword_search("sofa", 5)
    assert hit.record.model_dump() == image.record.model_dump()
    assert hit.score > 0 and hit.keyword_score == hit.score and hit.vector_score is None
    assert hit.vector is not None and hit.vector.dtype == np.float32
    np.testing.assert_allclose(hit.vector, image.vector, atol=1e-7)


@pytest.mark.parametrize("text", ["", "   ", "!!! ?", "___", "-- '' \"\""])
async def test_keyword_search_without_terms_finds_nothing(
    vector_store: VectorStore, rng: np.random.Generator, text: str
) -> None:
    await _captioned(vector_store, rng, ["a dog", "a cat"])
    assert await vector_store.keyword_search(text, 5) == []


async def test_keyword_search_text_is_never_query_syntax(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    (dog,) = await _captioned(vector_store, rng, ["a dog on a sofa"])
    await _captioned(vector_store, rng, ["a cat on a mat"])
    for text in ['"dog', "dog*", "caption:dog", "-dog", "dog AND NOT cat", "(dog", "dog'; --"]:
        assert dog.record.id in _ids(await vector_store.keyword_search(text, 5)), text


async def test_keyword_search_rejects_non_positive_limit(vector_store: VectorStore) -> None:
    with pytest.raises(ValueError):
        await vector_store.keyword_search("dog", 0)


async def test_keyword_search_applies_the_filter_before_the_limit(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    # Strong matches are not admitted; the admitted ones match weakly (longer captions).
    await _captioned(vector_store, rng, ["dog dog dog"] * 12, tags=["common"])
    weak = await _captioned(
        vector_store,
        rng,
        [f"a dog among many other words that dilute it, number {i}" for i in range(4)],
        tags=["rare"],
    )
    f = ImageFilter(tags_any=("rare",))
    hits = await vector_store.keyword_search("dog", 3, filters=f)
    assert len(hits) == 3
    assert set(_ids(hits)) <= {image.record.id for image in weak}
    assert set(_ids(await vector_store.keyword_search("dog", 10, filters=f))) == {
        image.record.id for image in weak
    }


async def test_update_tags_then_filter_by_the_new_tag(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    images = await fill(vector_store, rng, 5)
    target = images[2]
    before = await vector_store.get(target.record.id)
    assert before is not None

    updated = await vector_store.update_tags(target.record.id, ["fresh", "x'y"])

    assert updated is not None and updated.tags == ["fresh", "x'y"]
    # Nothing else changed, the vector included.
    assert updated.model_dump(exclude={"tags"}) == before.model_dump(exclude={"tags"})
    got = await vector_store.get(target.record.id)
    assert got is not None and got.model_dump() == updated.model_dump()
    vector = await vector_store.get_vector(target.record.id)
    assert vector is not None
    np.testing.assert_allclose(vector, target.vector, atol=1e-7)
    f = ImageFilter(tags_any=("fresh",))
    assert [r.id for r in (await vector_store.list(10, None, f)).records] == [target.record.id]
    assert await vector_store.count(f) == 1
    assert _ids(await vector_store.search(target.vector, 10, f)) == [target.record.id]
    assert await vector_store.count(ImageFilter(tags_all=("fresh", "x'y"))) == 1
    assert await vector_store.count() == 5

    cleared = await vector_store.update_tags(target.record.id, [])
    assert cleared is not None and cleared.tags == []
    assert await vector_store.count(f) == 0


async def test_update_caption_moves_keyword_search_to_the_new_caption(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    target, other = await _captioned(vector_store, rng, ["a zebra grazing", "a lion sleeping"])

    updated = await vector_store.update_caption(target.record.id, "a giraffe eating", "blip/v2")

    assert updated is not None
    assert (updated.caption, updated.caption_model) == ("a giraffe eating", "blip/v2")
    assert updated.model_dump(exclude={"caption", "caption_model"}) == target.record.model_dump(
        exclude={"caption", "caption_model"}
    )
    assert await vector_store.keyword_search("zebra", 5) == []
    (hit,) = await vector_store.keyword_search("giraffe", 5)
    assert hit.record.model_dump() == updated.model_dump()
    assert hit.vector is not None
    np.testing.assert_allclose(hit.vector, target.vector, atol=1e-7)
    assert _ids(await vector_store.keyword_search("lion", 5)) == [other.record.id]
    got = await vector_store.get(target.record.id)
    assert got is not None and got.caption == "a giraffe eating"


async def test_pending_records_round_trip_and_filter_by_caption_status(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    done = make_image(rng, vector_store)
    pending = make_image(rng, vector_store, caption=None, caption_status="pending")
    failed = make_image(
        rng, vector_store, caption=None, caption_status="failed", caption_error="no model"
    )
    await vector_store.upsert([done, pending, failed])
    for image in (done, pending, failed):
        got = await vector_store.get(image.record.id)
        assert got is not None and got.model_dump() == image.record.model_dump()
    for status, image in (("done", done), ("pending", pending), ("failed", failed)):
        f = ImageFilter(caption_statuses=(status,))
        assert await vector_store.count(f) == 1
        assert [r.id for r in (await vector_store.list(10, None, f)).records] == [image.record.id]
        assert _ids(await vector_store.search(image.vector, 3, f)) == [image.record.id]
    both = ImageFilter(caption_statuses=("pending", "failed"))
    assert await vector_store.count(both) == 2
    # A pending record has no caption for keyword search to find.
    assert await vector_store.keyword_search("photo", 10) != []
    assert pending.record.id not in _ids(await vector_store.keyword_search("photo", 10))


async def test_caption_updates_are_conditional_and_partial(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    pending = make_image(rng, vector_store, caption=None, caption_status="pending", tags=["keep"])
    other = make_image(rng, vector_store, caption=None, caption_status="pending")
    await vector_store.upsert([pending, other])
    image_id = pending.record.id

    written = await vector_store.set_caption(image_id, "a zebra at dawn", "blip/v2")
    assert written is not None
    assert (written.caption, written.caption_model, written.caption_status) == (
        "a zebra at dawn",
        "blip/v2",
        "done",
    )
    # Partial: nothing but the caption fields changed.
    unchanged = {"caption", "caption_model", "caption_status", "caption_error"}
    assert written.model_dump(exclude=unchanged) == pending.record.model_dump(exclude=unchanged)
    assert _ids(await vector_store.keyword_search("zebra", 5)) == [image_id]
    # Conditional: no longer pending, so neither a second caption nor a failure lands.
    assert await vector_store.set_caption(image_id, "a later caption", "other") is None
    assert await vector_store.fail_caption(image_id, "too late") is None
    got = await vector_store.get(image_id)
    assert got is not None and got.model_dump() == written.model_dump()

    failed = await vector_store.fail_caption(other.record.id, "RuntimeError: no model")
    assert failed is not None
    assert (failed.caption, failed.caption_status, failed.caption_error) == (
        None,
        "failed",
        "RuntimeError: no model",
    )
    # Requeued: pending again, the error cleared, then captioned.
    requeued = await vector_store.requeue_caption(other.record.id)
    assert requeued is not None
    assert (requeued.caption_status, requeued.caption_error) == ("pending", None)
    assert await vector_store.set_caption(other.record.id, "a lion", "blip/v2") is not None


async def test_caption_updates_never_resurrect_a_deleted_record(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    pending = make_image(rng, vector_store, caption=None, caption_status="pending")
    await vector_store.upsert([pending])
    assert await vector_store.delete(pending.record.id)
    assert await vector_store.set_caption(pending.record.id, "a ghost", "m") is None
    assert await vector_store.fail_caption(pending.record.id, "gone") is None
    assert await vector_store.requeue_caption(pending.record.id) is None
    assert await vector_store.get(pending.record.id) is None
    assert await vector_store.count() == 0


@pytest.mark.parametrize("image_id", [str(uuid.uuid4()), "x' OR '1'='1", "", '"; --'])
async def test_updates_of_unknown_ids_return_none(
    vector_store: VectorStore, rng: np.random.Generator, image_id: str
) -> None:
    images = await fill(vector_store, rng, 3)
    assert await vector_store.update_tags(image_id, ["x"]) is None
    assert await vector_store.update_caption(image_id, "new", "m") is None
    assert await vector_store.set_caption(image_id, "new", "m") is None
    assert await vector_store.fail_caption(image_id, "why") is None
    assert await vector_store.requeue_caption(image_id) is None
    # Nothing was created or changed.
    assert await vector_store.count() == 3
    assert await vector_store.count(ImageFilter(tags_any=("x",))) == 0
    for image in images:
        got = await vector_store.get(image.record.id)
        assert got is not None and got.model_dump() == image.record.model_dump()


@pytest.mark.parametrize(
    ("source_url", "domain"),
    [
        (None, None),
        ("https://User:pw@WWW.Example.COM:8443/x.jpg?q=1", "www.example.com"),
        ("https://example.com./a", "example.com"),
        ("http://[::1]:8080/a.png", "::1"),
    ],
)
async def test_source_domain_round_trips_and_filters(
    vector_store: VectorStore, rng: np.random.Generator, source_url: str | None, domain: str | None
) -> None:
    image = make_image(rng, vector_store, source_url=source_url)
    await vector_store.upsert([image, make_image(rng, vector_store, source_url="https://b.org/")])
    got = await vector_store.get(image.record.id)
    assert got is not None and got.source_domain == domain
    (listed,) = [r for r in (await vector_store.list(10)).records if r.id == image.record.id]
    assert listed.source_domain == domain
    if domain is not None:
        f = ImageFilter(source_domains=(domain,))
        assert [r.id for r in (await vector_store.list(10, None, f)).records] == [image.record.id]


# -- VectorStore from several processes ----------------------------------------------


def _worker_image(model: str, dim: int, name: str) -> IndexedImage:
    image_id = str(uuid.uuid5(_TEST_NAMESPACE, name))
    seed = uuid.UUID(image_id).int % 2**32
    vector = unit_vector(np.random.default_rng(seed), dim)
    return IndexedImage(record=make_record(model, image_id, caption=name), vector=vector)


def _vector_worker(opener: VectorStoreOpener, model: str, dim: int, n: int, barrier: Any) -> None:
    async def main() -> None:
        store = opener(model, dim)
        # Everyone creates the collection at the same moment.
        barrier.wait(timeout=60)
        await store.ensure_schema()
        # Straight on, while slower processes may still be creating the collection.
        for i in range(_PER_WORKER):
            await store.upsert([_worker_image(model, dim, f"w{n}-{i}")])
        for i in range(_SHARED):
            # The same new id from every process at the same moment: must not duplicate.
            barrier.wait(timeout=60)
            await store.upsert([_worker_image(model, dim, f"shared-{i}")])
        await store.close()

    asyncio.run(main())


def _run_workers(target: Callable[..., None], args: Sequence[Any]) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(_WORKERS)
    processes = [ctx.Process(target=target, args=(*args, n, barrier)) for n in range(_WORKERS)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(_JOIN_TIMEOUT_S)
    for p in processes:
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in processes] == [0] * _WORKERS


async def test_several_processes_create_and_upsert_at_once(
    vector_store_opener: VectorStoreOpener, embedding_spec: tuple[str, int]
) -> None:
    model, dim = embedding_spec
    await asyncio.to_thread(_run_workers, _vector_worker, (vector_store_opener, model, dim))

    names = [f"w{n}-{i}" for n in range(_WORKERS) for i in range(_PER_WORKER)]
    names += [f"shared-{i}" for i in range(_SHARED)]
    store = vector_store_opener(model, dim)
    try:
        await store.ensure_schema()
        assert await store.count() == _WORKERS * _PER_WORKER + _SHARED
        for name in names:
            expected = _worker_image(model, dim, name)
            got = await store.get(expected.record.id)
            assert got is not None and got.caption == name
        ids, _ = await list_all(store, 40)
        assert ids == sorted(_worker_image(model, dim, name).record.id for name in names)
    finally:
        await store.close()


# -- BlobStore ----------------------------------------------------------------------


async def test_blob_store_implements_protocol(blob_store: BlobStore) -> None:
    assert isinstance(blob_store, BlobStore)


@pytest.mark.parametrize("size", [0, 1, 300_000])
async def test_blob_round_trip(blob_store: BlobStore, size: int) -> None:
    data = os.urandom(size)
    key = blob_key_for(uuid.uuid4().hex * 2)
    await blob_store.put(key, data, "image/png")
    blob = await blob_store.get(key)
    assert blob.data == data
    assert blob.content_type == "image/png"


async def test_blob_put_again_replaces(blob_store: BlobStore) -> None:
    key = blob_key_for("ab" * 32)
    await blob_store.put(key, b"one", "image/png")
    await blob_store.put(key, b"two", "image/webp")
    blob = await blob_store.get(key)
    assert (blob.data, blob.content_type) == (b"two", "image/webp")


async def test_blob_get_missing(blob_store: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        await blob_store.get(blob_key_for("cd" * 32))


async def test_blob_exists_and_delete_is_idempotent(blob_store: BlobStore) -> None:
    key = blob_key_for("ef" * 32)
    assert await blob_store.exists(key) is False
    await blob_store.delete(key)  # missing: not an error

    await blob_store.put(key, b"bytes", "image/jpeg")
    assert await blob_store.exists(key) is True

    await blob_store.delete(key)
    assert await blob_store.exists(key) is False
    with pytest.raises(BlobNotFound):
        await blob_store.get(key)
    await blob_store.delete(key)


async def read_all(stream: BlobStream, chunk_size: int) -> bytes:
    chunks = [chunk async for chunk in stream.chunks]
    assert all(0 < len(chunk) <= chunk_size for chunk in chunks)
    return b"".join(chunks)


@pytest.mark.parametrize("size", [0, 1, 65_536, 300_000])
async def test_blob_stream_round_trip(blob_store: BlobStore, size: int) -> None:
    data = os.urandom(size)
    key = blob_key_for(uuid.uuid4().hex * 2)
    await blob_store.put(key, data, "image/webp")

    stream = await blob_store.stream(key, chunk_size=65_536)

    assert (stream.content_type, stream.size) == ("image/webp", size)
    assert await read_all(stream, 65_536) == data


async def test_blob_stream_default_chunk_size(blob_store: BlobStore) -> None:
    data = os.urandom(600_000)
    key = blob_key_for("12" * 32)
    await blob_store.put(key, data, "image/png")
    stream = await blob_store.stream(key)
    assert await read_all(stream, 256 * 1024) == data


async def test_blob_stream_missing_raises_before_any_chunk(blob_store: BlobStore) -> None:
    # From stream() itself, not from the iteration: the HTTP layer answers 404 then.
    with pytest.raises(BlobNotFound):
        await blob_store.stream(blob_key_for("34" * 32))


async def test_blob_stream_outlives_delete_and_replace(blob_store: BlobStore) -> None:
    data = os.urandom(300_000)
    key = blob_key_for("56" * 32)
    await blob_store.put(key, data, "image/png")
    stream = await blob_store.stream(key, chunk_size=65_536)
    first = await anext(stream.chunks)

    await blob_store.delete(key)
    await blob_store.put(key, b"something else", "text/plain")
    await blob_store.delete(key)

    rest = [chunk async for chunk in stream.chunks]
    assert first + b"".join(rest) == data


async def test_blob_stream_can_stop_early(blob_store: BlobStore) -> None:
    key = blob_key_for("78" * 32)
    await blob_store.put(key, os.urandom(300_000), "image/png")
    stream = await blob_store.stream(key, chunk_size=1024)
    await anext(stream.chunks)
    # A client that disconnects halfway: closing releases the file or connection.
    assert isinstance(stream.chunks, AsyncGenerator)
    await stream.chunks.aclose()
    # The store is still usable afterwards.
    assert (await blob_store.get(key)).content_type == "image/png"


@pytest.mark.parametrize("chunk_size", [0, -1])
async def test_blob_stream_refuses_non_positive_chunk_size(
    blob_store: BlobStore, chunk_size: int
) -> None:
    key = blob_key_for("9a" * 32)
    await blob_store.put(key, b"x", "image/png")
    with pytest.raises(ValueError):
        await blob_store.stream(key, chunk_size=chunk_size)


@pytest.mark.parametrize(
    "key", ["", "..", "../x", "ab/../../x", "ab/../cd", "/etc/passwd", "ab/..", "./ab"]
)
async def test_blob_keys_cannot_traverse(blob_store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        await blob_store.put(key, b"x", "image/png")
    with pytest.raises(ValueError):
        await blob_store.get(key)
    with pytest.raises(ValueError):
        await blob_store.stream(key)
    with pytest.raises(ValueError):
        await blob_store.exists(key)
    with pytest.raises(ValueError):
        await blob_store.delete(key)
    with pytest.raises(ValueError):
        await blob_store.stat(key)


# S3 keeps whole seconds; a file system's clock may lag the wall clock a little.
_CLOCK_SLACK = timedelta(seconds=2)


async def listed_blobs(store: BlobStore) -> dict[str, BlobInfo]:
    infos = [info async for info in store.list_blobs()]
    keys = [info.key for info in infos]
    assert len(keys) == len(set(keys)), "a key listed twice"
    return {info.key: info for info in infos}


async def test_blob_list_empty(blob_store: BlobStore) -> None:
    assert await listed_blobs(blob_store) == {}


async def test_blob_list_has_every_key_with_its_write_time(blob_store: BlobStore) -> None:
    before = datetime.now(timezone.utc)
    keys = [blob_key_for(uuid.uuid4().hex * 2) for _ in range(5)] + ["flat", "a/b/c"]
    for key in keys:
        await blob_store.put(key, os.urandom(10), "image/png")
    after = datetime.now(timezone.utc)

    listed = await listed_blobs(blob_store)

    assert set(listed) == set(keys)
    for info in listed.values():
        assert isinstance(info, BlobInfo)
        assert info.modified_at.utcoffset() == timedelta(0)
        assert before - _CLOCK_SLACK <= info.modified_at <= after + _CLOCK_SLACK
    await blob_store.delete(keys[0])
    assert set(await listed_blobs(blob_store)) == set(keys[1:])


async def test_blob_list_can_stop_early(blob_store: BlobStore) -> None:
    for i in range(3):
        await blob_store.put(blob_key_for(f"{i:02x}" * 32), b"x", "image/png")
    listing = blob_store.list_blobs()
    first = await anext(listing)
    assert first.key in {blob_key_for(f"{i:02x}" * 32) for i in range(3)}
    assert isinstance(listing, AsyncGenerator)
    await listing.aclose()
    assert len(await listed_blobs(blob_store)) == 3


async def test_blob_stat(blob_store: BlobStore) -> None:
    key = blob_key_for("bc" * 32)
    assert await blob_store.stat(key) is None

    before = datetime.now(timezone.utc)
    await blob_store.put(key, b"bytes", "image/png")
    info = await blob_store.stat(key)

    assert info is not None and info.key == key
    assert info.modified_at.utcoffset() == timedelta(0)
    assert before - _CLOCK_SLACK <= info.modified_at <= datetime.now(timezone.utc) + _CLOCK_SLACK
    # The listing tells the same time (to S3's whole seconds).
    listed = (await listed_blobs(blob_store))[key]
    assert abs(listed.modified_at - info.modified_at) < timedelta(seconds=1)

    await blob_store.delete(key)
    assert await blob_store.stat(key) is None


# -- BlobStore from several processes -------------------------------------------------


def _blob_payload(name: str) -> tuple[str, bytes]:
    digest = uuid.uuid5(_TEST_NAMESPACE, name).hex * 2
    # Big enough that a torn write would be visible to a reader.
    data = np.random.default_rng(uuid.UUID(digest[:32]).int % 2**32).bytes(256 * 1024)
    return blob_key_for(digest), data


def _blob_worker(opener: BlobStoreOpener, n: int, barrier: Any) -> None:
    async def main() -> None:
        store = opener()
        barrier.wait(timeout=60)
        for i in range(10):
            key, data = _blob_payload(f"w{n}-{i}")
            await store.put(key, data, "image/png")
            shared_key, shared = _blob_payload(f"shared-{i % 3}")
            await store.put(shared_key, shared, "image/jpeg")
            # Others are rewriting this key right now; a read sees a whole blob or fails.
            blob = await store.get(shared_key)
            assert blob.data == shared and blob.content_type == "image/jpeg"
        await store.close()

    asyncio.run(main())


async def test_several_processes_put_blobs_at_once(blob_store_opener: BlobStoreOpener) -> None:
    await asyncio.to_thread(_run_workers, _blob_worker, (blob_store_opener,))

    store = blob_store_opener()
    try:
        names = [f"w{n}-{i}" for n in range(_WORKERS) for i in range(10)]
        for name in [*names, "shared-0", "shared-1", "shared-2"]:
            key, data = _blob_payload(name)
            blob = await store.get(key)
            assert blob.data == data
            assert blob.content_type == ("image/jpeg" if name.startswith("shared") else "image/png")
        if isinstance(store, LocalBlobStore):
            leftovers = await asyncio.to_thread(lambda: list(store.root.rglob(".tmp-*")))
            assert leftovers == []
    finally:
        await store.close()


# -- LanceDB only --------------------------------------------------------------------


async def test_lancedb_ann_index_only_past_threshold(tmp_path: Path) -> None:
    store = LanceDBVectorStore(tmp_path / "db", "m", 16)
    rng = np.random.default_rng(7)
    images = await fill(store, rng, 300)
    try:
        assert await store.create_ann_index_if_large(threshold_rows=301) is False
        assert await store.create_ann_index_if_large(threshold_rows=300) is True
        # Already indexed: nothing more to build.
        assert await store.create_ann_index_if_large(threshold_rows=300) is False
        hits = await store.search(images[42].vector, limit=3)
        # Re-ranked on full vectors, so the top score is still exact.
        assert hits[0].record.id == images[42].record.id
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    finally:
        await store.close()


async def test_lancedb_store_reopens_after_close(tmp_path: Path) -> None:
    store = LanceDBVectorStore(tmp_path / "db", "m", 16)
    rng = np.random.default_rng(8)
    await fill(store, rng, 2)
    await store.close()
    await store.close()
    assert await store.count() == 2
    await store.close()


# Model and dimension of the LanceDB-only tests' stores.
_MODEL, _DIM = "m", 16


async def _legacy_table(path: Path, images: Sequence[IndexedImage], add_column: bool) -> None:
    """A table as the version before source_domain wrote it: no source_domain column, no
    caption index, no caption status columns, and a caption in every row. With
    add_column, an upgrade cut short after adding the source_domain column."""
    import lancedb
    import pyarrow as pa

    from ingress.stores.lancedb.schema import arrow_schema

    full = arrow_schema(_MODEL, _DIM)
    legacy = full
    for name in ("source_domain", "caption_status", "caption_error"):
        legacy = legacy.remove(legacy.get_field_index(name))
    caption = legacy.get_field_index("caption")
    legacy = legacy.set(caption, legacy.field(caption).with_nullable(False))
    rows = []
    for image in images:
        row = image.record.model_dump(exclude={"source_domain", "caption_status", "caption_error"})
        row["vector"] = image.vector.tolist()
        rows.append(row)
    db = await lancedb.connect_async(path)
    table = await db.create_table("images", schema=legacy, mode="create")
    await table.add(pa.Table.from_pylist(rows, schema=legacy))
    if add_column:
        await table.add_columns(full.field("source_domain"))
    table.close()
    db.close()


@pytest.mark.parametrize("add_column", [False, True], ids=["legacy", "half-upgraded"])
async def test_lancedb_upgrades_a_table_without_source_domain(
    tmp_path: Path, add_column: bool
) -> None:
    rng = np.random.default_rng(11)
    urls = ["https://Example.com/a.jpg", None, "http://other.org:81/b", "https://example.com/c"]
    images = [
        IndexedImage(
            record=make_record(_MODEL, source_url=url, caption=f"old caption {i}"),
            vector=unit_vector(rng, _DIM),
        )
        for i, url in enumerate(urls)
    ]
    await _legacy_table(tmp_path / "db", images, add_column)

    store = LanceDBVectorStore(tmp_path / "db", _MODEL, _DIM)
    try:
        await store.ensure_schema()
        for image in images:
            got = await store.get(image.record.id)
            assert got is not None and got.model_dump() == image.record.model_dump()
        f = ImageFilter(source_domains=("example.com",))
        # The column was filled in, not only derived when a record is read.
        assert await store.count(f) == 2
        assert {r.id for r in (await store.list(10, None, f)).records} == {
            images[0].record.id,
            images[3].record.id,
        }
        assert len(await store.keyword_search("old caption", 10)) == 4
        # Records made before background captioning were captioned: they read "done".
        assert await store.count(ImageFilter(caption_statuses=("done",))) == 4
        # New records go in beside the old ones, pending ones (no caption yet) too.
        new = make_image(rng, store, source_url="https://example.com/new")
        pending = make_image(rng, store, caption=None, caption_status="pending")
        await store.upsert([new, pending])
        assert await store.count(f) == 3
        assert await store.count(ImageFilter(caption_statuses=("pending",))) == 1
        captioned = await store.set_caption(pending.record.id, "a late caption", "m2")
        assert captioned is not None and captioned.caption_status == "done"
    finally:
        await store.close()

    # Upgraded once: opening again commits nothing.
    import lancedb

    db = await lancedb.connect_async(tmp_path / "db")
    table = await db.open_table("images")
    version = await table.version()
    again = LanceDBVectorStore(tmp_path / "db", _MODEL, _DIM)
    try:
        await again.ensure_schema()
        assert await again.count() == 6  # the four old records and the two new ones
    finally:
        await again.close()
    assert await table.version() == version
    table.close()
    db.close()


async def test_lancedb_keyword_search_sees_rows_the_index_does_not_cover_yet(
    tmp_path: Path,
) -> None:
    store = LanceDBVectorStore(tmp_path / "db", _MODEL, _DIM)
    rng = np.random.default_rng(12)
    try:
        indexed = await _captioned(store, rng, ["a zebra at noon", "a lion at dusk"])
        table = await store._get_table()
        # Folds the rows into the caption index, as index maintenance would.
        await table.optimize()
        stats = await table.index_stats("caption_idx")
        assert stats is not None and stats.num_unindexed_rows == 0
        (added,) = await _captioned(store, rng, ["a zebra at dawn"])
        await store.update_caption(indexed[1].record.id, "a zebra asleep", "m2")

        stats = await table.index_stats("caption_idx")
        assert stats is not None and stats.num_unindexed_rows == 2
        assert set(_ids(await store.keyword_search("zebra", 10))) == {
            indexed[0].record.id,
            indexed[1].record.id,
            added.record.id,
        }
        # The old caption of the re-captioned row is gone from the index's answers.
        assert await store.keyword_search("lion", 10) == []
        assert (
            _ids(
                await store.keyword_search("zebra", 10, ImageFilter(created_before=created(-1000)))
            )
            == []
        )
    finally:
        await store.close()


async def test_lancedb_filtered_search_with_an_ann_index_fills_the_limit(tmp_path: Path) -> None:
    """An IVF_PQ index probes a few partitions; the admitted rows may lie in others.

    Sized so that Lance answers from the index rather than scanning the admitted rows
    flat (with fewer rows it does the latter, and any setting passes): without the store
    letting it probe further, this search comes back about 75 hits short.
    """
    from lancedb.index import IvfPq

    store = LanceDBVectorStore(tmp_path / "db", _MODEL, _DIM)
    rng = np.random.default_rng(13)
    images = [
        make_image(rng, store, tags=["rare"] if i % 10 == 0 else ["common"]) for i in range(6000)
    ]
    try:
        await store.upsert(images)
        table = await store._get_table()
        # More partitions than Lance probes by default (20).
        await table.create_index("vector", config=IvfPq(distance_type="cosine", num_partitions=64))
        rare = {image.record.id for image in images if "rare" in image.record.tags}
        f = ImageFilter(tags_any=("rare",))

        hits = await store.search(unit_vector(rng, _DIM), limit=590, filters=f)

        assert len(hits) == 590
        assert {hit.record.id for hit in hits} <= rare
        # Re-ranked on full vectors: an admitted record's own vector finds it first.
        target = images[70]
        (first, *_) = await store.search(target.vector, limit=3, filters=f)
        assert first.record.id == target.record.id
        assert first.score == pytest.approx(1.0, abs=1e-5)
    finally:
        await store.close()


@pytest.mark.parametrize("key", ["ab/cd.meta.json", "ab/.tmp-1", "a\\b", "ab//cd", "ab/"])
async def test_local_blob_store_reserved_keys(tmp_path: Path, key: str) -> None:
    store = LocalBlobStore(tmp_path)
    with pytest.raises(ValueError):
        await store.put(key, b"x", "image/png")


async def test_local_blob_store_refuses_symlink_out_of_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "ab").symlink_to(outside, target_is_directory=True)
    store = LocalBlobStore(root)
    with pytest.raises(ValueError):
        await store.put("ab/" + "ab" * 32, b"x", "image/png")
    assert list(outside.iterdir()) == []


async def test_local_blob_listing_leaves_out_its_own_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    key = blob_key_for("de" * 32)
    await store.put(key, b"x", "image/png")
    root = store.root
    (root / "de" / ".tmp-abandoned").write_bytes(b"half a put")
    (root / "de" / ("01" * 32 + ".meta.json")).write_bytes(b"{}")  # a sidecar alone
    (root / ".hidden").mkdir()
    (root / ".hidden" / "file").write_bytes(b"x")
    (root / "outside-link").symlink_to(tmp_path)
    assert set(await listed_blobs(store)) == {key}


async def test_local_blob_listing_of_a_missing_root_is_empty(tmp_path: Path) -> None:
    assert await listed_blobs(LocalBlobStore(tmp_path / "never-written")) == {}


async def test_local_blob_listing_pages_through_the_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ingress.stores.local_blobs._LIST_BATCH", 2)
    store = LocalBlobStore(tmp_path)
    keys = {blob_key_for(f"{i:02x}" * 32) for i in range(7)}
    for key in keys:
        await store.put(key, b"x", "image/png")
    assert set(await listed_blobs(store)) == keys


# -- S3 only ------------------------------------------------------------------------


async def test_s3_listing_pages_and_stays_under_its_prefix(
    moto_s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    from ingress.stores.s3_blobs import S3BlobStore
    from tests.stores.s3_backend import unique_bucket

    monkeypatch.setattr("ingress.stores.s3_blobs._LIST_PAGE_SIZE", 2)
    bucket = unique_bucket("listing")
    store = S3BlobStore(bucket, prefix="images", endpoint_url=moto_s3_endpoint, create_bucket=True)
    other = S3BlobStore(bucket, prefix="images-old", endpoint_url=moto_s3_endpoint)
    try:
        await store.ensure_bucket()
        keys = {blob_key_for(f"{i:02x}" * 32) for i in range(5)}
        for key in keys:
            await store.put(key, b"x", "image/png")
        await other.put(blob_key_for("ff" * 32), b"x", "image/png")
        raw = boto3.client("s3", endpoint_url=moto_s3_endpoint)
        # A console-made folder marker and a key no put() takes: not blobs.
        raw.put_object(Bucket=bucket, Key="images/folder/", Body=b"")
        raw.put_object(Bucket=bucket, Key="images/ab/../cd", Body=b"")
        raw.close()

        assert set(await listed_blobs(store)) == keys
        assert set(await listed_blobs(other)) == {blob_key_for("ff" * 32)}
    finally:
        await store.close()
        await other.close()
