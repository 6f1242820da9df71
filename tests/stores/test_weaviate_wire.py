"""The loopback Weaviate mock itself, driven by the real client's public API: it refuses
what Weaviate refuses, so that a store test passing on it means something."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import weaviate
from weaviate.classes.query import Filter
from weaviate.exceptions import WeaviateQueryError

from tests.stores.weaviate_mock import MockWeaviate, WireError, format_date, parse_date


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[weaviate.WeaviateAsyncClient]:
    # The client's version check on PyPI fails at once through a refusing proxy.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    async with MockWeaviate().serving() as mock:
        mock.add_collection(
            {
                "class": "Thing",
                "properties": [
                    {"name": "n", "dataType": ["int"]},
                    {"name": "t", "dataType": ["text"], "tokenization": "field"},
                ],
            }
        )
        c = weaviate.use_async_with_custom(
            http_host="127.0.0.1",
            http_port=mock.http_port,
            http_secure=False,
            grpc_host="127.0.0.1",
            grpc_port=mock.grpc_port,
            grpc_secure=False,
        )
        await c.connect()
        try:
            yield c
        finally:
            await c.close()


async def test_a_filter_value_of_another_type_is_refused(
    client: weaviate.WeaviateAsyncClient,
) -> None:
    things = client.collections.get("Thing")
    await things.data.insert_many([{"n": 1, "t": "a"}, {"n": 2, "t": "b"}])
    got = await things.query.fetch_objects(filters=Filter.by_property("n").greater_than(1))
    assert [o.properties["n"] for o in got.objects] == [2]
    with pytest.raises(WeaviateQueryError, match="cannot use"):
        await things.query.fetch_objects(filters=Filter.by_property("n").greater_than("1"))
    with pytest.raises(WeaviateQueryError, match="no such prop"):
        await things.query.fetch_objects(filters=Filter.by_property("nope").equal("x"))


async def test_the_cursor_api_takes_no_filter(client: weaviate.WeaviateAsyncClient) -> None:
    things = client.collections.get("Thing")
    with pytest.raises(WeaviateQueryError, match="after"):
        await things.query.fetch_objects(
            after="00000000-0000-0000-0000-000000000000",
            filters=Filter.by_property("t").equal("a"),
        )


async def test_properties_outside_the_schema_are_refused(
    client: weaviate.WeaviateAsyncClient,
) -> None:
    things = client.collections.get("Thing")
    result = await things.data.insert_many([{"n": 1, "t": "a"}, {"n": 1.5, "t": "b"}])
    assert list(result.errors) == [1]
    result = await things.data.insert_many([{"n": 1, "extra": "x"}, {"n": 3}])
    assert list(result.errors) == [0]
    assert len((await things.query.fetch_objects()).objects) == 2


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("2024-03-01T12:00:00.250000+00:00", "2024-03-01T12:00:00.25Z"),
        ("2024-03-01T13:00:00+01:00", "2024-03-01T12:00:00Z"),
        ("2024-03-01T12:00:00.123456789Z", "2024-03-01T12:00:00.123456Z"),
    ],
)
def test_dates_as_rfc3339(text: str, back: str) -> None:
    assert format_date(parse_date(text)) == back


def test_dates_without_an_offset_are_refused() -> None:
    with pytest.raises(WireError, match="RFC3339"):
        parse_date("2024-03-01T12:00:00")
