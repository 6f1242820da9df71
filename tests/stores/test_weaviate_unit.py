"""Weaviate store logic that needs no Weaviate server.

The contract suite covers the store against a real server when WEAVIATE_URL is set;
here: the property schema, record <-> properties, distance -> similarity, cursors, error
mapping (with the weaviate package's own exceptions), validation that happens before any
I/O, and the real client failing cleanly against loopback ports with no Weaviate behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from weaviate.classes.config import DataType, Tokenization, VectorDistances
from weaviate.collections.classes.config import _CollectionConfigCreate
from weaviate.collections.classes.filters import (
    _FilterAnd,
    _FilterOr,
    _Filters,
    _FilterValue,
    _Operator,
)
from weaviate.collections.filters import _FilterToGRPC, _FilterToREST
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
    collection_config,
    collection_description,
    decode_cursor,
    encode_cursor,
    image_properties,
    map_weaviate_error,
    parse_collection_description,
    properties_to_record,
    record_to_properties,
    similarity_from_distance,
    weaviate_filter,
)
from tests.stores.filter_cases import FILTER_CASES, POPULATION_SIZE, population_fields
from tests.stores.weaviate_backend import WEAVIATE_SKIP_REASON, WeaviateOpener

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
    assert all(p.indexFilterable for p in props.values())


def test_collection_request_body() -> None:
    """What the client sends to create the collection: no vectorizer, HNSW, cosine."""
    body = _CollectionConfigCreate(name="Image", **collection_config(MODEL, DIM))._to_dict()
    assert body["class"] == "Image"
    assert body["vectorizer"] == "none"
    assert body["vectorIndexType"] == "hnsw"
    assert body["vectorIndexConfig"]["distance"] == "cosine"
    assert "vectorConfig" not in body
    assert parse_collection_description(body["description"]) == (MODEL, DIM)
    wire = {p["name"]: p for p in body["properties"]}
    assert wire["caption"]["tokenization"] == "word"
    assert wire["tags"]["dataType"] == ["text[]"]
    assert wire["created_at"]["dataType"] == ["date"]
    assert wire["sha256"]["tokenization"] == "field"


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


@contextlib.asynccontextmanager
async def fake_http(answer_meta: bool, status: int = 200) -> AsyncIterator[int]:
    """An HTTP/1.1 server on loopback: 404 for OIDC discovery (no auth), then for every
    other request either `status` or, when answer_meta is False, no answer at all."""
    hang = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if b"openid-configuration" in path:
                    code, body = 404, b"{}"
                elif not answer_meta:
                    await hang.wait()
                    return
                else:
                    code, body = status, b'{"error": [{"message": "boom"}]}'
                writer.write(
                    b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (code, len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        hang.set()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("status", "kind", "api_status"),
    [(500, StoreError, 502), (503, StoreUnavailable, 503), (401, StoreError, 502)],
)
async def test_server_error_statuses(status: int, kind: type[StoreError], api_status: int) -> None:
    async with fake_http(answer_meta=True, status=status) as port:
        store = store_at(port)
        try:
            with pytest.raises(StoreError) as info:
                await store.ensure_schema()
            assert type(info.value) is kind
            assert to_api_error(info.value).status == api_status
        finally:
            await store.close()


async def test_server_that_never_answers_is_a_timeout() -> None:
    async with fake_http(answer_meta=False) as port:
        store = store_at(port, init_timeout_s=0.5, query_timeout_s=0.5)
        try:
            with pytest.raises(StoreTimeout) as info:
                await store.ensure_schema()
            assert to_api_error(info.value).status == 504
        finally:
            await store.close()


# -- collection creation races, with a stand-in client -----------------------------------


class FakeCollections:
    """Just enough of ``client.collections`` for ensure_schema."""

    def __init__(self, existing: SimpleNamespace | None, rival: SimpleNamespace | None) -> None:
        self.config = existing
        # What another replica creates between our exists() and our create().
        self.rival = rival
        self.created: list[dict[str, Any]] = []

    async def exists(self, name: str) -> bool:
        return self.config is not None

    async def create(self, name: str, **kwargs: Any) -> None:
        if self.rival is not None:
            self.config = self.rival
            raise status_error(422)  # "class name ... already exists"
        self.created.append(kwargs)
        self.config = SimpleNamespace(
            description=kwargs["description"],
            properties=kwargs["properties"],
            vector_index_config=SimpleNamespace(distance_metric=VectorDistances.COSINE),
        )

    def get(self, name: str) -> SimpleNamespace:
        async def get_config() -> SimpleNamespace | None:
            if self.config is None:
                raise status_error(404)
            return self.config

        return SimpleNamespace(name=name, config=SimpleNamespace(get=get_config))


class FakeClient:
    def __init__(self, collections: FakeCollections) -> None:
        self.collections = collections
        self.closed = False

    async def connect(self) -> None:
        pass

    async def is_live(self) -> bool:
        return True

    async def close(self) -> None:
        self.closed = True


def made_by(
    model: str = MODEL, dim: int = DIM, distance: VectorDistances = VectorDistances.COSINE
) -> SimpleNamespace:
    return SimpleNamespace(
        description=collection_description(model, dim),
        properties=image_properties(),
        vector_index_config=SimpleNamespace(distance_metric=distance),
    )


async def ensure_with(
    monkeypatch: pytest.MonkeyPatch,
    existing: SimpleNamespace | None = None,
    rival: SimpleNamespace | None = None,
) -> tuple[WeaviateVectorStore, FakeClient]:
    client = FakeClient(FakeCollections(existing, rival))
    store = WeaviateVectorStore(MODEL, DIM, "127.0.0.1")
    monkeypatch.setattr(store, "_new_client", lambda: client)
    await store.ensure_schema()
    return store, client


async def test_creates_a_missing_collection(monkeypatch: pytest.MonkeyPatch) -> None:
    store, client = await ensure_with(monkeypatch)
    (kwargs,) = client.collections.created
    assert kwargs.keys() == collection_config(MODEL, DIM).keys()
    assert parse_collection_description(kwargs["description"]) == (MODEL, DIM)
    await store.ensure_schema()  # idempotent: nothing more is created
    assert len(client.collections.created) == 1
    await store.close()
    assert client.closed


async def test_opens_an_existing_collection(monkeypatch: pytest.MonkeyPatch) -> None:
    store, client = await ensure_with(monkeypatch, existing=made_by())
    assert client.collections.created == []
    await store.close()


async def test_losing_the_creation_race_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    store, client = await ensure_with(monkeypatch, rival=made_by())
    assert client.collections.created == [] and not client.closed
    await store.close()


async def test_losing_the_race_to_another_model_is_a_mismatch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(EmbeddingMismatch):
        await ensure_with(monkeypatch, rival=made_by(model="other/model"))


@pytest.mark.parametrize(
    ("existing", "error"),
    [
        (made_by(dim=DIM * 2), EmbeddingMismatch),
        (made_by(model="other/model"), EmbeddingMismatch),
        (made_by(distance=VectorDistances.L2_SQUARED), StoreError),
        (SimpleNamespace(**{**vars(made_by()), "description": "someone else's"}), StoreError),
        (SimpleNamespace(**{**vars(made_by()), "properties": image_properties()[1:]}), StoreError),
    ],
    ids=["other-dim", "other-model", "l2", "foreign", "missing-property"],
)
async def test_refuses_unsuitable_collections(
    monkeypatch: pytest.MonkeyPatch, existing: SimpleNamespace, error: type[StoreError]
) -> None:
    client = FakeClient(FakeCollections(existing, None))
    store = WeaviateVectorStore(MODEL, DIM, "127.0.0.1")
    monkeypatch.setattr(store, "_new_client", lambda: client)
    with pytest.raises(error) as info:
        await store.ensure_schema()
    assert type(info.value) is error
    assert client.closed  # a refused store lets go of its connection


# -- filters ------------------------------------------------------------------------------


def _weaviate_matches(flt: _Filters, record: ImageRecord) -> bool:
    """How Weaviate evaluates a filter on one object, for the operators this store uses:
    a property the object lacks matches nothing; ContainsAny/All compare whole values
    (every text property here is tokenised as `field`); `_id` is the object id's text."""
    if isinstance(flt, _FilterAnd):
        return all(_weaviate_matches(f, record) for f in flt.filters)
    if isinstance(flt, _FilterOr):
        return any(_weaviate_matches(f, record) for f in flt.filters)
    assert isinstance(flt, _FilterValue), flt
    assert isinstance(flt.target, str), flt.target
    props = record_to_properties(record)
    actual = record.id if flt.target == "_id" else props.get(flt.target)
    if actual is None:
        return False
    value = flt.value
    op = flt.operator
    if op == _Operator.CONTAINS_ANY:
        values = actual if isinstance(actual, list) else [actual]
        return any(v in values for v in value)  # type: ignore[union-attr]
    if op == _Operator.CONTAINS_ALL:
        values = actual if isinstance(actual, list) else [actual]
        return all(v in values for v in value)  # type: ignore[union-attr]
    assert not isinstance(actual, list), (flt.target, op)
    compare: dict[_Operator, Callable[[Any, Any], bool]] = {
        _Operator.EQUAL: lambda a, b: a == b,
        _Operator.GREATER_THAN: lambda a, b: a > b,
        _Operator.GREATER_THAN_EQUAL: lambda a, b: a >= b,
        _Operator.LESS_THAN: lambda a, b: a < b,
        _Operator.LESS_THAN_EQUAL: lambda a, b: a <= b,
    }
    return compare[op](actual, value)


def _population() -> list[ImageRecord]:
    return [
        make_record(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"pop-{i}")), **population_fields(i))
        for i in range(POPULATION_SIZE)
    ]


@pytest.mark.parametrize(("name", "image_filter"), FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
def test_filter_admits_what_the_reference_admits(name: str, image_filter: ImageFilter) -> None:
    records = _population()
    flt = weaviate_filter(image_filter)
    expected = [r.id for r in records if image_filter.matches(r)]
    if image_filter.is_empty():
        assert flt is None
        return
    assert flt is not None
    assert [r.id for r in records if _weaviate_matches(flt, r)] == expected
    # The client can put it on the wire (gRPC for queries, REST for aggregates).
    assert _FilterToGRPC.convert(flt) is not None
    assert _FilterToREST.convert(flt)


def test_filter_with_a_cursor_admits_only_later_ids() -> None:
    records = _population()
    ids = sorted(r.id for r in records)
    image_filter = ImageFilter(tags_any=("cat",))
    for after in (ids[0], ids[11], ids[-1]):
        flt = weaviate_filter(image_filter, after_id=after)
        assert flt is not None
        got = sorted(r.id for r in records if _weaviate_matches(flt, r))
        assert got == [
            i for i in ids if i > after and i in {r.id for r in records if image_filter.matches(r)}
        ]
    only_cursor = weaviate_filter(None, after_id=ids[5])
    assert only_cursor is not None
    assert sorted(r.id for r in records if _weaviate_matches(only_cursor, r)) == ids[6:]
    wire = _FilterToGRPC.convert(only_cursor)
    assert wire is not None and wire.target.property == "_id" and wire.value_text == ids[5]


def test_filter_bounds_out_of_int64_are_clamped() -> None:
    flt = weaviate_filter(ImageFilter(min_width=2**70, min_height=-(2**70)))
    assert isinstance(flt, _FilterAnd)
    assert [f.value for f in flt.filters] == [2**63 - 1, -(2**63) + 1]  # type: ignore[attr-defined]
    assert _FilterToGRPC.convert(flt) is not None


def test_naive_datetimes_in_filters_are_utc() -> None:
    naive = datetime(2024, 3, 5, 12, 0)
    flt = weaviate_filter(ImageFilter(created_after=naive))
    assert isinstance(flt, _FilterValue)
    assert flt.value == naive.replace(tzinfo=timezone.utc)


# -- requests, with a stand-in collection ----------------------------------------------


class FakeData:
    """A collection's objects: id -> (properties, vector)."""

    def __init__(self, objects: dict[str, tuple[dict[str, Any], list[float]]]) -> None:
        self.objects = objects
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def obj(self, object_id: str, **metadata: Any) -> SimpleNamespace:
        props, vector = self.objects[object_id]
        return SimpleNamespace(
            uuid=uuid.UUID(object_id),
            properties=dict(props),
            vector={"default": vector},
            metadata=SimpleNamespace(**metadata),
        )


class FakeQuery:
    def __init__(self, data: FakeData) -> None:
        self.data = data

    def _answer(self, kind: str, kwargs: dict[str, Any], **metadata: Any) -> SimpleNamespace:
        self.data.calls.append((kind, kwargs))
        ids = sorted(self.data.objects)
        return SimpleNamespace(objects=[self.data.obj(i, **metadata) for i in ids])

    async def near_vector(self, **kwargs: Any) -> SimpleNamespace:
        return self._answer("near_vector", kwargs, distance=0.25)

    async def bm25(self, **kwargs: Any) -> SimpleNamespace:
        return self._answer("bm25", kwargs, score=1.5)

    async def fetch_objects(self, **kwargs: Any) -> SimpleNamespace:
        self.data.calls.append(("fetch_objects", kwargs))
        ids = sorted(self.data.objects)
        if kwargs.get("after") is not None:
            ids = [i for i in ids if i > kwargs["after"]]
        return SimpleNamespace(objects=[self.data.obj(i) for i in ids[: kwargs["limit"]]])

    async def fetch_object_by_id(self, object_id: str, **kwargs: Any) -> SimpleNamespace | None:
        self.data.calls.append(("fetch_object_by_id", {"uuid": object_id, **kwargs}))
        return self.data.obj(object_id) if object_id in self.data.objects else None


class FakeDataOps:
    def __init__(self, data: FakeData) -> None:
        self.data = data

    async def update(self, uuid: str, properties: dict[str, Any]) -> None:
        self.data.calls.append(("update", {"uuid": uuid, "properties": properties}))
        if uuid not in self.data.objects:
            raise status_error(404)
        self.data.objects[uuid][0].update(properties)


class FakeAggregate:
    def __init__(self, data: FakeData) -> None:
        self.data = data

    async def over_all(self, **kwargs: Any) -> SimpleNamespace:
        self.data.calls.append(("over_all", kwargs))
        return SimpleNamespace(total_count=7)


class FakeConfig:
    def __init__(self, data: FakeData, config: SimpleNamespace, rival: bool = False) -> None:
        self.data = data
        self.config = config
        # Another replica adds the property between our schema read and our add.
        self.rival = rival

    async def get(self) -> SimpleNamespace:
        return self.config

    async def add_property(self, prop: Any) -> None:
        self.data.calls.append(("add_property", {"prop": prop}))
        if self.rival:
            self.config.properties = [*self.config.properties, prop]
            raise status_error(422)
        self.config.properties = [*self.config.properties, prop]


class FakeDataCollection:
    def __init__(self, data: FakeData, config: SimpleNamespace, rival: bool = False) -> None:
        self.query = FakeQuery(data)
        self.data = FakeDataOps(data)
        self.aggregate = FakeAggregate(data)
        self.config = FakeConfig(data, config, rival)


class FakeDataClient:
    def __init__(self, collection: FakeDataCollection) -> None:
        self.collection = collection
        self.collections = SimpleNamespace(
            exists=self._exists, get=lambda name: self.collection, create=None
        )

    async def _exists(self, name: str) -> bool:
        return True

    async def connect(self) -> None:
        pass

    async def is_live(self) -> bool:
        return True

    async def close(self) -> None:
        pass


def _stored(records: list[ImageRecord]) -> dict[str, tuple[dict[str, Any], list[float]]]:
    return {
        r.id: (record_to_properties(r), [float(i + 1)] + [0.0] * (DIM - 1))
        for i, r in enumerate(records)
    }


async def open_fake(
    monkeypatch: pytest.MonkeyPatch,
    records: list[ImageRecord],
    config: SimpleNamespace | None = None,
    rival: bool = False,
) -> tuple[WeaviateVectorStore, FakeData]:
    data = FakeData(_stored(records))
    collection = FakeDataCollection(data, config or made_by(), rival)
    store = WeaviateVectorStore(MODEL, DIM, "127.0.0.1")
    monkeypatch.setattr(store, "_new_client", lambda: FakeDataClient(collection))
    await store.ensure_schema()
    return store, data


def _wire(flt: _Filters | None) -> Any:
    return None if flt is None else _FilterToGRPC.convert(flt)


def _records(n: int, **overrides: Any) -> list[ImageRecord]:
    return [
        make_record(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"r-{i}")), **overrides) for i in range(n)
    ]


async def test_search_sends_the_filter_and_reads_back_vectors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = _records(2)
    store, data = await open_fake(monkeypatch, records)
    f = ImageFilter(tags_any=("cat",), min_width=10)
    hits = await store.search(np.ones(DIM, dtype=np.float32), 5, f)
    ((kind, kwargs),) = data.calls
    assert kind == "near_vector"
    assert kwargs["limit"] == 5 and kwargs["include_vector"] is True
    assert kwargs["return_metadata"].distance is True
    assert _wire(kwargs["filters"]) == _wire(weaviate_filter(f))
    assert [h.record.id for h in hits] == sorted(r.id for r in records)
    for hit in hits:
        assert hit.score == hit.vector_score == pytest.approx(0.75)
        assert hit.keyword_score is None
        assert hit.vector is not None and hit.vector.dtype == np.float32
        assert hit.vector.tolist() == data.objects[hit.record.id][1]
    # Without a filter, none is sent.
    await store.search(np.ones(DIM, dtype=np.float32), 5)
    assert data.calls[-1][1]["filters"] is None
    await store.close()


async def test_keyword_search_request(monkeypatch: pytest.MonkeyPatch) -> None:
    store, data = await open_fake(monkeypatch, _records(1))
    f = ImageFilter(source_domains=("example.com",))
    (hit,) = await store.keyword_search("Red, CAR!", 3, f)
    ((kind, kwargs),) = data.calls
    assert kind == "bm25"
    assert kwargs["query"] == "red car"
    assert kwargs["query_properties"] == ["caption"]
    assert kwargs["limit"] == 3 and kwargs["include_vector"] is True
    assert kwargs["return_metadata"].score is True
    assert _wire(kwargs["filters"]) == _wire(weaviate_filter(f))
    assert hit.score == hit.keyword_score == 1.5 and hit.vector_score is None
    assert hit.vector is not None
    # No searchable term: nothing is asked.
    assert await store.keyword_search(" ?! ", 3) == []
    assert len(data.calls) == 1
    with pytest.raises(ValueError):
        await store.keyword_search("red", 0)
    await store.close()


async def test_count_sends_the_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    store, data = await open_fake(monkeypatch, [])
    f = ImageFilter(content_types=("image/png",))
    assert await store.count(f) == 7
    assert await store.count() == 7
    (_, with_filter), (_, without) = data.calls
    assert with_filter["total_count"] is True
    assert _wire(with_filter["filters"]) == _wire(weaviate_filter(f))
    assert without["filters"] is None
    await store.close()


async def test_filtered_list_pages_by_id_without_the_cursor_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = _records(5)
    ids = sorted(r.id for r in records)
    store, data = await open_fake(monkeypatch, records)
    f = ImageFilter(tags_all=("cat",))

    page = await store.list(2, None, f)

    (_, first), *_ = data.calls
    assert "after" not in first and first["limit"] == 3
    assert [(s.prop, s.ascending) for s in first["sort"].sorts] == [("_id", True)]
    assert _wire(first["filters"]) == _wire(weaviate_filter(f))
    assert page.next_cursor is not None
    # The fake ignores filters, so its page is the first ids; the cursor names the last.
    assert [r.id for r in page.records] == ids[:2]
    assert decode_cursor(page.next_cursor) == ids[1]

    await store.list(2, page.next_cursor, f)
    (_, second) = data.calls[-1]
    assert _wire(second["filters"]) == _wire(weaviate_filter(f, after_id=ids[1]))

    # Unfiltered (or an empty filter): the cursor API, as before.
    for empty in (None, ImageFilter()):
        await store.list(2, page.next_cursor, empty)
        (_, plain) = data.calls[-1]
        assert plain["after"] == ids[1] and "filters" not in plain and "sort" not in plain
    await store.close()


async def test_updates_patch_and_read_back(monkeypatch: pytest.MonkeyPatch) -> None:
    (record,) = _records(1, caption="old", tags=["a"])
    store, data = await open_fake(monkeypatch, [record])

    updated = await store.update_tags(record.id, ["b", "x'y"])

    assert updated is not None and updated.tags == ["b", "x'y"]
    assert updated.model_dump(exclude={"tags"}) == record.model_dump(exclude={"tags"})
    patch = [c for c in data.calls if c[0] == "update"]
    assert patch == [("update", {"uuid": record.id, "properties": {"tags": ["b", "x'y"]}})]

    captioned = await store.update_caption(record.id, "new", "blip/v2")
    assert captioned is not None
    assert (captioned.caption, captioned.caption_model, captioned.tags) == (
        "new",
        "blip/v2",
        ["b", "x'y"],
    )
    assert data.calls[-2] == (
        "update",
        {"uuid": record.id, "properties": {"caption": "new", "caption_model": "blip/v2"}},
    )
    await store.close()


async def test_updates_of_unknown_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    store, data = await open_fake(monkeypatch, [])
    missing = str(uuid.uuid4())
    assert await store.update_tags(missing, ["x"]) is None
    assert await store.update_caption(missing, "c", "m") is None
    assert [c[0] for c in data.calls] == ["update", "update"]  # 404 -> None, nothing read
    calls = len(data.calls)
    for hostile in ["", "x' OR '1'='1", missing.upper()]:
        assert await store.update_tags(hostile, ["x"]) is None
    assert len(data.calls) == calls  # refused before any request
    await store.close()


def _without_source_domain() -> SimpleNamespace:
    config = made_by()
    config.properties = [p for p in image_properties() if p.name != "source_domain"]
    return config


async def test_ensure_schema_adds_source_domain_and_fills_it_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("ingress.stores.weaviate.store._BACKFILL_PAGE", 2)
    with_url = _records(3, source_url="https://Example.com/x")
    without_url = _records(4)[3:]
    legacy = [*with_url, *without_url]
    data = FakeData(_stored(legacy))
    for props, _ in data.objects.values():
        props.pop("source_domain", None)
    collection = FakeDataCollection(data, _without_source_domain())
    store = WeaviateVectorStore(MODEL, DIM, "127.0.0.1")
    monkeypatch.setattr(store, "_new_client", lambda: FakeDataClient(collection))

    await store.ensure_schema()

    (added,) = [c[1]["prop"] for c in data.calls if c[0] == "add_property"]
    assert added.name == "source_domain"
    assert added.dataType == DataType.TEXT and added.tokenization == Tokenization.FIELD
    updates = sorted(c[1]["uuid"] for c in data.calls if c[0] == "update")
    assert updates == sorted(r.id for r in with_url)
    for r in with_url:
        assert data.objects[r.id][0]["source_domain"] == "example.com"
    assert "source_domain" not in data.objects[without_url[0].id][0]
    # Paged through the cursor API, two at a time, to the end.
    pages = [c[1] for c in data.calls if c[0] == "fetch_objects"]
    assert [p["limit"] for p in pages] == [2, 2, 2]
    # Opened once: a second ensure_schema adds nothing.
    calls = len(data.calls)
    await store.ensure_schema()
    assert len(data.calls) == calls
    await store.close()


async def test_a_rival_adding_source_domain_first_is_fine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, data = await open_fake(
        monkeypatch, _records(2, source_url="https://e.com/"), _without_source_domain(), rival=True
    )
    assert [c[0] for c in data.calls] == ["add_property"]  # no backfill: the rival does it
    await store.close()


async def test_a_collection_missing_other_properties_is_still_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = made_by()
    config.properties = [p for p in image_properties() if p.name not in ("source_domain", "tags")]
    with pytest.raises(StoreError, match="lacks properties"):
        await open_fake(monkeypatch, [], config)
