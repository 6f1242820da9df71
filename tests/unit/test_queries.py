"""Weighted and negative text terms, and "more like these" from several examples
(ingress.core.queries): the rules, the vector arithmetic, and the service searching a
real embedded store (LanceDB) with them. No Ray: the text model is a lookup table."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from ingress.core import queries
from ingress.core.errors import InvalidRequest, NotFound
from ingress.core.imaging import ImageLimits
from ingress.core.queries import Term
from ingress.core.service import ImageService, SearchOptions, SearchOutcome
from ingress.http.errors import to_api_error
from ingress.settings import SearchArgs
from ingress.stores.lancedb import LanceDBVectorStore
from ingress.stores.records import ImageRecord, IndexedImage

DIM = 4
MAX_CHARS = 50


def _unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


# -- the rules ----------------------------------------------------------------------------


def test_a_plain_string_is_one_term_of_weight_one() -> None:
    assert queries.text_terms("a beach", MAX_CHARS) == (Term("a beach", 1.0),)


BAD_TERMS = [
    pytest.param([], "at least one term", id="no-terms"),
    pytest.param([Term("x")] * (queries.MAX_TERMS + 1), "at most", id="too-many"),
    pytest.param([Term("people", -0.5)], "positive weight", id="only-negative"),
    pytest.param([Term("beach", 0.0)], "must not be 0", id="zero"),
    pytest.param([Term("beach", math.inf)], "between", id="infinite"),
    pytest.param([Term("beach", math.nan)], "between", id="nan"),
    pytest.param([Term("beach", queries.MAX_WEIGHT + 0.5)], "between", id="too-heavy"),
    pytest.param([Term("beach"), Term("x", -queries.MAX_WEIGHT - 1)], "query[1].weight", id="low"),
    pytest.param([Term("beach"), Term("   ", -1)], "query[1].text is empty", id="blank"),
    pytest.param([Term("x" * (MAX_CHARS + 1))], "longer than 50", id="too-long"),
]


@pytest.mark.parametrize(("terms", "message"), BAD_TERMS)
def test_bad_terms_are_invalid_requests(terms: list[Term], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        queries.text_terms(terms, MAX_CHARS)


def test_the_bounds_themselves_are_accepted() -> None:
    terms = [Term("a", queries.MAX_WEIGHT)] + [Term("b", -queries.MAX_WEIGHT)] * (
        queries.MAX_TERMS - 1
    )
    assert len(queries.text_terms(terms, MAX_CHARS)) == queries.MAX_TERMS
    assert queries.text_terms("x" * MAX_CHARS, MAX_CHARS)
    with pytest.raises(InvalidRequest, match="longer than"):
        queries.text_terms("x" * (MAX_CHARS + 1), MAX_CHARS)
    with pytest.raises(InvalidRequest, match="empty"):
        queries.text_terms(" ", MAX_CHARS)


def test_keywords_are_the_positive_terms_only() -> None:
    terms = [Term("beach", 1), Term("people", -0.5), Term("sunset", 0.3)]
    assert queries.keyword_text(terms) == "beach sunset"


def test_weighted_sum_is_normalised_and_refuses_what_cancels_out() -> None:
    beach, people = _unit(1, 0, 0, 0), _unit(0, 1, 0, 0)
    combined = queries.weighted_sum([beach, people], [1.0, -0.5])
    np.testing.assert_allclose(combined, _unit(1, -0.5, 0, 0), atol=1e-6)
    assert combined.dtype == np.float32
    np.testing.assert_allclose(queries.weighted_sum([beach], [2.0]), beach, atol=1e-6)
    with pytest.raises(InvalidRequest, match="cancel"):
        queries.weighted_sum([beach, beach], [1.0, -1.0])


def test_examples_are_each_once_and_never_both_ways() -> None:
    examples = queries.examples(["a", "b", "a"], ["c", "c"])
    assert (examples.positive, examples.negative) == (("a", "b"), ("c",))
    assert examples.excluded == {"a", "b", "c"}
    with pytest.raises(InvalidRequest, match="at least one"):
        queries.examples([], ["c"])
    with pytest.raises(InvalidRequest, match="'b' is in both"):
        queries.examples(["a", "b"], ["b"])
    with pytest.raises(InvalidRequest, match="at most"):
        queries.examples([str(n) for n in range(queries.MAX_EXAMPLES + 1)])
    with pytest.raises(InvalidRequest, match="characters"):
        queries.examples(["x" * (queries.MAX_ID_CHARS + 1)])


def test_average_vector_is_qdrants_average_strategy() -> None:
    a, b, c = _unit(1, 0, 0, 0), _unit(0, 1, 0, 0), _unit(0, 0, 1, 0)
    np.testing.assert_allclose(queries.average_vector([a]), a, atol=1e-6)
    np.testing.assert_allclose(queries.average_vector([a, b]), _unit(1, 1, 0, 0), atol=1e-6)
    # avg(pos) + (avg(pos) - avg(neg)) = 2 * (a + b) / 2 - c
    np.testing.assert_allclose(queries.average_vector([a, b], [c]), _unit(1, 1, -1, 0), atol=1e-6)
    with pytest.raises(InvalidRequest, match="cancel"):
        queries.average_vector([a, -a])


def test_an_unknown_example_is_named() -> None:
    with pytest.raises(NotFound) as missing:
        queries.stored_vectors(["a", "zzz", "yyy"], [_unit(1, 0, 0, 0), None, None])
    assert missing.value.image_id == "zzz" and "'zzz'" in str(missing.value)
    assert to_api_error(missing.value).status == 404


# -- the service, on LanceDB --------------------------------------------------------------

TEXTS = {
    "beach": _unit(1, 0, 0, 0),
    "people": _unit(0, 1, 0, 0),
    "snow": _unit(0, 0, 1, 0),
}
IMAGES = {
    "beach": (_unit(1, 0, 0, 0), "an empty beach"),
    "crowded": (_unit(1, 1, 0, 0), "people on a beach"),
    "street": (_unit(0, 1, 0, 0), "people in a street"),
    "dune": (_unit(0.5, 0, 1, 0), "a dune in the snow"),
    "peak": (_unit(0, 0, 1, 0.3), "a snowy peak"),
}


class _TextModels:
    caption_model = "c"
    embedding_model = "e"

    def __init__(self) -> None:
        self.embedded: Counter[str] = Counter()

    async def embed_text(self, text: str) -> np.ndarray:
        self.embedded[text] += 1
        return TEXTS[text]


def _record(image_id: str, caption: str) -> ImageRecord:
    return ImageRecord(
        id=image_id,
        caption=caption,
        width=10,
        height=10,
        content_type="image/png",
        size_bytes=1,
        sha256="0" * 64,
        tags=[],
        created_at=datetime(2024, 1, 1, tzinfo=timezone.utc),
        caption_model="c",
        embedding_model="e",
    )


@pytest.fixture
async def service(tmp_path: Path) -> ImageService:
    store = LanceDBVectorStore(tmp_path / "db", "e", DIM)
    await store.upsert(
        [IndexedImage(_record(name, caption), vector) for name, (vector, caption) in IMAGES.items()]
    )
    return ImageService(
        _TextModels(),  # type: ignore[arg-type]
        store,
        None,  # type: ignore[arg-type]
        ImageLimits(),
        SearchArgs(max_query_chars=MAX_CHARS),
    )


def _ids(outcome: SearchOutcome) -> list[str]:
    return [hit.id for hit in outcome.hits]


async def test_a_negative_term_moves_the_ranking_away(service: ImageService) -> None:
    plain = await service.search_text("beach", SearchOptions(limit=5))
    assert _ids(plain)[:3] == ["beach", "crowded", "dune"]
    away = await service.search_text([Term("beach"), Term("people", -0.5)], SearchOptions(limit=5))
    assert _ids(away)[:3] == ["beach", "dune", "crowded"]
    assert _ids(away)[-1] == "street"
    # The score is the cosine similarity to the normalised weighted sum.
    query = _unit(1, -0.5, 0, 0)
    for hit in away.hits:
        assert hit.score == pytest.approx(float(IMAGES[hit.id][0] @ query), abs=1e-5)
        assert hit.vector_score == hit.score


async def test_weights_are_relative_and_each_text_is_embedded_once(
    service: ImageService,
) -> None:
    models = service.models
    assert isinstance(models, _TextModels)
    heavy = await service.search_text(
        [Term("snow", 3), Term("beach", 1), Term("snow", 1)], SearchOptions(limit=5)
    )
    assert models.embedded == Counter({"snow": 1, "beach": 1})
    query = _unit(1, 0, 4, 0)
    assert _ids(heavy)[0] == "dune"
    for hit in heavy.hits:
        assert hit.score == pytest.approx(float(IMAGES[hit.id][0] @ query), abs=1e-5)
    # Doubling every weight changes nothing.
    doubled = await service.search_text([Term("snow", 8), Term("beach", 2)], SearchOptions(limit=5))
    assert _ids(doubled) == _ids(heavy)
    assert [h.score for h in doubled.hits] == pytest.approx([h.score for h in heavy.hits])


async def test_hybrid_keywords_come_from_the_positive_terms_only(service: ImageService) -> None:
    keywords_only = await service.search_text(
        [Term("beach"), Term("people", -0.5)], SearchOptions(limit=5), "hybrid", 0.0
    )
    # "people" would have found the street; only the beach captions hold "beach".
    assert sorted(_ids(keywords_only)) == ["beach", "crowded"]


async def test_refused_queries_embed_nothing(service: ImageService) -> None:
    models = service.models
    assert isinstance(models, _TextModels)
    for query in ([Term("people", -1)], [Term("beach", math.inf)], "x" * (MAX_CHARS + 1)):
        with pytest.raises(InvalidRequest):
            await service.search_text(query, SearchOptions(limit=5))
    assert not models.embedded
    with pytest.raises(InvalidRequest, match="cancel"):
        await service.search_text([Term("beach"), Term("beach", -1)], SearchOptions(limit=5))


async def test_more_like_these_leaves_every_example_out(service: ImageService) -> None:
    both = await service.search_similar(["beach", "street"], SearchOptions(limit=5))
    assert _ids(both) == ["crowded", "dune", "peak"]
    assert both.hits[0].score == pytest.approx(1.0, abs=1e-5)
    # Less like the snow: the peak falls behind what is merely unrelated.
    away = await service.search_similar(["dune"], SearchOptions(limit=5), ["peak"])
    assert "dune" not in _ids(away) and "peak" not in _ids(away)
    query = queries.average_vector([IMAGES["dune"][0]], [IMAGES["peak"][0]])
    assert _ids(away)[0] == "beach"
    for hit in away.hits:
        assert hit.score == pytest.approx(float(IMAGES[hit.id][0] @ query), abs=1e-5)
    # A page filled although the examples are the nearest hits.
    page = await service.search_similar(["beach", "crowded"], SearchOptions(limit=3))
    assert len(page.hits) == 3 and page.next_offset is None
    one = await service.search_similar("beach", SearchOptions(limit=1))
    assert _ids(one) == ["crowded"] and one.next_offset == 1


async def test_an_unknown_example_is_a_not_found_naming_it(service: ImageService) -> None:
    with pytest.raises(NotFound) as missing:
        await service.search_similar(["beach"], SearchOptions(limit=3), ["no-such-image"])
    assert missing.value.image_id == "no-such-image"
