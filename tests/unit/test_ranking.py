"""Ranking without Ray or a store server: hybrid fusion, the score cut-off,
near-duplicate collapsing and the offset window (ingress.core.ranking), and how the service
drives them over any VectorStore (a small in-memory one for the ranking; the embedded
stores for the ingest check; the end-to-end suite runs all of it through HTTP)."""

from __future__ import annotations

import builtins
import hashlib
import io
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ingress.core import ranking
from ingress.core.errors import NotFound
from ingress.core.imaging import DecodedImage, ImageLimits
from ingress.core.ranking import RankedHit
from ingress.core.service import ImageService, SearchOptions
from ingress.http.errors import to_api_error
from ingress.settings import SearchArgs
from ingress.stores.lancedb import LanceDBVectorStore
from ingress.stores.local_blobs import LocalBlobStore
from ingress.stores.records import ImageFilter, ImageRecord, IndexedImage, Page, SearchHit

DIM = 4


def _unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def _record(image_id: str, caption: str = "", tags: Sequence[str] = ()) -> ImageRecord:
    return ImageRecord(
        id=image_id,
        caption=caption,
        width=10,
        height=10,
        content_type="image/png",
        size_bytes=1,
        sha256="0" * 64,
        tags=list(tags),
        created_at=datetime(2024, 1, 1, tzinfo=timezone.utc),
        caption_model="c",
        embedding_model="e",
    )


def _vhit(image_id: str, score: float, vector: np.ndarray | None = None) -> SearchHit:
    return SearchHit(_record(image_id), score, vector_score=score, vector=vector)


def _khit(image_id: str, score: float, vector: np.ndarray | None = None) -> SearchHit:
    return SearchHit(_record(image_id), score, keyword_score=score, vector=vector)


def _ranked(image_id: str, score: float, vector: np.ndarray | None) -> RankedHit:
    return RankedHit(_record(image_id), score, score, None, ("vector",), vector)


def _ids(hits: Sequence[RankedHit]) -> list[str]:
    return [hit.id for hit in hits]


# -- min-max normalisation and fusion ---------------------------------------------------


def test_min_max_scales_to_unit_range() -> None:
    assert ranking.min_max([]) == []
    assert ranking.min_max([0.3]) == [1.0]
    assert ranking.min_max([2.0, 2.0]) == [1.0, 1.0]
    assert ranking.min_max([4.0, 3.0, 2.0]) == pytest.approx([1.0, 0.5, 0.0])


QUERY = _unit(1, 0, 0, 0)
VECTORS = {
    "a": _unit(1, 0.1, 0, 0),
    "b": _unit(1, 1, 0, 0),
    "c": _unit(1, 3, 0, 0),
    "d": _unit(0.1, 0, 1, 0),
}
VECTOR_HITS = [_vhit(i, float(VECTORS[i] @ QUERY), VECTORS[i]) for i in ("a", "b", "c")]
# BM25 ranks in a different order and finds "d", which the vector list does not hold.
KEYWORD_HITS = [_khit("d", 7.0, VECTORS["d"]), _khit("c", 3.0, VECTORS["c"]), _khit("b", 1.0)]


def test_fusion_weights_the_normalised_parts() -> None:
    fused = ranking.fuse(VECTOR_HITS, KEYWORD_HITS, 0.5, QUERY)
    by_id = {hit.id: hit for hit in fused}
    v = dict(zip("abc", ranking.min_max([h.score for h in VECTOR_HITS]), strict=True))
    k = {"d": 1.0, "c": (3 - 1) / 6, "b": 0.0}
    for image_id in "abcd":
        expected = 0.5 * v.get(image_id, 0.0) + 0.5 * k.get(image_id, 0.0)
        assert by_id[image_id].score == pytest.approx(expected)
        assert by_id[image_id].keyword_score == (
            pytest.approx(k[image_id]) if image_id in k else None
        )
    assert _ids(fused) == sorted("abcd", key=lambda i: -by_id[i].score)
    assert by_id["a"].matched == ("vector",)
    assert by_id["b"].matched == ("vector", "keyword")
    assert by_id["d"].matched == ("keyword",)


def test_vector_score_is_the_raw_cosine_even_for_keyword_only_hits() -> None:
    fused = {hit.id: hit for hit in ranking.fuse(VECTOR_HITS, KEYWORD_HITS, 0.5, QUERY)}
    for image_id, vector in VECTORS.items():
        assert fused[image_id].vector_score == pytest.approx(float(vector @ QUERY), abs=1e-6)


def test_keyword_only_hit_without_a_vector_has_no_vector_score() -> None:
    (hit,) = ranking.fuse([], [_khit("x", 2.0)], 0.5, QUERY)
    assert hit.vector_score is None and hit.keyword_score == 1.0 and hit.score == 0.5


def test_alpha_one_is_vector_order_and_alpha_zero_keyword_order() -> None:
    assert _ids(ranking.fuse(VECTOR_HITS, KEYWORD_HITS, 1.0, QUERY))[:3] == ["a", "b", "c"]
    assert _ids(ranking.fuse(VECTOR_HITS, KEYWORD_HITS, 0.0, QUERY))[:3] == ["d", "c", "b"]
    # Ties (equal scores) keep the order of the list that weighs more.
    tied = [_vhit("y", 0.5), _vhit("x", 0.5), _vhit("z", 0.1)]
    assert _ids(ranking.fuse(tied, [], 1.0, QUERY)) == ["y", "x", "z"]
    tied_keywords = [_khit("q", 2.0), _khit("p", 2.0)]
    assert _ids(ranking.fuse(tied, tied_keywords, 0.0, QUERY))[:2] == ["q", "p"]


def test_a_keyword_hit_beats_a_better_vector_hit_when_alpha_favours_keywords() -> None:
    fused = ranking.fuse(VECTOR_HITS, [_khit("c", 5.0)], 0.3, QUERY)
    assert _ids(fused)[0] == "c"
    assert _ids(ranking.fuse(VECTOR_HITS, [_khit("c", 5.0)], 0.9, QUERY))[0] == "a"


def test_alpha_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        ranking.fuse(VECTOR_HITS, KEYWORD_HITS, 1.5, QUERY)


# -- cut-off, dedup, window -------------------------------------------------------------


def test_min_score_keeps_scores_at_or_above() -> None:
    hits = [_ranked("a", 0.9, None), _ranked("b", 0.5, None), _ranked("c", 0.2, None)]
    assert _ids(ranking.above(hits, 0.5)) == ["a", "b"]
    assert _ids(ranking.above(hits, None)) == ["a", "b", "c"]
    assert ranking.above(hits, 0.95) == []


def test_dedup_keeps_the_best_of_each_group() -> None:
    base, other = _unit(1, 0, 0, 0), _unit(0, 1, 0, 0)
    hits = [
        _ranked("a", 0.9, base),
        _ranked("b", 0.8, other),
        _ranked("a2", 0.7, _unit(1, 0.05, 0, 0)),  # cosine ~0.999 to "a"
        _ranked("n", 0.6, None),  # no vector: cannot be compared, always kept
        _ranked("b2", 0.5, _unit(0.05, 1, 0, 0)),
        _ranked("c", 0.4, _unit(1, 1, 0, 0)),  # cosine ~0.71 to both
    ]
    collapsed = ranking.collapse_near_duplicates(hits, 0.99)
    assert _ids(collapsed) == ["a", "b", "n", "c"]
    assert [hit.near_duplicates for hit in collapsed] == [("a2",), ("b2",), (), ()]
    assert [hit.score for hit in collapsed] == [0.9, 0.8, 0.6, 0.4]
    # A lower threshold collapses more; 1.0 only identical directions.
    assert _ids(ranking.collapse_near_duplicates(hits, 0.7)) == ["a", "b", "n"]
    assert _ids(ranking.collapse_near_duplicates(hits, 1.0)) == _ids(hits)


def test_window_pages_and_next_offset() -> None:
    hits = [_ranked(str(i), 1 - i / 10, None) for i in range(7)]
    page, following = ranking.window(hits, 0, 3, max_depth=100)
    assert _ids(page) == ["0", "1", "2"] and following == 3
    page, following = ranking.window(hits, 6, 3, max_depth=100)
    assert _ids(page) == ["6"] and following is None
    page, following = ranking.window(hits, 4, 3, max_depth=100)
    assert _ids(page) == ["4", "5", "6"] and following is None
    # A next page that would start at the depth bound is not offered.
    assert ranking.window(hits, 0, 3, max_depth=3)[1] is None
    assert ranking.window(hits, 9, 3, max_depth=100) == ([], None)


# -- the service over a store -------------------------------------------------------------


class _MemoryStore:
    """The VectorStore contract's search side, in memory: enough to drive the service's
    ranking. Counts the limits asked for, to check over-fetching."""

    embedding_model = "e"
    dim = DIM

    def __init__(self, images: Sequence[IndexedImage]) -> None:
        self.rows = {image.record.id: image for image in images}
        self.asked: builtins.list[tuple[str, int]] = []

    async def get_vector(self, image_id: str) -> np.ndarray | None:
        image = self.rows.get(image_id)
        return None if image is None else image.vector

    async def search(
        self, vector: np.ndarray, limit: int, filters: ImageFilter | None = None
    ) -> builtins.list[SearchHit]:
        self.asked.append(("vector", limit))
        scored = [
            SearchHit(i.record, float(i.vector @ vector), float(i.vector @ vector), vector=i.vector)
            for i in self.rows.values()
            if filters is None or filters.matches(i.record)
        ]
        return sorted(scored, key=lambda h: -h.score)[:limit]

    async def keyword_search(
        self, text: str, limit: int, filters: ImageFilter | None = None
    ) -> builtins.list[SearchHit]:
        self.asked.append(("keyword", limit))
        terms = set(text.lower().split())
        scored = []
        for image in self.rows.values():
            words = (image.record.caption or "").lower().split()
            count = sum(word in terms for word in words)
            if count and (filters is None or filters.matches(image.record)):
                score = count / len(words)
                scored.append(
                    SearchHit(image.record, score, keyword_score=score, vector=image.vector)
                )
        return sorted(scored, key=lambda h: -h.score)[:limit]

    async def get(self, image_id: str) -> ImageRecord | None:
        image = self.rows.get(image_id)
        return None if image is None else image.record

    async def list(
        self, limit: int, cursor: str | None = None, filters: ImageFilter | None = None
    ) -> Page:
        raise NotImplementedError

    async def count(self, filters: ImageFilter | None = None) -> int:
        return len(self.rows)


class _TextModels:
    caption_model = "c"
    embedding_model = "e"

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    async def embed_text(self, text: str) -> np.ndarray:
        return self.vector


def _service(images: Sequence[IndexedImage], query: np.ndarray, **search: float) -> ImageService:
    store = _MemoryStore(images)
    return ImageService(
        _TextModels(query),  # type: ignore[arg-type]
        store,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        ImageLimits(),
        SearchArgs.model_validate(search),
    )


def _indexed(
    image_id: str, vector: np.ndarray, caption: str = "", tags: Sequence[str] = ()
) -> IndexedImage:
    return IndexedImage(_record(image_id, caption, tags), vector)


# Twelve images in six pairs of near-duplicates; the pairs point in different directions.
PAIRS = [
    _indexed(f"{p}{copy}", _unit(1, 0.2 * p + 0.001 * copy, 0.1 * p * p, 0.01 * copy))
    for p in range(6)
    for copy in (0, 1)
]


async def test_dedup_over_fetches_to_fill_the_page() -> None:
    service = _service(PAIRS, _unit(1, 0, 0, 0), near_duplicate_similarity=0.999, candidate_pool=1)
    plain = await service.search_text("q", SearchOptions(limit=4))
    assert len({hit.id[0] for hit in plain.hits}) == 2  # two pairs fill the page
    outcome = await service.search_text("q", SearchOptions(limit=4, dedup=True))
    assert len(outcome.hits) == 4
    assert len({hit.id[0] for hit in outcome.hits}) == 4
    assert all(len(hit.near_duplicates) == 1 for hit in outcome.hits)
    assert outcome.next_offset == 4


async def test_dedup_grows_the_pool_until_the_page_is_full() -> None:
    service = _service(
        PAIRS,
        _unit(1, 0, 0, 0),
        near_duplicate_similarity=0.999,
        candidate_pool=1,
        dedup_overfetch=1,
    )
    store = service.vectors
    assert isinstance(store, _MemoryStore)
    outcome = await service.search_text("q", SearchOptions(limit=5, dedup=True))
    assert len(outcome.hits) == 5 and outcome.next_offset == 5
    limits = [limit for _, limit in store.asked]
    assert limits == sorted(limits) and len(limits) > 1


async def test_pages_do_not_overlap_and_cover_everything() -> None:
    service = _service(PAIRS, _unit(1, 0, 0, 0))
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        outcome = await service.search_text("q", SearchOptions(limit=5, offset=offset))
        seen += _ids(outcome.hits)
        offset = outcome.next_offset
    assert sorted(seen) == sorted(image.record.id for image in PAIRS)
    assert len(seen) == len(set(seen))


async def test_min_score_cuts_every_search() -> None:
    service = _service(PAIRS, _unit(1, 0, 0, 0))
    everything = await service.search_text("q", SearchOptions(limit=12))
    cut = sorted(hit.score for hit in everything.hits)[6]
    outcome = await service.search_text("q", SearchOptions(limit=12, min_score=cut))
    assert _ids(outcome.hits) == [h.id for h in everything.hits if h.score >= cut]
    assert outcome.next_offset is None


async def test_similar_leaves_the_query_image_out() -> None:
    service = _service(PAIRS, _unit(1, 0, 0, 0))
    outcome = await service.search_similar("30", SearchOptions(limit=3))
    assert "30" not in _ids(outcome.hits)
    assert _ids(outcome.hits)[0] == "31"
    assert len(outcome.hits) == 3
    with pytest.raises(NotFound) as missing:
        await service.search_similar("nope", SearchOptions(limit=3))
    assert to_api_error(missing.value).status == 404


async def test_hybrid_finds_the_keyword_match_vector_search_ranks_last() -> None:
    images = [
        _indexed("near", _unit(1, 0, 0, 0), "a photo of a sofa"),
        _indexed("mid", _unit(1, 1, 0, 0), "a photo of a chair"),
        _indexed("far", _unit(0, 0, 1, 0), "a zebra in the grass"),
    ]
    service = _service(images, _unit(1, 0.1, 0, 0))
    vector = await service.search_text("zebra", SearchOptions(limit=3))
    assert _ids(vector.hits)[-1] == "far"
    hybrid = await service.search_text("zebra", SearchOptions(limit=3), "hybrid", 0.3)
    assert _ids(hybrid.hits)[0] == "far"
    assert hybrid.hits[0].matched == ("vector", "keyword")
    # alpha = 1 is vector search (scores normalised); 0 is keywords only.
    only_vector = await service.search_text("zebra", SearchOptions(limit=3), "hybrid", 1.0)
    assert _ids(only_vector.hits) == _ids(vector.hits)
    only_keywords = await service.search_text("zebra", SearchOptions(limit=3), "hybrid", 0.0)
    assert _ids(only_keywords.hits) == ["far"]
    assert only_keywords.hits[0].vector_score == pytest.approx(0.0, abs=1e-6)


async def test_filters_reach_both_lists() -> None:
    images = [
        _indexed("cat", _unit(1, 0, 0, 0), "a zebra", tags=["pet"]),
        _indexed("dog", _unit(1, 1, 0, 0), "a zebra", tags=["pet", "dog"]),
        _indexed("car", _unit(0, 1, 0, 0), "a zebra", tags=["car"]),
    ]
    service = _service(images, _unit(1, 0, 0, 0))
    filters = ImageFilter(tags_all=("pet",))
    outcome = await service.search_text("zebra", SearchOptions(limit=5, filters=filters), "hybrid")
    assert sorted(_ids(outcome.hits)) == ["cat", "dog"]
    assert all(hit.matched == ("vector", "keyword") for hit in outcome.hits)


# -- near-duplicates at ingest, on the real embedded stores -------------------------------


class _PixelModels:
    """Vectors from the image's mean colour: nearly the same picture, nearly the same
    vector."""

    caption_model = "c"
    embedding_model = "e"

    async def caption(self, pixels: np.ndarray) -> str:
        return "a picture"

    async def embed_image(self, pixels: np.ndarray) -> np.ndarray:
        r, g, b = pixels.reshape(-1, 3).mean(axis=0) / 255
        return _unit(r, g, b, 0.05)


def _decoded(colour: tuple[int, int, int], side: int) -> DecodedImage:
    pixels = np.empty((side, side, 3), dtype=np.uint8)
    pixels[:] = colour
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    data = out.getvalue()
    return DecodedImage(data, hashlib.sha256(data).hexdigest(), "image/png", side, side, pixels)


@pytest.mark.parametrize("report", [True, False])
async def test_near_duplicate_reported_at_ingest(tmp_path: Path, report: bool) -> None:
    service = ImageService(
        _PixelModels(),  # type: ignore[arg-type]
        LanceDBVectorStore(tmp_path / "db", "e", DIM),
        LocalBlobStore(tmp_path / "blobs"),
        ImageLimits(),
        SearchArgs(near_duplicate_similarity=0.99, report_near_duplicates=report),
    )
    first = await service.add(_decoded((200, 30, 30), 20), tags=[])
    assert first.near_duplicate_of is None
    other = await service.add(_decoded((30, 30, 200), 20), tags=[])
    assert other.near_duplicate_of is None
    copy = await service.add(_decoded((198, 32, 30), 16), tags=[])
    # Reported, and stored all the same.
    assert await service.vectors.get(copy.record.id) is not None
    if report:
        assert copy.near_duplicate_of is not None
        assert copy.near_duplicate_of.image_id == first.record.id
        assert copy.near_duplicate_of.score >= 0.99
    else:
        assert copy.near_duplicate_of is None
    again = await service.add(_decoded((198, 32, 30), 16), tags=[])
    assert again.duplicate and again.near_duplicate_of is None
