"""Weaviate store logic, and the store against the real client at the wire.

The contract suite covers the store against a real server when WEAVIATE_URL is set;
here: the property schema, record <-> properties, distance -> similarity, cursors, error
mapping (with the weaviate package's own exceptions), validation that happens before any
I/O, the real client failing cleanly against loopback ports with no Weaviate behind, and
every request the store makes, sent by the real client to an in-memory Weaviate on
loopback (tests/stores/weaviate_mock.py: REST and gRPC, filters evaluated from the wire).
"""

from __future__ import annotations

import copy
import importlib
import pickle
import pkgutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from weaviate.classes.config import DataType, Tokenization
from weaviate.exceptions import (
    UnexpectedStatusCodeError,
    WeaviateBatchError,
    WeaviateClosedClientError,
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateInsertManyAllFailedError,
    WeaviateQueryError,
    WeaviateRetryError,
    WeaviateStartUpError,
    WeaviateTimeoutError,
)

import ingress.stores.weaviate as weaviate_store_package
from ingress.http.errors import to_api_error
from ingress.stores.base import (
    EmbeddingMismatch,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    VectorStore,
)
from ingress.stores.records import ImageFilter, ImageRecord, IndexedImage, image_id_for
from ingress.stores.weaviate import (
    WeaviateVectorStore,
    canonical_uuid,
    collection_description,
    decode_cursor,
    encode_cursor,
    image_properties,
    map_weaviate_error,
    parse_collection_description,
    properties_to_record,
    record_to_properties,
    similarity_from_distance,
)
from tests.stores.filter_cases import FILTER_CASES, POPULATION_SIZE, population_fields
from tests.stores.weaviate_backend import WEAVIATE_SKIP_REASON, WeaviateOpener

# test_maintenance.py still imports these stand-ins from here; nothing in this file uses them.
from tests.stores.weaviate_mock import Fault, MockWeaviate, filter_repr, format_date, parse_date

MODEL = "test/clip-tiny"
DIM = 16


def make_record(**overrides: Any) -> ImageRecord:
    fields: dict[str, Any] = {
        "id": image_id_for("ab" * 32),
        "caption": "a cat on a sofa",
        "width": 640,
        "height": 480,
        "content_type": "image/jpeg",
        "size_bytes": 12345,
        "sha256": "ab" * 32,
        "source_url": None,
        "tags": [],
        "created_at": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc),
        "caption_model": "test/blip-tiny",
        "embedding_model": MODEL,
    }
    fields.update(overrides)
    return ImageRecord(**fields)


# -- schema ---------------------------------------------------------------------------


def test_schema_has_every_record_field_but_id() -> None:
    names = [p.name for p in image_properties()]
    assert len(names) == len(set(names))
    assert set(names) == set(ImageRecord.model_fields) - {"id"}


def test_schema_types_and_tokenization() -> None:
    props = {p.name: p for p in image_properties()}
    assert props["caption"].dataType == DataType.TEXT
    assert props["caption"].tokenization == Tokenization.WORD
    assert props["caption"].indexSearchable is True
    for name in (
        "content_type",
        "sha256",
        "source_url",
        "caption_model",
        "embedding_model",
        "source_domain",
        "caption_status",
    ):
        assert props[name].dataType == DataType.TEXT, name
        assert props[name].tokenization == Tokenization.FIELD, name
        assert props[name].indexSearchable is False, name  # BM25 is for the caption only
    assert props["tags"].dataType == DataType.TEXT_ARRAY
    assert props["tags"].tokenization == Tokenization.FIELD
    assert props["tags"].indexSearchable is False
    for name in ("width", "height", "size_bytes"):
        assert props[name].dataType == DataType.INT, name
    assert props["created_at"].dataType == DataType.DATE
    # The failure reason is only read back.
    error = props.pop("caption_error")
    assert error.dataType == DataType.TEXT
    assert (error.indexFilterable, error.indexSearchable) == (False, False)
    assert all(p.indexFilterable for p in props.values())


def test_description_round_trip_and_foreign_descriptions() -> None:
    assert parse_collection_description(collection_description("org/m-1", 768)) == (
        "org/m-1",
        768,
    )
    for foreign in [None, "", "images", "imagesearch:", "imagesearch:{}", 'imagesearch:{"dim": 3}']:
        assert parse_collection_description(foreign) is None
    assert parse_collection_description('imagesearch:{"embedding_model": "m", "dim": true}') is None


# -- records ------------------------------------------------------------------------


def test_record_round_trip_minimal() -> None:
    record = make_record()
    props = record_to_properties(record)
    assert "id" not in props
    assert "source_url" not in props  # left out, not sent as null
    assert props["tags"] == []
    back = properties_to_record(record.id, props)
    assert back.model_dump() == record.model_dump()


def test_record_round_trip_keeps_the_instant_and_comes_back_in_utc() -> None:
    created = datetime(2023, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    record = make_record(
        created_at=created,
        source_url="https://example.com/a%20b.jpg?x='1'",
        tags=["cat", "sofa", "ünïcode"],
        caption='it\'s a "quoted" caption',
    )
    props = record_to_properties(record)
    assert props["created_at"].utcoffset() == timedelta(0)
    back = properties_to_record(uuid.UUID(record.id), props)
    assert back.created_at == created
    assert back.created_at.tzinfo is not None and back.created_at.utcoffset() == timedelta(0)
    assert back.model_dump(exclude={"created_at"}) == record.model_dump(exclude={"created_at"})


def test_properties_as_the_server_may_return_them() -> None:
    # Dates as RFC 3339 text with Z, missing optional fields, ints as floats.
    record = make_record(tags=["a"])
    props = record_to_properties(record)
    props["created_at"] = "2024-05-06T07:08:09.123456Z"
    props["width"] = 640.0
    del props["tags"]
    back = properties_to_record(record.id.upper(), props)
    assert back.id == record.id
    assert back.created_at == record.created_at
    assert back.tags == [] and back.source_url is None and back.width == 640


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("6f1c0e3a-96b0-4a7e-8d1c-0a1b2c3d4e5f", "6f1c0e3a-96b0-4a7e-8d1c-0a1b2c3d4e5f"),
        ("6F1C0E3A-96B0-4A7E-8D1C-0A1B2C3D4E5F", None),
        ("6f1c0e3a96b04a7e8d1c0a1b2c3d4e5f", None),
        ("", None),
        ("x' OR '1'='1", None),
        ('"; --', None),
        ("../../objects", None),
    ],
)
def test_canonical_uuid(value: str, expected: str | None) -> None:
    assert canonical_uuid(value) == expected


# -- similarity -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("distance", "similarity"), [(0.0, 1.0), (1.0, 0.0), (2.0, -1.0), (0.25, 0.75)]
)
def test_similarity_from_distance(distance: float, similarity: float) -> None:
    assert similarity_from_distance(distance) == pytest.approx(similarity)


def test_similarity_matches_cosine() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(8), rng.standard_normal(8)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert similarity_from_distance(1.0 - cosine) == pytest.approx(cosine)


def test_similarity_refuses_nan() -> None:
    with pytest.raises(ValueError):
        similarity_from_distance(float("nan"))


# -- cursors --------------------------------------------------------------------------


def test_cursor_round_trip() -> None:
    last = str(uuid.uuid4())
    assert decode_cursor(encode_cursor(last)) == last


@pytest.mark.parametrize(
    "cursor",
    ["", "not a cursor", "%%%", "Zm9v", "AAAA", "djE6", "dzE6", encode_cursor("not-a-uuid")],
)
def test_cursor_rejects_malformed(cursor: str) -> None:
    with pytest.raises(ValueError):
        decode_cursor(cursor)


# -- error mapping ----------------------------------------------------------------------


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="boom")


def raised_during(outer: BaseException, inner: BaseException) -> BaseException:
    """outer, raised while inner was being handled (how the client wraps errors)."""
    try:
        try:
            raise inner
        except BaseException:
            raise outer  # noqa: B904 - the implicit context is the point
    except BaseException as e:
        return e
    raise AssertionError("unreachable")


def status_error(status: int) -> UnexpectedStatusCodeError:
    return UnexpectedStatusCodeError(
        "req", httpx.Response(status, json={"error": [{"message": "x"}]})
    )


ERROR_CASES: list[tuple[str, Callable[[], BaseException], type[StoreError], int]] = [
    ("connection", lambda: WeaviateConnectionError("refused"), StoreUnavailable, 503),
    ("startup", lambda: WeaviateStartUpError("Could not connect"), StoreUnavailable, 503),
    (
        "old-server",
        lambda: WeaviateStartUpError("Weaviate version 1.20.0 is not supported."),
        StoreError,
        502,
    ),
    ("grpc-health", lambda: WeaviateGRPCUnavailableError(), StoreUnavailable, 503),
    ("closed-client", lambda: WeaviateClosedClientError(), StoreUnavailable, 503),
    ("retries-out", lambda: WeaviateRetryError("unavailable", 5), StoreUnavailable, 503),
    ("timeout", lambda: WeaviateTimeoutError("slow"), StoreTimeout, 504),
    ("httpx-connect", lambda: httpx.ConnectError("refused"), StoreUnavailable, 503),
    ("httpx-read-timeout", lambda: httpx.ReadTimeout("slow"), StoreTimeout, 504),
    (
        "query-unavailable",
        lambda: raised_during(
            WeaviateQueryError("x", "GRPC search"), rpc_error(grpc.StatusCode.UNAVAILABLE)
        ),
        StoreUnavailable,
        503,
    ),
    (
        "query-deadline",
        lambda: raised_during(
            WeaviateQueryError("x", "GRPC search"), rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
        ),
        StoreTimeout,
        504,
    ),
    (
        "query-internal",
        lambda: raised_during(
            WeaviateQueryError("x", "GRPC search"), rpc_error(grpc.StatusCode.INTERNAL)
        ),
        StoreError,
        502,
    ),
    (
        "batch-deadline",
        lambda: raised_during(
            WeaviateBatchError("x"), rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
        ),
        StoreTimeout,
        504,
    ),
    (
        "query-retries-out",
        lambda: raised_during(
            WeaviateQueryError("x", "GRPC search"),
            raised_during(WeaviateRetryError("x", 5), rpc_error(grpc.StatusCode.UNAVAILABLE)),
        ),
        StoreUnavailable,
        503,
    ),
    ("status-500", lambda: status_error(500), StoreError, 502),
    ("status-422", lambda: status_error(422), StoreError, 502),
    ("status-503", lambda: status_error(503), StoreUnavailable, 503),
    ("status-504", lambda: status_error(504), StoreTimeout, 504),
    ("all-failed", lambda: WeaviateInsertManyAllFailedError("bad"), StoreError, 502),
    ("unknown", lambda: ValueError("odd"), StoreError, 502),
]


@pytest.mark.parametrize(
    ("make", "kind", "status"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_map_weaviate_error(
    make: Callable[[], BaseException], kind: type[StoreError], status: int
) -> None:
    exc = make()
    mapped = map_weaviate_error(exc, "search")
    assert type(mapped) is kind
    assert mapped.__cause__ is exc
    assert "weaviate search failed" in str(mapped)
    assert to_api_error(mapped).status == status


def test_map_weaviate_error_passes_store_errors_through() -> None:
    mismatch = EmbeddingMismatch("other model")
    assert map_weaviate_error(mismatch) is mismatch


# -- construction -----------------------------------------------------------------------


def test_from_url_defaults() -> None:
    store = WeaviateVectorStore.from_url("http://localhost:8080", MODEL, DIM)
    assert (store.http_host, store.http_port, store.http_secure) == ("localhost", 8080, False)
    assert (store.grpc_host, store.grpc_port, store.grpc_secure) == ("localhost", 50051, False)
    assert store.collection_name == "Image"
    assert (store.embedding_model, store.dim) == (MODEL, DIM)
    assert isinstance(store, VectorStore)


def test_from_url_https_and_overrides() -> None:
    store = WeaviateVectorStore.from_url(
        "https://db.example.com/",
        MODEL,
        DIM,
        grpc_host="grpc-db.example.com",
        grpc_port=443,
        api_key="secret",
        collection="Photos",
        query_timeout_s=5,
    )
    assert (store.http_host, store.http_port, store.http_secure) == ("db.example.com", 443, True)
    assert (store.grpc_host, store.grpc_port, store.grpc_secure) == (
        "grpc-db.example.com",
        443,
        True,
    )
    assert store.collection_name == "Photos" and store.query_timeout_s == 5


@pytest.mark.parametrize(
    "url", ["localhost:8080", "ftp://h", "http://", "http://h:8080/v1", "http://h?x=1"]
)
def test_from_url_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        WeaviateVectorStore.from_url(url, MODEL, DIM)


@pytest.mark.parametrize("collection", ["image", "Ima-ge", "", "1Image"])
def test_rejects_bad_collection_names(collection: str) -> None:
    with pytest.raises(ValueError):
        WeaviateVectorStore(MODEL, DIM, "localhost", collection=collection)


def test_contract_opener_pickles() -> None:
    opener: Callable[[str, int], VectorStore] = WeaviateOpener(
        url="http://localhost:8080", collection="ImageTest_x", api_key="k"
    )
    copy = pickle.loads(pickle.dumps(opener))
    store = copy(MODEL, DIM)
    assert isinstance(store, WeaviateVectorStore)
    assert store.collection_name == "ImageTest_x"
    assert "WEAVIATE_URL" in WEAVIATE_SKIP_REASON


# -- against loopback ports with no Weaviate behind them ------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def store_at(port: int, grpc_port: int | None = None, **kw: Any) -> WeaviateVectorStore:
    return WeaviateVectorStore(
        MODEL,
        DIM,
        "127.0.0.1",
        http_port=port,
        grpc_port=grpc_port or closed_port(),
        init_timeout_s=kw.pop("init_timeout_s", 2),
        query_timeout_s=kw.pop("query_timeout_s", 2),
        insert_timeout_s=kw.pop("insert_timeout_s", 2),
        **kw,
    )


async def test_closed_port_is_unavailable() -> None:
    store = store_at(closed_port())
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.ensure_schema()
        assert isinstance(info.value.__cause__, WeaviateConnectionError)
        assert to_api_error(info.value).status == 503
        # Every operation connects lazily and fails the same way.
        with pytest.raises(StoreUnavailable):
            await store.count()
        with pytest.raises(StoreUnavailable):
            await store.search(np.ones(DIM, dtype=np.float32), limit=3)
    finally:
        await store.close()
        await store.close()


async def test_validation_happens_before_any_io() -> None:
    # The port is closed: these must fail (or answer) on their own, never with 503.
    store = store_at(closed_port())
    rng = np.random.default_rng(0)
    good = IndexedImage(record=make_record(), vector=rng.standard_normal(DIM).astype(np.float32))
    try:
        await store.upsert([])
        with pytest.raises(EmbeddingMismatch):
            await store.upsert(
                [good, IndexedImage(record=make_record(id=str(uuid.uuid4())), vector=np.ones(3))]
            )
        with pytest.raises(EmbeddingMismatch):
            await store.upsert(
                [IndexedImage(record=make_record(embedding_model="x"), vector=good.vector)]
            )
        with pytest.raises(ValueError):
            await store.upsert(
                [IndexedImage(record=make_record(id="not-a-uuid"), vector=good.vector)]
            )
        with pytest.raises(ValueError):
            await store.upsert([good, good])
        with pytest.raises(ValueError):
            await store.upsert([IndexedImage(record=make_record(), vector=np.zeros(DIM))])
        with pytest.raises(EmbeddingMismatch):
            await store.search(np.ones(DIM + 1, dtype=np.float32), limit=3)
        with pytest.raises(ValueError):
            await store.list(0)
        with pytest.raises(ValueError):
            await store.list(5, "Zm9v")
        # Hostile ids match nothing without asking the server.
        for hostile in ["", "x' OR '1'='1", "../objects"]:
            assert await store.get(hostile) is None
            assert await store.get_vector(hostile) is None
            assert await store.delete(hostile) is False
    finally:
        await store.close()


# -- against the in-memory Weaviate on loopback -----------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep connect() on loopback: the client's best-effort check of its latest version
    on PyPI goes through a proxy that refuses at once (and is ignored by the client),
    while loopback stays direct for HTTP and gRPC."""
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


@pytest.fixture
async def mock(offline: None) -> AsyncIterator[MockWeaviate]:
    async with MockWeaviate().serving() as server:
        yield server


StoreOpener = Callable[..., WeaviateVectorStore]


@pytest.fixture
async def open_store(mock: MockWeaviate) -> AsyncIterator[StoreOpener]:
    """Stores on the mock (short timeouts), closed before the mock stops."""
    stores: list[WeaviateVectorStore] = []

    def make(model: str = MODEL, dim: int = DIM, **kw: Any) -> WeaviateVectorStore:
        for name in ("init_timeout_s", "query_timeout_s", "insert_timeout_s"):
            kw.setdefault(name, 2)
        store = WeaviateVectorStore(
            model, dim, "127.0.0.1", http_port=mock.http_port, grpc_port=mock.grpc_port, **kw
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


def patch_store_constant(monkeypatch: pytest.MonkeyPatch, name: str, value: Any) -> bool:
    """Set a module constant of the store package wherever one of its modules defines or
    imports it (the package's layout is not this test's business); False when none does."""
    found = False
    for info in pkgutil.iter_modules(weaviate_store_package.__path__):
        module = importlib.import_module(f"{weaviate_store_package.__name__}.{info.name}")
        if hasattr(module, name):
            monkeypatch.setattr(module, name, value)
            found = True
    return found


def vector_of(i: int) -> np.ndarray:
    """A distinct unit-free vector per record: its angle to all-ones grows with i."""
    v = np.ones(DIM, dtype=np.float32)
    v[: i % DIM + 1] = -0.5
    v[0] = float(i + 1)
    return v


def _records(n: int, **overrides: Any) -> list[ImageRecord]:
    return [
        make_record(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"r-{i}")), **overrides) for i in range(n)
    ]


def _population() -> list[ImageRecord]:
    return [
        make_record(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"pop-{i}")), **population_fields(i))
        for i in range(POPULATION_SIZE)
    ]


async def filled(open_store: StoreOpener, records: list[ImageRecord]) -> WeaviateVectorStore:
    """A store whose collection holds ``records`` (vector_of(i) each), written through
    the store: gRPC BatchObjects to the mock."""
    store = open_store()
    await store.upsert([IndexedImage(record=r, vector=vector_of(i)) for i, r in enumerate(records)])
    return store


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def wire_filter(request: Any) -> Any:
    """The filter a gRPC request carried, as plain data; None when it carried none."""
    return filter_repr(request.filters) if request.HasField("filters") else None


def stored_json(record: ImageRecord) -> dict[str, Any]:
    """The record's properties as JSON, as a client would have written them."""
    return {
        k: format_date(v) if isinstance(v, datetime) else v
        for k, v in record_to_properties(record).items()
    }


async def schema_made_by(model: str = MODEL, dim: int = DIM) -> dict[str, Any]:
    """The class JSON that a store for (model, dim) creates, as the server keeps it."""
    async with MockWeaviate().serving() as other:
        store = WeaviateVectorStore(
            model, dim, "127.0.0.1", http_port=other.http_port, grpc_port=other.grpc_port
        )
        try:
            await store.ensure_schema()
        finally:
            await store.close()
        return copy.deepcopy(other.collections["Image"].schema)


# -- schema on the wire ------------------------------------------------------------------


async def test_collection_request_body(mock: MockWeaviate, open_store: StoreOpener) -> None:
    """What the client sends to create the collection: no vectorizer, HNSW, cosine."""
    await open_store().ensure_schema()
    (body,) = mock.bodies("POST /v1/schema")
    assert body["class"] == "Image"
    assert body["vectorizer"] == "none"
    assert body["vectorIndexType"] == "hnsw"
    assert body["vectorIndexConfig"]["distance"] == "cosine"
    assert "vectorConfig" not in body
    assert parse_collection_description(body["description"]) == (MODEL, DIM)
    wire = {p["name"]: p for p in body["properties"]}
    assert set(wire) == {p.name for p in image_properties()}
    assert wire["caption"]["tokenization"] == "word"
    assert wire["caption"]["indexSearchable"] is True
    assert wire["tags"]["dataType"] == ["text[]"]
    assert wire["created_at"]["dataType"] == ["date"]
    assert wire["sha256"]["tokenization"] == "field"
    assert wire["width"]["dataType"] == ["int"]


# -- server failures, through the real client ---------------------------------------------


@pytest.mark.parametrize(
    ("op", "status", "kind", "api_status"),
    [
        ("GET /v1/meta", 500, StoreError, 502),
        ("GET /v1/meta", 503, StoreUnavailable, 503),
        ("GET /v1/meta", 401, StoreError, 502),
        ("GET /v1/schema/Image", 500, StoreError, 502),
        ("GET /v1/schema/Image", 503, StoreUnavailable, 503),
        ("GET /v1/schema/Image", 504, StoreTimeout, 504),
        ("POST /v1/schema", 500, StoreError, 502),
        ("POST /v1/schema", 422, StoreError, 502),  # refused, and nothing made meanwhile
    ],
)
async def test_server_error_statuses(
    mock: MockWeaviate,
    open_store: StoreOpener,
    op: str,
    status: int,
    kind: type[StoreError],
    api_status: int,
) -> None:
    mock.fail(op, Fault(status=status))
    store = open_store()
    with pytest.raises(StoreError) as info:
        await store.ensure_schema()
    assert type(info.value) is kind
    assert to_api_error(info.value).status == api_status
    if op.startswith("POST"):
        assert "Image" not in mock.collections
    # A failed open lets go of its connections, and the next call connects afresh.
    assert await mock.wait_http_connections_closed()
    connects = len(mock.ops("GET /v1/meta"))
    with pytest.raises(StoreError):
        await store.count()
    assert len(mock.ops("GET /v1/meta")) == connects + 1


async def test_server_that_never_answers_is_a_timeout(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    mock.fail("GET /v1/meta", Fault(hang=True))
    store = open_store(init_timeout_s=0.5, query_timeout_s=0.5)
    with pytest.raises(StoreTimeout) as info:
        await store.ensure_schema()
    assert to_api_error(info.value).status == 504


async def test_a_server_too_old_for_the_client_is_not_an_outage(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    mock.version = "1.20.0"
    with pytest.raises(StoreError) as info:
        await open_store().ensure_schema()
    assert type(info.value) is StoreError
    assert to_api_error(info.value).status == 502
    assert "not supported" in str(info.value.__cause__)


async def test_grpc_health_check_failing_is_unavailable(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    mock.fail("grpc:Health/Check", Fault(code=grpc.StatusCode.UNAVAILABLE))
    with pytest.raises(StoreUnavailable) as info:
        await open_store().ensure_schema()
    assert isinstance(info.value.__cause__, WeaviateGRPCUnavailableError)
    assert to_api_error(info.value).status == 503
    assert mock.ops("GET /v1/schema/*") == []  # refused at connect, before the schema


@pytest.mark.parametrize(
    ("code", "kind", "api_status"),
    [
        (grpc.StatusCode.INTERNAL, StoreError, 502),
        (grpc.StatusCode.DEADLINE_EXCEEDED, StoreTimeout, 504),
        (grpc.StatusCode.INVALID_ARGUMENT, StoreError, 502),
    ],
)
async def test_grpc_search_statuses(
    mock: MockWeaviate,
    open_store: StoreOpener,
    code: grpc.StatusCode,
    kind: type[StoreError],
    api_status: int,
) -> None:
    store = await filled(open_store, _records(2))
    mock.fail("grpc:Search", Fault(code=code))
    with pytest.raises(StoreError) as info:
        await store.search(np.ones(DIM, dtype=np.float32), 3)
    assert type(info.value) is kind
    assert to_api_error(info.value).status == api_status
    assert isinstance(info.value.__cause__, WeaviateQueryError)


async def test_grpc_search_that_never_answers_is_a_timeout(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    store = open_store(query_timeout_s=0.5)
    await store.ensure_schema()
    mock.fail("grpc:Search", Fault(hang=True))
    with pytest.raises(StoreTimeout) as info:
        await store.list(3)
    assert to_api_error(info.value).status == 504


async def test_grpc_unavailable_once_is_retried_by_the_client(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    store = await filled(open_store, _records(2))
    mock.fail("grpc:Aggregate", Fault(code=grpc.StatusCode.UNAVAILABLE, times=1))
    assert await store.count() == 2
    assert mock.ops("grpc:Aggregate") == ["grpc:Aggregate"] * 2


async def test_grpc_unavailable_with_the_server_down_is_unavailable(
    mock: MockWeaviate, open_store: StoreOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client retries UNAVAILABLE for about a minute; the store's own deadline (made
    # short here when the package lets us) fires first, and the liveness probe, down
    # too, makes it an outage rather than a slow server.
    patch_store_constant(monkeypatch, "_DEADLINE_MARGIN_S", 0.5)
    store = open_store(query_timeout_s=0.5)
    await store.ensure_schema()
    mock.fail("grpc:Search", Fault(code=grpc.StatusCode.UNAVAILABLE))
    mock.fail("GET /v1/.well-known/live", Fault(status=503))
    with pytest.raises(StoreUnavailable) as info:
        await store.search(np.ones(DIM, dtype=np.float32), 3)
    assert to_api_error(info.value).status == 503
    assert mock.ops("GET /v1/.well-known/live")


async def test_http_failure_of_a_patch_is_a_store_error(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    (record,) = _records(1)
    store = await filled(open_store, [record])
    mock.fail("PATCH /v1/objects/*", Fault(status=500))
    with pytest.raises(StoreError) as info:
        await store.update_tags(record.id, ["x"])
    assert type(info.value) is StoreError and to_api_error(info.value).status == 502
    mock.fail("DELETE /v1/objects/*", Fault(status=503))
    with pytest.raises(StoreUnavailable):
        await store.delete(record.id)


# -- collection creation and races -----------------------------------------------------------


async def test_creates_a_missing_collection(mock: MockWeaviate, open_store: StoreOpener) -> None:
    store = open_store()
    await store.ensure_schema()
    (body,) = mock.bodies("POST /v1/schema")
    assert parse_collection_description(body["description"]) == (MODEL, DIM)
    assert mock.collections["Image"].schema["vectorIndexConfig"]["distance"] == "cosine"
    seen = len(mock.requests)
    await store.ensure_schema()  # idempotent: nothing more is asked, let alone created
    assert len(mock.requests) == seen
    await store.close()
    assert await mock.wait_http_connections_closed()
    # Another replica of the same model opens what the first one made.
    await open_store().ensure_schema()
    assert len(mock.ops("POST /v1/schema")) == 1


async def test_opens_an_existing_collection(mock: MockWeaviate, open_store: StoreOpener) -> None:
    mock.add_collection(await schema_made_by())
    await open_store().ensure_schema()
    assert mock.ops("POST /v1/schema*") == []
    assert mock.ops("GET /v1/schema/Image") != []


async def test_losing_the_creation_race_is_fine(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    rival = await schema_made_by()
    # Another replica creates it between our exists() and our create(): ours gets a 422.
    mock.before("POST /v1/schema", lambda: mock.add_collection(rival))
    store = open_store()
    await store.ensure_schema()
    assert len(mock.ops("POST /v1/schema")) == 1
    assert mock.collections["Image"].schema["description"] == rival["description"]
    # Usable afterwards: the connection was kept.
    assert await store.count() == 0


async def test_losing_the_race_to_another_model_is_a_mismatch(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    rival = await schema_made_by(model="other/model")
    mock.before("POST /v1/schema", lambda: mock.add_collection(rival))
    with pytest.raises(EmbeddingMismatch):
        await open_store().ensure_schema()
    assert await mock.wait_http_connections_closed()


def _other_dim(schema: dict[str, Any]) -> None:
    schema["description"] = collection_description(MODEL, DIM * 2)


def _other_model(schema: dict[str, Any]) -> None:
    schema["description"] = collection_description("other/model", DIM)


def _l2(schema: dict[str, Any]) -> None:
    schema["vectorIndexConfig"]["distance"] = "l2-squared"


def _foreign(schema: dict[str, Any]) -> None:
    schema["description"] = "someone else's"


def _missing_property(schema: dict[str, Any]) -> None:
    schema["properties"] = schema["properties"][1:]


@pytest.mark.parametrize(
    ("spoil", "error"),
    [
        (_other_dim, EmbeddingMismatch),
        (_other_model, EmbeddingMismatch),
        (_l2, StoreError),
        (_foreign, StoreError),
        (_missing_property, StoreError),
    ],
    ids=["other-dim", "other-model", "l2", "foreign", "missing-property"],
)
async def test_refuses_unsuitable_collections(
    mock: MockWeaviate,
    open_store: StoreOpener,
    spoil: Callable[[dict[str, Any]], None],
    error: type[StoreError],
) -> None:
    schema = await schema_made_by()
    spoil(schema)
    mock.add_collection(schema)
    with pytest.raises(error) as info:
        await open_store().ensure_schema()
    assert type(info.value) is error
    assert mock.ops("POST /v1/schema*") == []  # nothing is changed on a refused collection
    assert await mock.wait_http_connections_closed()  # a refused store lets go of them


# -- filters, evaluated by the mock from the wire ------------------------------------------


async def every_page(store: WeaviateVectorStore, f: ImageFilter | None, size: int) -> list[str]:
    """Every id listed, page by page (bounded: a cursor that does not advance fails)."""
    ids: list[str] = []
    cursor: str | None = None
    for _ in range(POPULATION_SIZE + 2):
        page = await store.list(size, cursor, f)
        ids.extend(r.id for r in page.records)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor
    raise AssertionError(f"listing did not end: {len(ids)} ids so far")


@pytest.mark.parametrize(("name", "image_filter"), FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
async def test_filter_admits_what_the_reference_admits(
    mock: MockWeaviate, open_store: StoreOpener, name: str, image_filter: ImageFilter
) -> None:
    records = _population()
    store = await filled(open_store, records)
    expected = sorted(r.id for r in records if image_filter.matches(r))

    assert await every_page(store, image_filter, 5) == expected
    hits = await store.search(np.ones(DIM, dtype=np.float32), POPULATION_SIZE, image_filter)
    assert sorted(h.record.id for h in hits) == expected
    # Every caption holds "photo": the keyword search admits what the filter admits.
    keyword = await store.keyword_search("photo", POPULATION_SIZE, image_filter)
    assert sorted(h.record.id for h in keyword) == expected
    assert await store.count(image_filter) == len(expected)

    (vector_search,) = [s for s in mock.searches() if s.HasField("near_vector")]
    (keyword_search,) = [s for s in mock.searches() if s.HasField("bm25_search")]
    (aggregate,) = mock.bodies("grpc:Aggregate")
    if image_filter.is_empty():
        # No filter is sent at all, and listing goes through the cursor API.
        assert wire_filter(vector_search) is None and wire_filter(aggregate) is None
        assert all(
            s.after
            for s in mock.searches()
            if not s.HasField("near_vector") and not s.HasField("bm25_search")
        )
    else:
        sent = wire_filter(vector_search)
        assert sent is not None
        assert wire_filter(keyword_search) == sent == wire_filter(aggregate)


async def test_filter_with_a_cursor_admits_only_later_ids(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    records = _population()
    store = await filled(open_store, records)
    ids = sorted(r.id for r in records)
    image_filter = ImageFilter(tags_any=("cat",))
    admitted = {r.id for r in records if image_filter.matches(r)}
    for after in (ids[0], ids[11], ids[-1]):
        page = await store.list(POPULATION_SIZE, encode_cursor(after), image_filter)
        assert [r.id for r in page.records] == [i for i in ids if i > after and i in admitted]
        assert page.next_cursor is None
        sent = wire_filter(mock.searches()[-1])
        assert sent == (
            "AND",
            [("GREATER_THAN", "_id", after), ("CONTAINS_ANY", "tags", ["cat"])],
        )
    page = await store.list(POPULATION_SIZE, encode_cursor(ids[5]))
    assert [r.id for r in page.records] == ids[6:]
    last = mock.searches()[-1]
    assert last.after == ids[5] and wire_filter(last) is None and not last.sort_by


async def test_filter_bounds_out_of_int64_are_clamped(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    store = await filled(open_store, _population())
    assert await store.count(ImageFilter(min_width=2**70, min_height=-(2**70))) == 0
    (aggregate,) = mock.bodies("grpc:Aggregate")
    assert wire_filter(aggregate) == (
        "AND",
        [
            ("GREATER_THAN_EQUAL", "width", 2**63 - 1),
            ("GREATER_THAN_EQUAL", "height", -(2**63) + 1),
        ],
    )
    assert await store.count(ImageFilter(min_height=-(2**70))) == POPULATION_SIZE


async def test_naive_datetimes_in_filters_are_utc(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    records = _population()
    store = await filled(open_store, records)
    naive = datetime(2024, 3, 5, 12, 0)
    aware = naive.replace(tzinfo=timezone.utc)
    got = await every_page(store, ImageFilter(created_after=naive), POPULATION_SIZE)
    assert got == sorted(r.id for r in records if r.created_at > aware)
    (name, target, value) = wire_filter(mock.searches()[-1])
    assert (name, target) == ("GREATER_THAN", "created_at")
    assert parse_date(value) == aware  # RFC 3339 with its offset: the instant, in UTC


# -- requests and answers ------------------------------------------------------------------


async def test_search_sends_the_filter_and_reads_back_vectors(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    records = _records(3, tags=["cat"])
    store = await filled(open_store, records)
    f = ImageFilter(tags_any=("cat",), min_width=10)
    query = np.ones(DIM, dtype=np.float32)
    hits = await store.search(query, 5, f)
    (request,) = mock.searches()
    assert request.limit == 5 and request.metadata.vector and request.metadata.distance
    assert set(request.properties.non_ref_properties) == set(ImageRecord.model_fields) - {"id"}
    assert wire_filter(request) == (
        "AND",
        [("CONTAINS_ANY", "tags", ["cat"]), ("GREATER_THAN_EQUAL", "width", 10)],
    )
    # Nearest first, the similarity being the cosine of the stored vector and the query.
    expected = sorted(range(3), key=lambda i: -cosine(vector_of(i), query))
    assert [h.record.id for h in hits] == [records[i].id for i in expected]
    for hit, i in zip(hits, expected, strict=True):
        assert hit.score == hit.vector_score == pytest.approx(cosine(vector_of(i), query), abs=1e-5)
        assert hit.keyword_score is None
        assert hit.vector is not None and hit.vector.dtype == np.float32
        assert hit.vector.tolist() == vector_of(i).tolist()
        assert hit.record.model_dump() == records[i].model_dump()
    # Without a filter, none is sent.
    await store.search(query, 5)
    assert wire_filter(mock.searches()[-1]) is None
    # A filter that admits nothing: the server's empty answer, not an error.
    assert await store.search(query, 5, ImageFilter(tags_any=("dog",))) == []


async def test_keyword_search_request(mock: MockWeaviate, open_store: StoreOpener) -> None:
    records = [
        *_records(1, caption="a red car", source_url="https://example.com/a"),
        make_record(id=str(uuid.uuid4()), caption="a red boat", source_url="https://example.com/"),
        make_record(id=str(uuid.uuid4()), caption="a red car", source_url="https://other.org/"),
    ]
    store = await filled(open_store, records)
    f = ImageFilter(source_domains=("example.com",))
    hits = await store.keyword_search("Red, CAR!", 3, f)
    (request,) = mock.searches()
    assert request.bm25_search.query == "red car"
    assert list(request.bm25_search.properties) == ["caption"]
    assert request.limit == 3 and request.metadata.vector and request.metadata.score
    assert wire_filter(request) == ("CONTAINS_ANY", "source_domain", ["example.com"])
    # Any term (OR), both terms rank first; the other domain is filtered out.
    assert [h.record.id for h in hits] == [records[0].id, records[1].id]
    for hit in hits:
        assert hit.score == hit.keyword_score and hit.score is not None and hit.score > 0
        assert hit.vector_score is None and hit.vector is not None
    assert hits[0].score > hits[1].score
    # No searchable term: nothing is asked.
    assert await store.keyword_search(" ?! ", 3) == []
    assert len(mock.searches()) == 1
    with pytest.raises(ValueError):
        await store.keyword_search("red", 0)
    assert len(mock.searches()) == 1


async def test_count_sends_the_filter(mock: MockWeaviate, open_store: StoreOpener) -> None:
    records = [*_records(3, content_type="image/png"), *_records(5)[3:]]
    store = await filled(open_store, records)
    f = ImageFilter(content_types=("image/png",))
    assert await store.count(f) == 3
    assert await store.count() == 5
    with_filter, without = mock.bodies("grpc:Aggregate")
    assert with_filter.objects_count and without.objects_count
    assert wire_filter(with_filter) == ("CONTAINS_ANY", "content_type", ["image/png"])
    assert wire_filter(without) is None


async def test_filtered_list_pages_by_id_without_the_cursor_api(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    records = [*_records(4, tags=["cat"]), *_records(6)[4:]]
    ids = sorted(r.id for r in records)
    cats = sorted(r.id for r in records if "cat" in r.tags)
    store = await filled(open_store, records)
    f = ImageFilter(tags_all=("cat",))

    page = await store.list(2, None, f)

    (first,) = mock.searches()
    assert not first.after and first.limit == 3
    assert [(list(s.path), s.ascending) for s in first.sort_by] == [(["_id"], True)]
    assert wire_filter(first) == ("CONTAINS_ALL", "tags", ["cat"])
    assert [r.id for r in page.records] == cats[:2]
    assert page.next_cursor is not None and decode_cursor(page.next_cursor) == cats[1]

    second = await store.list(2, page.next_cursor, f)
    assert wire_filter(mock.searches()[-1]) == (
        "AND",
        [("GREATER_THAN", "_id", cats[1]), ("CONTAINS_ALL", "tags", ["cat"])],
    )
    assert [r.id for r in second.records] == cats[2:4] and second.next_cursor is None

    # Unfiltered (or an empty filter): the cursor API, as before.
    for empty in (None, ImageFilter()):
        plain_page = await store.list(2, page.next_cursor, empty)
        plain = mock.searches()[-1]
        assert plain.after == cats[1] and wire_filter(plain) is None and not plain.sort_by
        assert [r.id for r in plain_page.records] == [i for i in ids if i > cats[1]][:2]


async def test_records_come_back_as_written(mock: MockWeaviate, open_store: StoreOpener) -> None:
    """Dates come back in Go's RFC3339Nano (trailing zeros dropped), empty tags and a
    missing source_url as the server keeps them: the records are unchanged."""
    records = [
        make_record(id=str(uuid.uuid4()), created_at=datetime(2024, 1, 2, tzinfo=timezone.utc)),
        make_record(
            id=str(uuid.uuid4()),
            created_at=datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=timezone(timedelta(hours=9))),
            source_url="https://Example.com/x?y='1'",
            tags=["ünï", "x'y", "a\\b"],
        ),
    ]
    store = await filled(open_store, records)
    for record, vector in zip(records, (vector_of(0), vector_of(1)), strict=True):
        got = await store.get(record.id)
        assert got is not None and got.model_dump() == record.model_dump()
        stored = await store.get_vector(record.id)
        assert stored is not None and stored.tolist() == vector.tolist()
    assert await store.get(str(uuid.uuid4())) is None
    assert await store.get_vector(str(uuid.uuid4())) is None
    # The id lookups are `_id` equality filters on the wire, with the canonical id.
    lookups = [wire_filter(s) for s in mock.searches()]
    assert lookups[0] == ("EQUAL", "_id", records[0].id)


async def test_upsert_replaces_and_reports_refused_objects(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    first, second, third = _records(3)
    store = await filled(open_store, [first, second])
    # A batch write of an existing id replaces the object, vector included.
    changed = first.model_copy(update={"caption": "new caption", "tags": ["z"]})
    await store.upsert([IndexedImage(record=changed, vector=vector_of(7))])
    got = await store.get(first.id)
    assert got is not None and (got.caption, got.tags) == ("new caption", ["z"])
    vec = await store.get_vector(first.id)
    assert vec is not None and vec.tolist() == vector_of(7).tolist()
    assert await store.count() == 2
    # Objects the server refuses are named; the others are written.
    mock.refuse_objects[third.id] = "boom: refused"
    with pytest.raises(StoreError, match=third.id) as info:
        await store.upsert(
            [
                IndexedImage(record=third, vector=vector_of(3)),
                IndexedImage(record=second, vector=vector_of(4)),
            ]
        )
    assert "1 of 2" in str(info.value) and "boom: refused" in str(info.value)
    assert await store.get(third.id) is None
    # All refused: every id is named.
    mock.refuse_objects[second.id] = "boom: refused"
    with pytest.raises(StoreError) as all_failed:
        await store.upsert(
            [
                IndexedImage(record=third, vector=vector_of(3)),
                IndexedImage(record=second, vector=vector_of(4)),
            ]
        )
    assert "2 of 2" in str(all_failed.value)
    assert third.id in str(all_failed.value) and second.id in str(all_failed.value)


async def test_delete(mock: MockWeaviate, open_store: StoreOpener) -> None:
    first, second = _records(2)
    store = await filled(open_store, [first, second])
    assert await store.delete(first.id) is True
    assert await store.delete(first.id) is False
    assert mock.ops("DELETE *") == [f"DELETE /v1/objects/Image/{first.id}"] * 2
    assert await store.count() == 1 and await store.get(second.id) is not None


async def test_updates_patch_and_read_back(mock: MockWeaviate, open_store: StoreOpener) -> None:
    (record,) = _records(1, caption="old", tags=["a"])
    store = await filled(open_store, [record])

    updated = await store.update_tags(record.id, ["b", "x'y"])

    assert updated is not None and updated.tags == ["b", "x'y"]
    assert updated.model_dump(exclude={"tags"}) == record.model_dump(exclude={"tags"})
    assert mock.ops("PATCH *") == [f"PATCH /v1/objects/Image/{record.id}"]
    (patch,) = mock.bodies("PATCH *")
    assert patch["properties"] == {"tags": ["b", "x'y"]}
    # Read back after the patch, by id.
    assert mock.ops()[-2:] == [f"PATCH /v1/objects/Image/{record.id}", "grpc:Search"]

    captioned = await store.update_caption(record.id, "new", "blip/v2")
    assert captioned is not None
    assert (captioned.caption, captioned.caption_model, captioned.tags) == (
        "new",
        "blip/v2",
        ["b", "x'y"],
    )
    # A caption written by hand is a done one: the status and any error go with it.
    assert mock.bodies("PATCH *")[-1]["properties"] == {
        "caption": "new",
        "caption_model": "blip/v2",
        "caption_status": "done",
        "caption_error": "",
    }
    # The vector stayed (a PATCH, not a replacement).
    vec = await store.get_vector(record.id)
    assert vec is not None and vec.tolist() == vector_of(0).tolist()


async def test_updates_of_unknown_ids(mock: MockWeaviate, open_store: StoreOpener) -> None:
    store = await filled(open_store, _records(1))
    before = len(mock.requests)
    missing = str(uuid.uuid4())
    assert await store.update_tags(missing, ["x"]) is None
    assert await store.update_caption(missing, "c", "m") is None
    # 404 -> None, nothing read back.
    assert mock.ops()[before:] == [f"PATCH /v1/objects/Image/{missing}"] * 2
    seen = len(mock.requests)
    for hostile in ["", "x' OR '1'='1", missing.upper(), "../objects"]:
        assert await store.update_tags(hostile, ["x"]) is None
        assert await store.get(hostile) is None
        assert await store.delete(hostile) is False
    assert len(mock.requests) == seen  # refused before any request


# What the first version's collection lacked.
LATER_PROPERTIES = ("source_domain", "caption_status", "caption_error")


def _legacy_schema(schema: dict[str, Any], drop: tuple[str, ...] = LATER_PROPERTIES) -> None:
    schema["properties"] = [p for p in schema["properties"] if p["name"] not in drop]


async def test_ensure_schema_adds_later_properties_and_fills_them_in(
    mock: MockWeaviate, open_store: StoreOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert patch_store_constant(monkeypatch, "_BACKFILL_PAGE", 2), "no _BACKFILL_PAGE to set"
    with_url = _records(3, source_url="https://Example.com/x")
    without_url = _records(4)[3:]
    schema = await schema_made_by()
    _legacy_schema(schema)
    legacy = mock.add_collection(schema)
    for i, r in enumerate([*with_url, *without_url]):
        props = stored_json(r)
        for name in LATER_PROPERTIES:
            props.pop(name, None)
        mock.put_object("Image", r.id, props, vector_of(i).tolist())
    store = open_store()

    await store.ensure_schema()

    added = {body["name"]: body for body in mock.bodies("POST /v1/schema/Image/properties")}
    assert set(added) == set(LATER_PROPERTIES)
    for name in ("source_domain", "caption_status"):
        assert added[name]["dataType"] == ["text"] and added[name]["tokenization"] == "field"
    # Every old object was captioned: it gets "done"; those with a URL get their domain.
    patches = {
        op.rsplit("/", 1)[1]: b["properties"]
        for op, b in zip(mock.ops("PATCH *"), mock.bodies("PATCH *"), strict=True)
    }
    assert set(patches) == {r.id for r in [*with_url, *without_url]}
    for r in with_url:
        assert patches[r.id] == {"source_domain": "example.com", "caption_status": "done"}
        assert legacy.objects[r.id].properties["source_domain"] == "example.com"
    assert patches[without_url[0].id] == {"caption_status": "done"}
    assert "source_domain" not in legacy.objects[without_url[0].id].properties
    # Paged through the cursor API, two at a time, to the end.
    pages = [s for s in mock.searches() if s.after]
    assert [p.limit for p in pages] == [2, 2, 2]
    assert set(pages[0].properties.non_ref_properties) == {
        "source_url",
        "source_domain",
        "caption_status",
    }
    # Opened once: a second ensure_schema asks nothing.
    seen = len(mock.requests)
    await store.ensure_schema()
    assert len(mock.requests) == seen
    # The records read back whole, with the domain filled in.
    got = await store.get(with_url[0].id)
    assert got is not None and got.source_domain == "example.com"
    assert await store.count(ImageFilter(source_domains=("example.com",))) == 3
    assert await store.count(ImageFilter(caption_statuses=("done",))) == 4


async def test_a_rival_adding_source_domain_first_is_fine(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    schema = await schema_made_by()
    _legacy_schema(schema, drop=("source_domain",))
    mock.add_collection(schema)
    for r in _records(2, source_url="https://e.com/"):
        props = stored_json(r)
        props.pop("source_domain", None)
        mock.put_object("Image", r.id, props, vector_of(0).tolist())
    rival = next(p for p in (await schema_made_by())["properties"] if p["name"] == "source_domain")
    # Another replica adds it between our schema read and our add: ours gets a 422.
    mock.before(
        "POST /v1/schema/Image/properties",
        lambda: mock.collections["Image"].schema["properties"].append(rival),
    )
    store = open_store()
    await store.ensure_schema()
    assert len(mock.ops("POST /v1/schema/Image/properties")) == 1
    assert mock.ops("PATCH *") == [] and mock.searches() == []  # no backfill: the rival does it


async def test_a_collection_missing_other_properties_is_still_refused(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    schema = await schema_made_by()
    _legacy_schema(schema, drop=("source_domain", "tags"))
    mock.add_collection(schema)
    with pytest.raises(StoreError, match="lacks properties"):
        await open_store().ensure_schema()
    assert mock.ops("POST /v1/schema*") == []


# -- the caption backlog's updates -------------------------------------------------------


async def test_pending_records_go_without_a_caption_and_filter_by_status(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    pending = _records(2, caption=None, caption_status="pending")
    store = await filled(open_store, pending)
    # No caption property is sent for a pending record (rather than a null).
    stored = mock.collections["Image"].objects[pending[0].id].properties
    assert "caption" not in stored and "caption_error" not in stored
    assert stored["caption_status"] == "pending"
    got = await store.get(pending[0].id)
    assert got is not None and got.model_dump() == pending[0].model_dump()
    assert await store.count(ImageFilter(caption_statuses=("pending",))) == 2
    assert await store.count(ImageFilter(caption_statuses=("done", "failed"))) == 0


async def test_set_caption_patches_only_a_pending_record(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    (record,) = _records(1, caption=None, caption_status="pending", tags=["keep"])
    store = await filled(open_store, [record])
    written = await store.set_caption(record.id, "a zebra", "blip/v2")
    assert written is not None
    assert (written.caption, written.caption_status, written.tags) == ("a zebra", "done", ["keep"])
    assert mock.bodies("PATCH *")[-1]["properties"] == {
        "caption": "a zebra",
        "caption_model": "blip/v2",
        "caption_status": "done",
        "caption_error": "",
    }
    # Done now: a second writer's caption is not sent at all.
    patches = len(mock.ops("PATCH *"))
    assert await store.set_caption(record.id, "a horse", "other") is None
    assert await store.fail_caption(record.id, "late") is None
    assert len(mock.ops("PATCH *")) == patches
    got = await store.get(record.id)
    assert got is not None and got.caption == "a zebra"


async def test_fail_and_requeue_clear_and_set_the_reason(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    (record,) = _records(1, caption=None, caption_status="pending")
    store = await filled(open_store, [record])
    failed = await store.fail_caption(record.id, "RuntimeError: no model")
    assert failed is not None
    assert (failed.caption_status, failed.caption_error) == ("failed", "RuntimeError: no model")
    requeued = await store.requeue_caption(record.id)
    assert requeued is not None
    # The empty string clears the reason (a PATCH merges; it cannot unset a property).
    assert (requeued.caption_status, requeued.caption_error) == ("pending", None)
    assert mock.bodies("PATCH *")[-1]["properties"] == {
        "caption_status": "pending",
        "caption_error": "",
    }


async def test_caption_updates_of_a_deleted_record_create_nothing(
    mock: MockWeaviate, open_store: StoreOpener
) -> None:
    (record,) = _records(1, caption=None, caption_status="pending")
    store = await filled(open_store, [record])
    assert await store.delete(record.id)
    assert await store.set_caption(record.id, "a ghost", "m") is None
    assert await store.requeue_caption(record.id) is None
    assert record.id not in mock.collections["Image"].objects
    # The conditional steps read first; the unconditional one's PATCH answers 404.
    assert mock.ops("PATCH *") == [f"PATCH /v1/objects/Image/{record.id}"]
