"""Search features end to end through a real local Ray and real HTTP, on the embedded
stores (LanceDB, local directory): hybrid caption + vector search, filters on searches
and listing, tags changed with PATCH, more-like-this, near-duplicates at ingest and
collapsed by dedup, the score cut-off and offset pagination.

Captions come from a deterministic captioner (tests/colour_captioner.py: by dominant
colour) so that keyword search has real words to find; vectors come from the tiny
random CLIP, so the images are drawn to keep unrelated ones far apart in its space (the
first test checks that, since every other one relies on it).
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from ray import serve

from ingress.settings import AppArgs
from tests.support.colour_captioner import CAPTIONS, PALETTE, ColourCaptionerDeployment
from tests.support.image_server import serving
from tests.support.served_app import Deployed, deploy_graph

APP = "search"
NEAR_DUPLICATE = 0.95


@dataclass(frozen=True)
class Spec:
    name: str
    colour: str
    pattern: str
    size: tuple[int, int]
    fmt: str
    tags: tuple[str, ...]
    # "upload", or the host the image is fetched from by URL.
    via: str = "upload"


SPECS = [
    Spec("red", "red", "dots", (120, 90), "JPEG", ("outdoor", "beach")),
    Spec("green", "green", "plain", (200, 150), "PNG", ("outdoor", "field")),
    Spec("blue", "blue", "hstripes", (80, 120), "JPEG", ("water",), via="127.0.0.1"),
    Spec("yellow", "yellow", "stripes", (160, 100), "JPEG", ("city", "outdoor"), via="localhost"),
    Spec("purple", "purple", "plain", (100, 100), "PNG", ()),
    Spec("orange", "orange", "hstripes", (140, 90), "JPEG", ("pet", "indoor")),
    Spec("white", "white", "stripes", (120, 90), "JPEG", ("indoor", "kitchen")),
    Spec("black", "black", "plain", (64, 64), "JPEG", ("pet", "outdoor")),
]
# A resized, recompressed copy of "orange", added last: its near-duplicate.
COPY = "orange_copy"
COPY_TAGS = ("pet",)
NAMES = [spec.name for spec in SPECS] + [COPY]
# Words that only one image's caption holds, for the hybrid query.
UNIQUE_WORDS = {
    "kite": "red",
    "fence": "green",
    "boat": "blue",
    "taxi": "yellow",
    "umbrella": "purple",
    "plate": "white",
    "dog": "black",
}


def _pixels(spec: Spec) -> np.ndarray:
    width, height = spec.size
    y, x = np.mgrid[0:height, 0:width]
    masks = {
        "plain": np.zeros((height, width), dtype=bool),
        "stripes": (x % 24) < 9,
        "hstripes": (y % 20) < 7,
        "dots": ((x % 18) < 6) & ((y % 18) < 6),
    }
    # The pattern covers under half of the image: the background stays the dominant
    # colour the captioner names.
    foreground = "black" if spec.colour in ("green", "purple", "yellow", "white") else "white"
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = PALETTE[spec.colour]
    pixels[masks[spec.pattern]] = PALETTE[foreground]
    return pixels


def _encode(pixels: np.ndarray, fmt: str, quality: int = 92) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return out.getvalue()


def _near_copy(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    smaller = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    smaller.save(out, "JPEG", quality=60)
    return out.getvalue()


@dataclass
class Corpus:
    client: httpx.Client
    data_dir: Path
    data: dict[str, bytes]
    # The POST /images answers, by name.
    added: dict[str, dict[str, Any]]

    def id(self, name: str) -> str:
        return str(self.added[name]["id"])

    def name(self, image_id: str) -> str:
        return next(n for n, a in self.added.items() if a["id"] == image_id)

    def state(self) -> tuple[int, list[Path]]:
        return Deployed(self.client, self.data_dir).state()


@pytest.fixture(scope="module")
def corpus(
    ray_session: str, tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Corpus]:
    data_dir = tmp_path_factory.mktemp("search-data")
    args = AppArgs.model_validate(
        {
            "storage": {"data_dir": str(data_dir)},
            "embedder": {"model": {"model_id": str(tiny_clip_dir)}},
            "url_fetch": {"allow_private_addresses": True},
            "search": {"near_duplicate_similarity": NEAR_DUPLICATE},
            # The keyword tests read captions right after each upload.
            "captioning": {"mode": "inline"},
        }
    )
    data = {spec.name: _encode(_pixels(spec), spec.fmt) for spec in SPECS}
    data[COPY] = _near_copy(data["orange"])
    files = {
        f"/{spec.name}": (data[spec.name], f"image/{spec.fmt.lower()}")
        for spec in SPECS
        if spec.via != "upload"
    }
    deploy_graph(args, APP, f"/{APP}", captioner=ColourCaptionerDeployment)
    try:
        with (
            serving(files) as base_url,
            httpx.Client(base_url=f"{ray_session}/{APP}", timeout=60) as client,
        ):
            added: dict[str, dict[str, Any]] = {}
            for spec in [*SPECS, Spec(COPY, "orange", "", (0, 0), "JPEG", COPY_TAGS)]:
                if spec.via == "upload":
                    content_type = f"image/{spec.fmt.lower()}"
                    response = client.post(
                        "/images",
                        files={"file": (spec.name, data[spec.name], content_type)},
                        data={"tags": ",".join(spec.tags)},
                    )
                else:
                    url = f"http://{spec.via}:{urlsplit(base_url).port}/{spec.name}"
                    response = client.post("/images", json={"url": url, "tags": list(spec.tags)})
                assert response.status_code == 201, response.text
                added[spec.name] = response.json()
            yield Corpus(client, data_dir, data, added)
    finally:
        serve.delete(APP)


def _search(corpus: Corpus, path: str = "/search/text", **body: Any) -> dict[str, Any]:
    response = corpus.client.post(path, json={"limit": 50, **body})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _names(corpus: Corpus, answer: dict[str, Any]) -> list[str]:
    return [corpus.name(r["image"]["id"]) for r in answer["results"]]


def _embedding(corpus: Corpus, data: bytes) -> np.ndarray:
    response = corpus.client.post("/embed-image/", files={"file": ("x", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embedding_vector"])


# -- the data set -------------------------------------------------------------------------


def test_captions_are_known_and_unrelated_images_are_apart(corpus: Corpus) -> None:
    for spec in SPECS:
        assert corpus.added[spec.name]["caption"] == CAPTIONS[spec.colour]
    assert corpus.added[COPY]["caption"] == CAPTIONS["orange"]
    vectors = {name: _embedding(corpus, corpus.data[name]) for name in NAMES}
    for a, b in itertools.combinations([spec.name for spec in SPECS], 2):
        assert vectors[a] @ vectors[b] < NEAR_DUPLICATE - 0.05, (a, b)
    assert vectors["orange"] @ vectors[COPY] >= NEAR_DUPLICATE


def test_records_carry_their_source_domain(corpus: Corpus) -> None:
    domains = {name: corpus.added[name]["source_domain"] for name in NAMES}
    assert domains == {name: None for name in NAMES} | {"blue": "127.0.0.1", "yellow": "localhost"}


# -- near-duplicates at ingest --------------------------------------------------------------


def test_near_duplicate_is_reported_at_ingest_and_still_stored(corpus: Corpus) -> None:
    copy = corpus.added[COPY]
    assert copy["duplicate"] is False
    assert copy["near_duplicate_of"]["id"] == corpus.id("orange")
    cosine = _embedding(corpus, corpus.data["orange"]) @ _embedding(corpus, corpus.data[COPY])
    assert copy["near_duplicate_of"]["score"] == pytest.approx(cosine, abs=1e-3)
    assert copy["near_duplicate_of"]["score"] >= NEAR_DUPLICATE
    assert corpus.client.get(f"/images/{copy['id']}").status_code == 200
    for spec in SPECS:
        assert corpus.added[spec.name]["near_duplicate_of"] is None, spec.name
    # The exact same bytes are a duplicate, not a near-duplicate.
    again = corpus.client.post(
        "/images", files={"file": ("o.jpg", corpus.data["orange"], "image/jpeg")}
    )
    assert again.status_code == 200
    assert again.json()["duplicate"] is True and again.json()["near_duplicate_of"] is None


# -- hybrid search ------------------------------------------------------------------------


def test_hybrid_finds_the_caption_match_that_vector_search_ranks_low(corpus: Corpus) -> None:
    vector_rank = {}
    for word, name in UNIQUE_WORDS.items():
        answer = _search(corpus, query=word)
        assert all(
            r["matched"] == ["vector"] and r["keyword_score"] is None for r in answer["results"]
        )
        assert all(r["score"] == r["vector_score"] for r in answer["results"])
        vector_rank[word] = _names(corpus, answer).index(name)
    # The word whose image the CLIP vectors rank lowest.
    word = max(vector_rank, key=lambda w: vector_rank[w])
    target = UNIQUE_WORDS[word]
    assert vector_rank[word] >= 3, vector_rank

    hybrid = _search(corpus, query=word, mode="hybrid")
    assert _names(corpus, hybrid).index(target) < vector_rank[word]
    leaning = _search(corpus, query=word, mode="hybrid", alpha=0.3)
    assert _names(corpus, leaning)[0] == target
    top = leaning["results"][0]
    assert top["matched"] == ["vector", "keyword"]
    assert top["keyword_score"] == pytest.approx(1.0)  # the only caption with the word
    plain = _search(corpus, query=word)
    assert top["vector_score"] == pytest.approx(
        plain["results"][vector_rank[word]]["score"], abs=1e-4
    )
    # Everything else matched on vectors only.
    assert all(r["matched"] == ["vector"] for r in leaning["results"][1:])
    scores = [r["score"] for r in leaning["results"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)


def test_alpha_one_is_vector_order_and_zero_is_keywords_only(corpus: Corpus) -> None:
    vector = _names(corpus, _search(corpus, query="a wooden fence"))
    assert _names(corpus, _search(corpus, query="a wooden fence", mode="hybrid", alpha=1)) == vector
    keywords = _search(corpus, query="wooden", mode="hybrid", alpha=0)
    assert sorted(_names(corpus, keywords)) == ["green", "white"]
    assert all(r["matched"] == ["keyword"] for r in keywords["results"])
    # Its vector part is still reported: the raw cosine similarity to the query.
    assert all(-1 <= r["vector_score"] <= 1 for r in keywords["results"])
    assert _search(corpus, query="zeppelin", mode="hybrid", alpha=0)["results"] == []


# -- filters ------------------------------------------------------------------------------

FILTER_CASES = [
    pytest.param({"tags_any": ["beach", "city"]}, {"red", "yellow"}, id="tags-any"),
    pytest.param({"tags_any": ["beach,city"]}, {"red", "yellow"}, id="tags-comma-separated"),
    pytest.param({"tags_all": ["pet", "outdoor"]}, {"black"}, id="tags-all"),
    pytest.param({"tags_any": ["pet"], "tags_all": ["indoor"]}, {"orange"}, id="tags-any-and-all"),
    pytest.param({"tags_any": ["PET"]}, set(), id="tags-are-exact"),
    pytest.param({"content_types": ["image/png"]}, {"green", "purple"}, id="content-type"),
    pytest.param(
        {"min_width": 120, "min_height": 90},
        {"red", "green", "yellow", "orange", "white"},
        id="min-size-inclusive",
    ),
    pytest.param({"min_height": 100}, {"green", "blue", "yellow", "purple"}, id="min-height"),
    pytest.param({"source_domains": ["localhost"]}, {"yellow"}, id="domain"),
    pytest.param({"source_domains": ["127.0.0.1", "LocalHost."]}, {"blue", "yellow"}, id="domains"),
    pytest.param({"source_domains": ["example.com"]}, set(), id="domain-none"),
    pytest.param(
        {"tags_any": ["outdoor"], "content_types": ["image/jpeg"], "min_width": 100},
        {"red", "yellow"},
        id="combined",
    ),
]


@pytest.mark.parametrize(("filters", "expected"), FILTER_CASES)
def test_filters_on_listing_and_every_search(
    corpus: Corpus, filters: dict[str, Any], expected: set[str]
) -> None:
    listed = corpus.client.get("/images", params={"limit": 100, **filters})
    assert listed.status_code == 200, listed.text
    assert {corpus.name(i["id"]) for i in listed.json()["images"]} == expected
    assert listed.json()["total"] == len(expected)

    for body in ({"query": "a photo"}, {"query": "a wooden boat", "mode": "hybrid"}):
        answer = _search(corpus, filters=filters, **body)
        assert set(_names(corpus, answer)) == expected, body
    similar = _search(corpus, "/search/similar", id=corpus.id("red"), filters=filters)
    assert set(_names(corpus, similar)) == expected - {"red"}
    by_image = corpus.client.post(
        "/search/image",
        files={"file": ("q.jpg", corpus.data["white"], "image/jpeg")},
        data={"limit": "50", "filters": json.dumps(filters)},
    )
    assert by_image.status_code == 200, by_image.text
    assert set(_names(corpus, by_image.json())) == expected


def test_created_window_is_exclusive(corpus: Corpus) -> None:
    ordered = sorted(NAMES, key=lambda n: corpus.added[n]["created_at"])
    after, before = corpus.added[ordered[1]]["created_at"], corpus.added[ordered[5]]["created_at"]
    expected = set(ordered[2:5])
    window = {"created_after": after, "created_before": before}
    listed = corpus.client.get("/images", params={"limit": 100, **window}).json()
    assert {corpus.name(i["id"]) for i in listed["images"]} == expected
    assert listed["total"] == 3
    assert set(_names(corpus, _search(corpus, query="a photo", filters=window))) == expected
    only_after = corpus.client.get("/images", params={"created_after": after}).json()
    assert only_after["total"] == len(NAMES) - 2


def test_listing_pages_through_a_filtered_set(corpus: Corpus) -> None:
    expected = {"red", "green", "yellow", "orange", "black", COPY}
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "tags_any": ["outdoor", "pet"]}
        page = corpus.client.get("/images", params=params | ({"cursor": cursor} if cursor else {}))
        assert page.status_code == 200, page.text
        assert page.json()["total"] == len(expected)
        seen += [corpus.name(i["id"]) for i in page.json()["images"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(expected)


def test_patched_tags_are_what_filters_see(corpus: Corpus) -> None:
    purple = corpus.id("purple")
    before = corpus.client.get(f"/images/{purple}").json()
    try:
        patched = corpus.client.patch(
            f"/images/{purple}", json={"tags": [" violet ", "rain,wet", "violet"]}
        )
        assert patched.status_code == 200, patched.text
        # The ingest's tag rules: trimmed, split on commas, each once.
        assert patched.json()["tags"] == ["violet", "rain", "wet"]
        assert {k: v for k, v in patched.json().items() if k != "tags"} == {
            k: v for k, v in before.items() if k != "tags"
        }
        assert corpus.client.get(f"/images/{purple}").json() == patched.json()
        listed = corpus.client.get("/images", params={"tags_all": ["rain", "wet"]}).json()
        assert [i["id"] for i in listed["images"]] == [purple]
        found = _search(corpus, query="umbrella", mode="hybrid", filters={"tags_any": ["violet"]})
        assert _names(corpus, found) == ["purple"]

        # Refused changes leave the tags as they are.
        for body in ({"tags": ["x" * 65]}, {"tags": "violet"}, {"tags": ["a"], "caption": "b"}):
            refused = corpus.client.patch(f"/images/{purple}", json=body)
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"]["code"] == "validation_error"
        assert corpus.client.get(f"/images/{purple}").json()["tags"] == ["violet", "rain", "wet"]

        cleared = corpus.client.patch(f"/images/{purple}", json={"tags": []})
        assert cleared.status_code == 200 and cleared.json()["tags"] == []
        assert corpus.client.get("/images", params={"tags_any": ["violet"]}).json()["total"] == 0
    finally:
        corpus.client.patch(f"/images/{purple}", json={"tags": before["tags"]})


# -- more like this -----------------------------------------------------------------------


def test_similar_leaves_out_the_image_itself(corpus: Corpus) -> None:
    for name in NAMES:
        answer = _search(corpus, "/search/similar", id=corpus.id(name))
        names = _names(corpus, answer)
        assert name not in names
        assert sorted(names) == sorted(set(NAMES) - {name})
        scores = [r["score"] for r in answer["results"]]
        assert scores == sorted(scores, reverse=True)
        assert all(r["vector_score"] == r["score"] for r in answer["results"])
    nearest = _search(corpus, "/search/similar", id=corpus.id("orange"), limit=1)
    assert _names(corpus, nearest) == [COPY]
    assert nearest["results"][0]["score"] >= NEAR_DUPLICATE


# -- dedup --------------------------------------------------------------------------------


def test_dedup_collapses_the_near_duplicate_into_the_best(corpus: Corpus) -> None:
    plain = _search(corpus, "/search/similar", id=corpus.id("red"))
    assert {"orange", COPY} <= set(_names(corpus, plain))
    deduped = _search(corpus, "/search/similar", id=corpus.id("red"), dedup=True)
    names = _names(corpus, deduped)
    assert len(names) == len(NAMES) - 2
    (kept,) = [r for r in deduped["results"] if corpus.name(r["image"]["id"]) in ("orange", COPY)]
    plain_scores = {corpus.name(r["image"]["id"]): r["score"] for r in plain["results"]}
    best = max(("orange", COPY), key=lambda n: plain_scores[n])
    other = COPY if best == "orange" else "orange"
    assert corpus.name(kept["image"]["id"]) == best
    assert kept["near_duplicates"] == [corpus.id(other)]
    assert all(r["near_duplicates"] == [] for r in deduped["results"] if r is not kept)
    # Without dedup nothing is collapsed.
    assert all(r["near_duplicates"] == [] for r in plain["results"])

    # The same in a hybrid search, and in a search by an uploaded image (form fields).
    cats = _search(corpus, query="cat", mode="hybrid", alpha=0.2, dedup=True)
    assert len(cats["results"]) == len(NAMES) - 1
    assert _names(corpus, cats)[0] in ("orange", COPY)
    assert len(cats["results"][0]["near_duplicates"]) == 1
    by_image = corpus.client.post(
        "/search/image",
        files={"file": ("q.jpg", corpus.data[COPY], "image/jpeg")},
        data={"limit": "3", "dedup": "true"},
    )
    assert by_image.status_code == 200, by_image.text
    top = by_image.json()["results"][0]
    assert top["image"]["id"] == corpus.id(COPY)
    assert top["near_duplicates"] == [corpus.id("orange")]
    assert len(by_image.json()["results"]) == 3


# -- score cut-off and pagination ---------------------------------------------------------


def test_min_score_cuts_every_kind_of_search(corpus: Corpus) -> None:
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/search/text", {"query": "a calm lake"}),
        ("/search/text", {"query": "a calm lake", "mode": "hybrid"}),
        ("/search/similar", {"id": corpus.id("blue")}),
    ]
    for path, body in requests:
        everything = _search(corpus, path, **body)["results"]
        cut = everything[3]["score"]
        kept = _search(corpus, path, min_score=cut, **body)
        assert [r["image"]["id"] for r in kept["results"]] == [
            r["image"]["id"] for r in everything if r["score"] >= cut
        ]
        assert 4 <= len(kept["results"]) < len(everything), (path, body)
        assert kept["next_offset"] is None
    assert _search(corpus, query="a calm lake", min_score=1.01)["results"] == []


@pytest.mark.parametrize("mode", ["vector", "hybrid"])
def test_offset_pages_tile_the_ranking(corpus: Corpus, mode: str) -> None:
    body = {"query": "a busy street", "mode": mode}
    whole = [r["image"]["id"] for r in _search(corpus, **body)["results"]]
    assert len(whole) == len(NAMES)
    pages: list[list[str]] = []
    offset: int | None = 0
    while offset is not None:
        page = _search(corpus, limit=2, offset=offset, **body)
        assert page["offset"] == offset
        pages.append([r["image"]["id"] for r in page["results"]])
        offset = page["next_offset"]
    assert [i for page in pages for i in page] == whole
    assert all(len(page) == 2 for page in pages[:-1])
    assert _search(corpus, limit=2, offset=len(NAMES), **body)["results"] == []


# -- refusals -----------------------------------------------------------------------------

BAD_REQUESTS = [
    pytest.param(
        "post",
        "/search/text",
        {"json": {"query": "cat", "mode": "hybrid", "alpha": 1.5}},
        422,
        id="alpha-range",
    ),
    pytest.param(
        "post",
        "/search/text",
        {"json": {"query": "cat", "alpha": 0.5}},
        422,
        id="alpha-without-hybrid",
    ),
    pytest.param(
        "post", "/search/text", {"json": {"query": "cat", "mode": "fuzzy"}}, 422, id="mode"
    ),
    pytest.param(
        "post", "/search/text", {"json": {"query": "cat", "offset": -1}}, 422, id="offset-negative"
    ),
    pytest.param(
        "post",
        "/search/text",
        {"json": {"query": "cat", "offset": 995, "limit": 10}},
        422,
        id="too-deep",
    ),
    pytest.param(
        "post", "/search/text", {"json": {"query": "cat", "min_score": "high"}}, 422, id="min-score"
    ),
    pytest.param(
        "post", "/search/text", {"json": {"query": "cat", "dedup": "yes"}}, 422, id="dedup"
    ),
    pytest.param(
        "post",
        "/search/text",
        {"json": {"query": "cat", "filters": {"min_width": -1}}},
        422,
        id="min-width",
    ),
    pytest.param(
        "post",
        "/search/text",
        {"json": {"query": "cat", "filters": {"created_after": "yesterday"}}},
        422,
        id="datetime",
    ),
    pytest.param(
        "post",
        "/search/text",
        {"json": {"query": "cat", "filters": {"colour": "red"}}},
        422,
        id="unknown-filter",
    ),
    pytest.param(
        "post",
        "/search/text",
        {"json": {"query": "cat", "filters": {"tags_any": ["x" * 65]}}},
        422,
        id="tag-too-long",
    ),
    pytest.param(
        "post",
        "/search/url",
        {"json": {"url": "http://x/", "offset": 999, "limit": 2}},
        422,
        id="url-too-deep",
    ),
    pytest.param("post", "/search/similar", {"json": {"id": "nope"}}, 404, id="similar-unknown"),
    pytest.param("post", "/search/similar", {"json": {"id": ""}}, 422, id="similar-empty"),
    pytest.param(
        "post", "/search/similar", {"json": {"id": "x", "limit": 0}}, 422, id="similar-limit"
    ),
    pytest.param(
        "get", "/images", {"params": {"created_after": "not-a-date"}}, 422, id="list-datetime"
    ),
    pytest.param("get", "/images", {"params": {"min_width": -5}}, 422, id="list-min-width"),
    pytest.param("get", "/images", {"params": {"min_height": "tall"}}, 422, id="list-min-height"),
    pytest.param(
        "patch",
        "/images/00000000-0000-0000-0000-000000000000",
        {"json": {"tags": ["a"]}},
        404,
        id="patch-unknown",
    ),
    pytest.param(
        "patch",
        "/images/x",
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        422,
        id="patch-not-json",
    ),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), BAD_REQUESTS)
def test_bad_search_input_gets_a_json_error_and_changes_nothing(
    corpus: Corpus, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    before = corpus.state()
    response = getattr(corpus.client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == (
        "not_found" if status == 404 else "validation_error"
    )
    assert corpus.state() == before


@pytest.mark.parametrize(
    "fields",
    [
        {"filters": "{not json"},
        {"filters": '{"min_width": "wide"}'},
        {"offset": "-1"},
        {"dedup": "maybe"},
        {"min_score": "nan"},
    ],
    ids=["filters-not-json", "filters-invalid", "offset", "dedup", "min-score-nan"],
)
def test_bad_image_search_form_fields_are_refused(corpus: Corpus, fields: dict[str, str]) -> None:
    response = corpus.client.post(
        "/search/image", files={"file": ("q.jpg", corpus.data["red"], "image/jpeg")}, data=fields
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"


# -- weighted and negative terms, more like these (issue 17) --------------------------------


def _vector_scores(corpus: Corpus, **body: Any) -> dict[str, float]:
    return {
        corpus.name(r["image"]["id"]): r["vector_score"] for r in _search(corpus, **body)["results"]
    }


def _fits_weighted_sum(
    scores: dict[str, float], parts: list[tuple[float, dict[str, float]]]
) -> float:
    """Checks each score is c * sum(w * part score): the cosine similarity to the
    normalised weighted sum of the term vectors (c = 1 / that sum's length). Returns c."""
    names = sorted(scores)
    got = np.array([scores[n] for n in names])
    raw = np.array([sum(w * part[n] for w, part in parts) for n in names])
    c = float(got @ raw / (raw @ raw))
    np.testing.assert_allclose(got, c * raw, atol=2e-3)
    return c


def test_a_negative_term_moves_the_ranking_away_from_it(corpus: Corpus) -> None:
    positive = _vector_scores(corpus, query="a photo")
    # The words whose own nearest image "a photo" ranks highest: moving away from
    # them must push that image down.
    candidates = {word: _vector_scores(corpus, query=word) for word in UNIQUE_WORDS}
    plain_order = sorted(positive, key=lambda n: -positive[n])

    def nearest(word: str) -> str:
        return max(candidates[word], key=lambda n: candidates[word][n])

    word = min(candidates, key=lambda w: plain_order.index(nearest(w)))
    target = nearest(word)
    terms = [{"text": "a photo"}, {"text": word, "weight": -1.0}]
    answer = _search(corpus, query=terms)
    scores = {corpus.name(r["image"]["id"]): r["score"] for r in answer["results"]}
    assert len(scores) == len(NAMES)
    assert all(r["vector_score"] == r["score"] for r in answer["results"])
    c = _fits_weighted_sum(scores, [(1.0, positive), (-1.0, candidates[word])])
    assert 0.5 <= c < 1e3
    away_order = _names(corpus, answer)
    assert away_order.index(target) > plain_order.index(target), (word, target)
    # The default weight of a term is 1, and a one-term list is the plain query.
    same = _search(corpus, query=[{"text": "a photo"}])
    assert [r["score"] for r in same["results"]] == pytest.approx(
        [positive[n] for n in plain_order], abs=1e-5
    )


def test_weighted_terms_and_hybrid_keywords_from_positive_terms(corpus: Corpus) -> None:
    kite, boat = _vector_scores(corpus, query="kite"), _vector_scores(corpus, query="boat")
    weighted = _search(corpus, query=[{"text": "kite", "weight": 3}, {"text": "boat"}])
    scores = {corpus.name(r["image"]["id"]): r["score"] for r in weighted["results"]}
    _fits_weighted_sum(scores, [(3.0, kite), (1.0, boat)])
    # Only the ratio of the weights counts.
    scaled = _search(
        corpus, query=[{"text": "kite", "weight": 0.3}, {"text": "boat", "weight": 0.1}]
    )
    assert _names(corpus, scaled) == _names(corpus, weighted)
    # Keywords come from the positive terms only: "kite" (the red image's caption) is
    # a negative term here, so it finds nothing by keyword.
    keywords = _search(
        corpus,
        query=[{"text": "umbrella"}, {"text": "kite", "weight": -0.5}],
        mode="hybrid",
        alpha=0,
    )
    assert _names(corpus, keywords) == ["purple"]
    both = _search(
        corpus,
        query=[{"text": "umbrella"}, {"text": "kite", "weight": 0.5}],
        mode="hybrid",
        alpha=0,
    )
    assert sorted(_names(corpus, both)) == ["purple", "red"]


def test_more_like_these_averages_and_leaves_every_example_out(corpus: Corpus) -> None:
    vectors = {name: _embedding(corpus, corpus.data[name]) for name in NAMES}

    def expected(positive: list[str], negative: list[str]) -> dict[str, float]:
        mean = np.mean([vectors[n] for n in positive], axis=0)
        query = 2 * mean - np.mean([vectors[n] for n in negative], axis=0) if negative else mean
        query /= np.linalg.norm(query)
        return {n: float(vectors[n] @ query) for n in NAMES if n not in {*positive, *negative}}

    for positive, negative in [
        (["red", "blue"], []),
        (["red", "blue", "green"], ["orange"]),
        (["white"], [COPY, "black"]),
    ]:
        answer = _search(
            corpus,
            "/search/similar",
            ids=[corpus.id(n) for n in positive],
            negative_ids=[corpus.id(n) for n in negative],
        )
        want = expected(positive, negative)
        assert sorted(_names(corpus, answer)) == sorted(want), (positive, negative)
        got = {corpus.name(r["image"]["id"]): r["score"] for r in answer["results"]}
        assert got == pytest.approx(want, abs=2e-3)
        scores = [r["score"] for r in answer["results"]]
        assert scores == sorted(scores, reverse=True)
    # Moving away from the orange image pushes its near-duplicate to the bottom.
    away = _search(
        corpus, "/search/similar", ids=[corpus.id("red")], negative_ids=[corpus.id("orange")]
    )
    towards = _search(corpus, "/search/similar", ids=[corpus.id("red")])
    assert _names(corpus, away)[-1] == COPY
    assert _names(corpus, away).index(COPY) > _names(corpus, towards).index(COPY)
    # id and ids together are one list; the filters and limit apply as ever.
    page = _search(
        corpus,
        "/search/similar",
        id=corpus.id("red"),
        ids=[corpus.id("blue"), corpus.id("red")],
        limit=2,
        filters={"tags_any": ["outdoor"]},
    )
    assert set(_names(corpus, page)) <= {"green", "yellow", "black"} and len(page["results"]) == 2


def test_an_unknown_example_is_a_404_naming_it(corpus: Corpus) -> None:
    for body in (
        {"ids": [corpus.id("red"), "no-such-image"]},
        {"ids": [corpus.id("red")], "negative_ids": ["no-such-image"]},
    ):
        response = corpus.client.post("/search/similar", json=body)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
        assert "no-such-image" in response.json()["error"]["message"]


_TERM = {"text": "cat"}
QUERY_TERM_REFUSALS = [
    pytest.param({"query": []}, "query", id="no-terms"),
    pytest.param({"query": [_TERM] * 11}, "query", id="too-many-terms"),
    pytest.param({"query": [{"text": "cat", "weight": -0.5}]}, "positive", id="no-positive"),
    pytest.param({"query": [_TERM, {"text": "dog", "weight": 0}]}, "must not be 0", id="zero"),
    pytest.param({"query": [{"text": "cat", "weight": 10.5}]}, "weight", id="too-heavy"),
    pytest.param({"query": [{"text": "cat", "weight": -11}]}, "weight", id="too-light"),
    pytest.param({"query": [{"text": "cat", "weight": "2"}]}, "weight", id="weight-string"),
    pytest.param({"query": [{"text": "cat", "weight": True}]}, "weight", id="weight-bool"),
    pytest.param({"query": [{"text": ""}]}, "text", id="empty-text"),
    pytest.param({"query": [_TERM, {"text": "   ", "weight": -1}]}, "empty", id="blank-text"),
    pytest.param({"query": [{"text": "x" * 1001}]}, "1000", id="text-too-long"),
    pytest.param({"query": [{"text": "cat", "lang": "en"}]}, "lang", id="unknown-key"),
    pytest.param({"query": [_TERM, {"text": "cat", "weight": -1}]}, "cancel", id="cancels-out"),
    pytest.param({"query": 5}, "query", id="not-text"),
]


@pytest.mark.parametrize(("body", "message"), QUERY_TERM_REFUSALS)
def test_bad_query_terms_are_422(corpus: Corpus, body: dict[str, Any], message: str) -> None:
    response = corpus.client.post("/search/text", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert message in response.json()["error"]["message"]


def test_non_finite_weights_are_422(corpus: Corpus) -> None:
    for token in ("NaN", "Infinity", "-Infinity"):
        response = corpus.client.post(
            "/search/text",
            content=f'{{"query": [{{"text": "cat", "weight": {token}}}]}}'.encode(),
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 422, (token, response.text)
        assert response.json()["error"]["code"] == "validation_error"


def test_bad_example_lists_are_422(corpus: Corpus) -> None:
    red = corpus.id("red")
    for body, message in [
        ({}, "at least one"),
        ({"ids": []}, "at least one"),
        ({"negative_ids": [red]}, "at least one"),
        ({"ids": [red], "negative_ids": [red]}, "both"),
        ({"ids": [str(n) for n in range(33)]}, "ids"),
        ({"ids": [red], "negative_ids": [""]}, "negative_ids"),
        ({"ids": red}, "ids"),
    ]:
        response = corpus.client.post("/search/similar", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == "validation_error"
        assert message in response.json()["error"]["message"], (body, response.text)


# -- a query image is decoded only as far as the embedder looks ----------------------------


TIE = 0.005


def test_image_queries_rank_as_at_the_stored_size_by_upload_and_by_url(corpus: Corpus) -> None:
    """A search query is decoded to the embedder's input side (32 for the tiny CLIP;
    ImageLimits.for_query), not to the 512 a stored image keeps (what /embed-image/
    decodes to). The ranking is the same, the scores nearly so, and a URL's image takes
    the same path as an upload."""
    info = serve.get_deployment_handle("Embedder", APP).info.remote().result()
    assert info.input_side == 32
    stored = {name: _embedding(corpus, corpus.data[name]) for name in NAMES}
    for name in ("red", "blue", "yellow"):
        spec = next(s for s in SPECS if s.name == name)
        # Five times larger (red: 600 x 450), so that the two decodes differ (red: 512 x
        # 384 against 42 x 32).
        width, height = spec.size
        big = Image.fromarray(_pixels(spec)).resize((width * 5, height * 5))
        query = _encode(np.asarray(big), "JPEG", quality=85)
        at_512 = _embedding(corpus, query)
        expected = {n: float(at_512 @ vector) for n, vector in stored.items()}
        by_image = corpus.client.post(
            "/search/image", files={"file": ("q.jpg", query, "image/jpeg")}, data={"limit": "50"}
        )
        assert by_image.status_code == 200, by_image.text
        with serving({"/q.jpg": (query, "image/jpeg")}) as base_url:
            by_url = _search(corpus, "/search/url", url=f"{base_url}/q.jpg")
        results = by_image.json()["results"]
        names = _names(corpus, by_image.json())
        assert names[0] == name
        differences = [abs(r["score"] - expected[n]) for r, n in zip(results, names, strict=True)]
        assert sorted(names) == sorted(NAMES)
        assert max(differences) < TIE, name
        # The same order, but for near ties (the tiny CLIP's space is crowded: most
        # unrelated images score ~0.8): none further apart than TIE is swapped.
        for earlier, later in itertools.combinations(names, 2):
            assert expected[earlier] > expected[later] - TIE, (name, earlier, later)
        # Not the stored size's vector: the query really took the smaller decode.
        assert max(differences) > 1e-6, name
        assert _names(corpus, by_url) == names
        for url_hit, image_hit in zip(by_url["results"], results, strict=True):
            assert url_hit["score"] == pytest.approx(image_hit["score"], abs=1e-5)
