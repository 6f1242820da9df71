"""An in-memory Weaviate on loopback, answering the real client at the wire.

The REST side (aiohttp) and the gRPC side (``weaviate.v1.Weaviate`` plus the health
check, from the client's own generated stubs) run in the test's event loop, on free
ports of 127.0.0.1. They serve what the store's calls need, the way Weaviate 1.30 does:

- REST: OIDC discovery (404: no auth), ``/v1/meta``, ``/v1/.well-known/ready|live``,
  ``/v1/schema`` (create, read, add a property), ``/v1/objects/{class}/{id}`` (PATCH,
  DELETE, GET).
- gRPC: ``Search`` (fetch with filters and sort, the cursor API with ``after``,
  ``near_vector`` with cosine distance, ``bm25`` over word-tokenised text), ``Aggregate``
  (objects count under a filter), ``BatchObjects``, ``BatchDelete`` and ``TenantsGet``.

Filters are evaluated from the protobuf ``Filters`` message that arrived, against the
stored objects and the collection's schema (data types and tokenization), never from
the client's Python filter classes. As on a server with auto-schema off, properties the
schema lacks and values of the wrong type are refused, not guessed.

Every request is logged (``requests``), and faults can be injected per request (an HTTP
status, a gRPC status, no answer at all) or hooks run before one (what a rival replica
does in between), so that error paths go through the real client too.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fnmatch
import json
import math
import re
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from weaviate.proto.v1 import (
    aggregate_pb2,
    base_pb2,
    base_search_pb2,
    batch_delete_pb2,
    batch_pb2,
    health_weaviate_pb2,
    properties_pb2,
    search_get_pb2,
    tenants_pb2,
    weaviate_pb2_grpc,
)

VERSION = "1.30.0"
MOCK_IP = "127.0.0.1"
# What Weaviate answers a query that sets no limit (QUERY_DEFAULTS_LIMIT).
DEFAULT_LIMIT = 10
BM25_K1, BM25_B = 1.2, 0.75

Op = base_pb2.Filters.Operator


class WireError(Exception):
    """A request Weaviate refuses: a gRPC status, or an HTTP status with its message."""

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        status: int = 422,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass
class Fault:
    """What to do instead of answering: an HTTP status, a gRPC status, or never answer.
    ``times`` is how many matching requests it spoils (None: all of them)."""

    status: int | None = None
    code: grpc.StatusCode | None = None
    hang: bool = False
    times: int | None = None


@dataclass
class Request:
    """One request as it arrived: ``op`` is "METHOD /path" or "grpc:Method"."""

    op: str
    body: Any = None  # JSON for REST, the protobuf message for gRPC


@dataclass
class StoredObject:
    properties: dict[str, Any]
    vector: list[float] | None
    # Unix milliseconds, as Weaviate keeps them.
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    updated_ms: int = field(default_factory=lambda: int(time.time() * 1000))


@dataclass
class Collection:
    schema: dict[str, Any]
    objects: dict[str, StoredObject] = field(default_factory=dict)

    def data_type(self, prop: str) -> str:
        if prop == "_id":
            return "uuid"
        for p in self.schema["properties"]:
            if p["name"] == prop:
                return str(p["dataType"][0])
        raise WireError(f"no such prop with name '{prop}' found in class '{self.name}'")

    def tokenization(self, prop: str) -> str:
        for p in self.schema["properties"]:
            if p["name"] == prop:
                return str(p.get("tokenization") or "word")
        return "field"

    @property
    def name(self) -> str:
        return str(self.schema["class"])


# -- values ---------------------------------------------------------------------------


def parse_date(text: str) -> datetime:
    """An RFC 3339 date as Weaviate takes it: a timezone is required."""
    m = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text)
    if m is None:
        raise WireError(f'parsing time "{text}" as RFC3339: cannot parse')
    frac = (m.group(2) or ".0")[1:7].ljust(6, "0")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        return datetime.fromisoformat(f"{m.group(1)}.{frac}{zone}").astimezone(timezone.utc)
    except ValueError as e:
        raise WireError(f'parsing time "{text}" as RFC3339: {e}') from e


def format_date(value: datetime) -> str:
    """As Go's RFC3339Nano writes it: UTC with Z, trailing zeros of the fraction dropped."""
    value = value.astimezone(timezone.utc)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def word_tokens(text: str) -> list[str]:
    """Weaviate's ``word`` tokenization: lowercased runs of letters and digits."""
    return [t for t in re.split(r"[^\w]|_", text.lower()) if t]


def coerce(collection: Collection, prop: str, value: Any) -> Any:
    """A property value as stored for the schema's data type; WireError when it does not
    fit (what Weaviate answers an object of the wrong shape)."""
    data_type = collection.data_type(prop)
    if value is None:
        return None
    if data_type == "text":
        if not isinstance(value, str):
            raise WireError(f"invalid text property '{prop}': not a string: {value!r}")
        return value
    if data_type == "text[]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise WireError(f"invalid text array property '{prop}': {value!r}")
        return list(value)
    if data_type == "int":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WireError(f"invalid integer property '{prop}': {value!r}")
        if isinstance(value, float) and not value.is_integer():
            raise WireError(f"invalid integer property '{prop}': {value!r} is not whole")
        return int(value)
    if data_type == "date":
        if not isinstance(value, str):
            raise WireError(f"invalid date property '{prop}': {value!r}")
        return parse_date(value)
    raise WireError(f"data type {data_type} is not served by the mock")


def to_json_value(value: Any) -> Any:
    return format_date(value) if isinstance(value, datetime) else value


def to_grpc_value(value: Any) -> properties_pb2.Value:
    if value is None:
        return properties_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(value, datetime):
        return properties_pb2.Value(date_value=format_date(value))
    if isinstance(value, str):
        return properties_pb2.Value(text_value=value)
    if isinstance(value, bool):
        return properties_pb2.Value(bool_value=value)
    if isinstance(value, int):
        return properties_pb2.Value(int_value=value)
    if isinstance(value, float):
        return properties_pb2.Value(number_value=value)
    if isinstance(value, list):
        lv = properties_pb2.ListValue()
        lv.text_values.SetInParent()
        lv.text_values.values.extend(value)
        return properties_pb2.Value(list_value=lv)
    raise TypeError(value)


def pack_vector(vector: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)


def unpack_vector(data: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(data) // 4}f", data))


def cosine_distance(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        raise WireError(f"vector lengths don't match: {len(a)} vs {len(b)}")
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return 1.0 - dot / norm if norm else 1.0


# -- filters ----------------------------------------------------------------------------


def filter_target(flt: base_pb2.Filters) -> str:
    if flt.HasField("target"):
        if flt.target.WhichOneof("target") != "property":
            raise WireError("reference filters are not served by the mock")
        return str(flt.target.property)
    if len(flt.on) == 1:
        return str(flt.on[0])
    raise WireError("filter has no target property")


def filter_values(collection: Collection, prop: str, flt: base_pb2.Filters) -> list[Any]:
    """The filter's value(s) as the property's type: Weaviate refuses a value of another
    type ("data type filter cannot use ... on type ...")."""
    data_type = collection.data_type(prop)
    kind = flt.WhichOneof("test_value")
    base = data_type.removesuffix("[]")
    allowed = {
        "text": ("value_text", "value_text_array"),
        "uuid": ("value_text", "value_text_array"),
        "date": ("value_text", "value_text_array"),
        "int": ("value_int", "value_int_array"),
    }.get(base, ())
    if kind not in allowed:
        raise WireError(f'data type filter cannot use "{kind}" on type "{data_type}"')
    raw: list[Any]
    if kind == "value_text":
        raw = [flt.value_text]
    elif kind == "value_int":
        raw = [flt.value_int]
    elif kind == "value_text_array":
        raw = list(flt.value_text_array.values)
    else:
        raw = list(flt.value_int_array.values)
    if base == "date":
        return [parse_date(v) for v in raw]
    if base == "uuid":
        for v in raw:
            try:
                uuid.UUID(v)
            except ValueError as e:
                raise WireError(f"invalid uuid in filter: {v!r}") from e
    return raw


def matches(collection: Collection, object_id: str, obj: StoredObject, flt: Message) -> bool:
    """Whether Weaviate admits the object under the wire filter: a property the object
    lacks matches no comparison; text compares whole values when tokenised as ``field``
    and word by word otherwise; ``_id`` compares as the id's text."""
    assert isinstance(flt, base_pb2.Filters)
    op = flt.operator
    if op == Op.OPERATOR_AND:
        return all(matches(collection, object_id, obj, f) for f in flt.filters)
    if op == Op.OPERATOR_OR:
        return any(matches(collection, object_id, obj, f) for f in flt.filters)
    if op == Op.OPERATOR_NOT:
        return not any(matches(collection, object_id, obj, f) for f in flt.filters)
    prop = filter_target(flt)
    values = filter_values(collection, prop, flt)
    actual: Any = object_id if prop == "_id" else obj.properties.get(prop)
    if op == Op.OPERATOR_IS_NULL:
        raise WireError("IsNull needs indexNullState, which this collection lacks")
    if actual is None:
        return False
    tokenised = collection.data_type(prop) in ("text", "text[]")
    word = tokenised and collection.tokenization(prop) != "field"

    def tokens(v: Any) -> list[Any]:
        return word_tokens(v) if word else [v]

    have = [t for a in (actual if isinstance(actual, list) else [actual]) for t in tokens(a)]
    wanted = [t for v in values for t in tokens(v)]
    if op == Op.OPERATOR_CONTAINS_ANY:
        return any(v in have for v in wanted)
    if op == Op.OPERATOR_CONTAINS_ALL:
        return all(v in have for v in wanted)
    if op == Op.OPERATOR_CONTAINS_NONE:
        return not any(v in have for v in wanted)
    if len(values) != 1:
        raise WireError(f"operator {Op.Name(op)} takes one value")
    (value,) = values
    if op == Op.OPERATOR_EQUAL:
        return all(v in have for v in tokens(value)) if tokenised else value in have
    if op == Op.OPERATOR_NOT_EQUAL:
        return value not in have
    compare: dict[int, Callable[[Any, Any], bool]] = {
        Op.OPERATOR_GREATER_THAN: lambda a, b: a > b,
        Op.OPERATOR_GREATER_THAN_EQUAL: lambda a, b: a >= b,
        Op.OPERATOR_LESS_THAN: lambda a, b: a < b,
        Op.OPERATOR_LESS_THAN_EQUAL: lambda a, b: a <= b,
    }
    if op not in compare:
        raise WireError(f"operator {Op.Name(op)} is not served by the mock")
    return any(compare[op](a, value) for a in have)


def filter_repr(flt: Message) -> Any:
    """The wire filter as plain data (operator, target, value), for assertions."""
    assert isinstance(flt, base_pb2.Filters)
    name = Op.Name(flt.operator).removeprefix("OPERATOR_")
    if flt.filters:
        return (name, [filter_repr(f) for f in flt.filters])
    kind = flt.WhichOneof("test_value")
    value: Any = getattr(flt, kind) if kind else None
    if kind and kind.endswith("_array"):
        value = list(value.values)
    return (name, filter_target(flt), value)


# -- the server -------------------------------------------------------------------------


def default_schema(body: Mapping[str, Any]) -> dict[str, Any]:
    """A class as Weaviate 1.30 returns it: what was posted, with the server's defaults."""
    schema = copy.deepcopy(dict(body))
    schema.setdefault("description", "")
    schema.setdefault("properties", [])
    for prop in schema["properties"]:
        prop.setdefault("indexFilterable", True)
        prop.setdefault("indexRangeFilters", False)
        text = prop["dataType"][0] in ("text", "text[]")
        prop.setdefault("indexSearchable", text)
        if text:
            prop.setdefault("tokenization", "word")
    schema.setdefault(
        "invertedIndexConfig",
        {
            "bm25": {"b": BM25_B, "k1": BM25_K1},
            "cleanupIntervalSeconds": 60,
            "stopwords": {"additions": None, "preset": "en", "removals": None},
        },
    )
    schema.setdefault(
        "multiTenancyConfig",
        {"autoTenantActivation": False, "autoTenantCreation": False, "enabled": False},
    )
    schema.setdefault(
        "replicationConfig",
        {"asyncEnabled": False, "deletionStrategy": "NoAutomatedResolution", "factor": 1},
    )
    schema.setdefault(
        "shardingConfig",
        {
            "actualCount": 1,
            "actualVirtualCount": 128,
            "desiredCount": 1,
            "desiredVirtualCount": 128,
            "function": "murmur3",
            "key": "_id",
            "strategy": "hash",
            "virtualPerPhysical": 128,
        },
    )
    schema.setdefault("vectorizer", "none")
    schema.setdefault("vectorIndexType", "hnsw")
    index = schema.setdefault("vectorIndexConfig", {})
    for key, value in {
        "skip": False,
        "cleanupIntervalSeconds": 300,
        "maxConnections": 32,
        "efConstruction": 128,
        "ef": -1,
        "dynamicEfMin": 100,
        "dynamicEfMax": 500,
        "dynamicEfFactor": 8,
        "vectorCacheMaxObjects": 1000000000000,
        "flatSearchCutoff": 40000,
        "distance": "cosine",
        "filterStrategy": "sweeping",
        "pq": {
            "enabled": False,
            "bitCompression": False,
            "segments": 0,
            "centroids": 256,
            "trainingLimit": 100000,
            "encoder": {"type": "kmeans", "distribution": "log-normal"},
        },
        "bq": {"enabled": False},
        "sq": {"enabled": False, "trainingLimit": 100000, "rescoreLimit": 20},
    }.items():
        index.setdefault(key, value)
    return schema


class MockWeaviate:
    """One Weaviate server's state, with its REST and gRPC listeners (see the module)."""

    def __init__(self) -> None:
        self.version = VERSION
        self.collections: dict[str, Collection] = {}
        self.requests: list[Request] = []
        self.http_port = 0
        self.grpc_port = 0
        # Objects BatchObjects refuses, by id, with the error message to report.
        self.refuse_objects: dict[str, str] = {}
        self._faults: list[tuple[str, Fault]] = []
        self._hooks: list[tuple[str, Callable[[], object]]] = []
        self._stopping = asyncio.Event()
        self._http_transports: list[asyncio.BaseTransport] = []

    # -- what tests arrange and inspect --

    def add_collection(self, schema: Mapping[str, Any]) -> Collection:
        collection = Collection(default_schema(schema))
        self.collections[collection.name] = collection
        return collection

    def put_object(
        self,
        collection: str,
        object_id: str,
        properties: Mapping[str, Any],
        vector: Sequence[float] | None,
    ) -> None:
        """Store an object as if an earlier client had written it (properties as JSON)."""
        target = self._collection(collection)
        props = {k: coerce(target, k, v) for k, v in properties.items()}
        target.objects[str(uuid.UUID(object_id))] = StoredObject(
            props, None if vector is None else [float(x) for x in vector]
        )

    def fail(self, op: str, fault: Fault) -> None:
        """Spoil requests whose op ("GET /v1/meta", "grpc:Search") matches the pattern."""
        self._faults.append((op, fault))

    def before(self, op: str, hook: Callable[[], object]) -> None:
        """Run ``hook`` once, just before the first request matching ``op`` is served."""
        self._hooks.append((op, hook))

    def ops(self, pattern: str = "*") -> list[str]:
        return [r.op for r in self.requests if fnmatch.fnmatchcase(r.op, pattern)]

    def bodies(self, pattern: str) -> list[Any]:
        return [r.body for r in self.requests if fnmatch.fnmatchcase(r.op, pattern)]

    def searches(self) -> list[search_get_pb2.SearchRequest]:
        return [r.body for r in self.requests if r.op == "grpc:Search"]

    def open_http_connections(self) -> int:
        return sum(1 for t in self._http_transports if not t.is_closing())

    async def wait_http_connections_closed(self, within_s: float = 5.0) -> bool:
        """True once every HTTP connection a client opened is closed (polls: the server
        sees a close only after the client's socket shuts)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within_s
        # No event marks a peer's close; poll.
        while self.open_http_connections() and loop.time() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return self.open_http_connections() == 0

    # -- faults and hooks --

    async def _arrive(self, op: str, body: Any) -> Fault | None:
        self.requests.append(Request(op, body))
        for i, (pattern, hook) in enumerate(self._hooks):
            if fnmatch.fnmatchcase(op, pattern):
                del self._hooks[i]
                hook()
                break
        for pattern, fault in self._faults:
            if fnmatch.fnmatchcase(op, pattern) and (fault.times is None or fault.times > 0):
                if fault.times is not None:
                    fault.times -= 1
                if fault.hang:
                    await self._stopping.wait()
                return fault
        return None

    # -- REST --

    async def _http(self, request: web.Request) -> web.StreamResponse:
        if request.transport is not None and request.transport not in self._http_transports:
            self._http_transports.append(request.transport)
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        op = f"{request.method} {request.path}"
        fault = await self._arrive(op, body)
        if fault is not None and fault.status is not None:
            return web.json_response({"error": [{"message": "injected"}]}, status=fault.status)
        try:
            return self._route(request.method, request.path, body)
        except WireError as e:
            return web.json_response({"error": [{"message": str(e)}]}, status=e.status)

    def _route(self, method: str, path: str, body: Any) -> web.Response:
        parts = path.strip("/").split("/")
        if parts[:1] != ["v1"]:
            return web.json_response({}, status=404)
        rest = parts[1:]
        if rest == [".well-known", "openid-configuration"]:
            return web.json_response({}, status=404)
        if rest in ([".well-known", "ready"], [".well-known", "live"]):
            return web.Response(status=200)
        if rest == ["meta"] and method == "GET":
            return web.json_response(
                {"hostname": "http://[::]:8080", "modules": {}, "version": self.version}
            )
        if rest == ["nodes"]:
            return web.json_response({"nodes": [{"name": "node1", "status": "HEALTHY"}]})
        if rest[:1] == ["schema"]:
            return self._schema(method, rest[1:], body)
        if rest[:1] == ["objects"] and len(rest) == 3:
            return self._object(method, rest[1], rest[2], body)
        return web.json_response({"error": [{"message": f"no route {path}"}]}, status=404)

    def _collection(self, name: str, status: int = 404) -> Collection:
        # Weaviate capitalises the first letter of class names it is given.
        collection = self.collections.get(name[:1].upper() + name[1:])
        if collection is None:
            raise WireError(f"class '{name}' not found", grpc.StatusCode.UNKNOWN, status)
        return collection

    def _schema(self, method: str, rest: list[str], body: Any) -> web.Response:
        if not rest and method == "GET":
            classes = [c.schema for c in self.collections.values()]
            return web.json_response({"classes": classes})
        if not rest and method == "POST":
            name = body["class"]
            if name in self.collections:
                raise WireError(f"class name {name!r} already exists")
            for prop in body.get("properties", []):
                if prop["dataType"][0] not in ("text", "text[]", "int", "date"):
                    raise WireError(f"data type {prop['dataType']} is not served by the mock")
            return web.json_response(self.add_collection(body).schema)
        if len(rest) == 1 and method == "GET":
            try:
                return web.json_response(self._collection(rest[0]).schema)
            except WireError:
                return web.Response(status=404)
        if len(rest) == 2 and rest[1] == "properties" and method == "POST":
            collection = self._collection(rest[0], status=422)
            if any(p["name"] == body["name"] for p in collection.schema["properties"]):
                raise WireError(f"property {body['name']!r} already exists")
            prop = default_schema({"class": "X", "properties": [body]})["properties"][0]
            collection.schema["properties"].append(prop)
            return web.json_response(prop)
        raise WireError("not served by the mock", status=405)

    def _object(self, method: str, name: str, object_id: str, body: Any) -> web.Response:
        collection = self._collection(name)
        obj = collection.objects.get(object_id)
        if method == "DELETE":
            if collection.objects.pop(object_id, None) is None:
                return web.Response(status=404)
            return web.Response(status=204)
        if obj is None:
            return web.Response(status=404)
        if method == "PATCH":
            patch = {p: coerce(collection, p, v) for p, v in (body.get("properties") or {}).items()}
            obj.properties.update(patch)
            obj.updated_ms = int(time.time() * 1000)
            return web.Response(status=204)
        if method == "GET":
            props = {k: to_json_value(v) for k, v in obj.properties.items()}
            return web.json_response(
                {"class": collection.name, "id": object_id, "properties": props}
            )
        raise WireError("not served by the mock", status=405)

    # -- gRPC --

    async def _grpc(
        self, name: str, request: Message, context: grpc.aio.ServicerContext, answer: Any
    ) -> Any:
        fault = await self._arrive(f"grpc:{name}", request)
        if fault is not None and fault.code is not None:
            await context.abort(fault.code, "injected")
        try:
            return answer(request)
        except WireError as e:
            await context.abort(e.code, str(e))

    def _batch_objects(self, request: batch_pb2.BatchObjectsRequest) -> Message:
        errors = []
        for index, wire in enumerate(request.objects):
            try:
                self._store_object(wire)
            except WireError as e:
                errors.append(batch_pb2.BatchObjectsReply.BatchError(index=index, error=str(e)))
        return batch_pb2.BatchObjectsReply(took=0.001, errors=errors)

    def _store_object(self, wire: batch_pb2.BatchObject) -> None:
        collection = self._collection(wire.collection)
        object_id = str(uuid.UUID(wire.uuid))
        if object_id in self.refuse_objects:
            raise WireError(self.refuse_objects[object_id])
        props: dict[str, Any] = {}
        p = wire.properties
        for prop, value in p.non_ref_properties.items():
            if isinstance(value, struct_pb2.Struct | struct_pb2.ListValue):
                raise WireError(f"nested property '{prop}' is not served by the mock")
            props[prop] = coerce(collection, prop, value)
        for arr in p.text_array_properties:
            props[arr.prop_name] = coerce(collection, arr.prop_name, list(arr.values))
        for prop in p.empty_list_props:
            if not collection.data_type(prop).endswith("[]"):
                raise WireError(f"property '{prop}' is not an array")
            props[prop] = []
        if p.int_array_properties or p.number_array_properties or p.boolean_array_properties:
            raise WireError("this schema has no int, number or boolean arrays")
        vector = unpack_vector(wire.vector_bytes) if wire.vector_bytes else None
        if vector is None and wire.vectors:
            (named,) = wire.vectors
            vector = unpack_vector(named.vector_bytes)
        if vector is not None:
            for other in collection.objects.values():
                if other.vector is not None and len(other.vector) != len(vector):
                    raise WireError(
                        f"new node has a vector with length {len(vector)}. "
                        f"Existing nodes have vectors with length {len(other.vector)}"
                    )
                break
        # A batch write of an existing id replaces the whole object.
        old = collection.objects.get(object_id)
        new = StoredObject(props, vector)
        if old is not None:
            new.created_ms = old.created_ms
        collection.objects[object_id] = new

    def _admitted(
        self, collection: Collection, flt: base_pb2.Filters | None
    ) -> list[tuple[str, StoredObject]]:
        return [
            (object_id, obj)
            for object_id, obj in sorted(collection.objects.items())
            if flt is None or matches(collection, object_id, obj, flt)
        ]

    def _search(self, request: search_get_pb2.SearchRequest) -> Message:
        collection = self._collection(request.collection)
        flt = request.filters if request.HasField("filters") else None
        limit = request.limit or DEFAULT_LIMIT
        scored: list[tuple[str, StoredObject, float | None, float | None]]
        if request.after:
            # The cursor API: UUID order, and nothing else may be set.
            if flt is not None or request.sort_by or request.HasField("near_vector"):
                raise WireError(
                    "explorer: list class: search: invalid 'after' parameter: "
                    "other params cannot be set",
                    grpc.StatusCode.UNKNOWN,
                )
            after = str(uuid.UUID(request.after))
            objects = [(i, o) for i, o in sorted(collection.objects.items()) if i > after]
            scored = [(i, o, None, None) for i, o in objects]
        elif request.HasField("near_vector"):
            nv = request.near_vector
            query = unpack_vector(nv.vector_bytes) if nv.vector_bytes else list(nv.vector)
            if not query and nv.vectors:
                query = unpack_vector(nv.vectors[0].vector_bytes)
            scored = [
                (i, o, cosine_distance(query, o.vector), None)
                for i, o in self._admitted(collection, flt)
                if o.vector is not None
            ]
            scored.sort(key=lambda s: (s[2], s[0]))
        elif request.HasField("bm25_search"):
            scored = self._bm25(collection, request.bm25_search, flt)
        else:
            scored = [(i, o, None, None) for i, o in self._admitted(collection, flt)]
            for sort in reversed(request.sort_by):
                (path,) = sort.path

                def key(s: tuple[str, StoredObject, Any, Any], path: str = path) -> Any:
                    return s[0] if path == "_id" else s[1].properties.get(path)

                scored.sort(key=key, reverse=not sort.ascending)
        scored = scored[request.offset : request.offset + limit]
        return search_get_pb2.SearchReply(
            took=0.001, results=[self._result(request, *s) for s in scored]
        )

    def _bm25(
        self, collection: Collection, bm25: Message, flt: base_pb2.Filters | None
    ) -> list[tuple[str, StoredObject, float | None, float | None]]:
        assert isinstance(bm25, base_search_pb2.BM25)
        props = list(bm25.properties) or [
            p["name"] for p in collection.schema["properties"] if p.get("indexSearchable")
        ]
        for prop in props:
            searchable = [
                p["name"] for p in collection.schema["properties"] if p.get("indexSearchable")
            ]
            if prop not in searchable:
                raise WireError(f"property '{prop}' is not searchable (indexSearchable false)")
        terms = word_tokens(bm25.query)
        docs = {
            i: [t for p in props for t in word_tokens(str(o.properties.get(p) or ""))]
            for i, o in collection.objects.items()
        }
        n = len(docs) or 1
        avg = sum(len(d) for d in docs.values()) / n or 1.0
        found: list[tuple[str, StoredObject, float | None, float | None]] = []
        for object_id, obj in self._admitted(collection, flt):
            doc = docs[object_id]
            score = 0.0
            for term in set(terms):
                tf = doc.count(term)
                if not tf:
                    continue
                df = sum(1 for d in docs.values() if term in d)
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += (
                    idf
                    * tf
                    * (BM25_K1 + 1)
                    / (tf + BM25_K1 * (1 - BM25_B + BM25_B * len(doc) / avg))
                )
            if score > 0:
                found.append((object_id, obj, None, score))
        found.sort(key=lambda s: (-(s[3] or 0.0), s[0]))
        return found

    def _result(
        self,
        request: search_get_pb2.SearchRequest,
        object_id: str,
        obj: StoredObject,
        distance: float | None,
        score: float | None,
    ) -> search_get_pb2.SearchResult:
        wanted = request.properties
        # No properties message at all, or return_all_nonref_properties: all of them.
        if not request.HasField("properties") or wanted.return_all_nonref_properties:
            names = [p["name"] for p in self._collection(request.collection).schema["properties"]]
        else:
            names = list(wanted.non_ref_properties)
        props = properties_pb2.Properties(
            fields={name: to_grpc_value(obj.properties.get(name)) for name in names}
        )
        meta = search_get_pb2.MetadataResult(id=object_id, id_as_bytes=uuid.UUID(object_id).bytes)
        if request.metadata.vector and obj.vector is not None:
            meta.vector_bytes = pack_vector(obj.vector)
        if request.metadata.distance and distance is not None:
            meta.distance, meta.distance_present = distance, True
        if request.metadata.score and score is not None:
            meta.score, meta.score_present = score, True
        if request.metadata.creation_time_unix:
            meta.creation_time_unix, meta.creation_time_unix_present = obj.created_ms, True
        if request.metadata.last_update_time_unix:
            meta.last_update_time_unix = obj.updated_ms
            meta.last_update_time_unix_present = True
        return search_get_pb2.SearchResult(
            properties=search_get_pb2.PropertiesResult(
                non_ref_props=props, target_collection=request.collection
            ),
            metadata=meta,
        )

    def _aggregate(self, request: aggregate_pb2.AggregateRequest) -> Message:
        collection = self._collection(request.collection)
        if request.aggregations or request.HasField("group_by"):
            raise WireError("only objects_count is served by the mock")
        flt = request.filters if request.HasField("filters") else None
        reply = aggregate_pb2.AggregateReply(took=0.001)
        reply.single_result.SetInParent()
        if request.objects_count:
            reply.single_result.objects_count = len(self._admitted(collection, flt))
        return reply

    def _batch_delete(self, request: batch_delete_pb2.BatchDeleteRequest) -> Message:
        collection = self._collection(request.collection)
        doomed = [i for i, _ in self._admitted(collection, request.filters)]
        if not request.dry_run:
            for object_id in doomed:
                del collection.objects[object_id]
        return batch_delete_pb2.BatchDeleteReply(
            took=0.001, matches=len(doomed), successful=len(doomed)
        )

    def _tenants(self, request: tenants_pb2.TenantsGetRequest) -> Message:
        self._collection(request.collection)
        raise WireError("multi-tenancy is not enabled", grpc.StatusCode.UNKNOWN)

    def _servicer(self) -> weaviate_pb2_grpc.WeaviateServicer:
        mock = self

        class Servicer(weaviate_pb2_grpc.WeaviateServicer):
            async def Search(self, request: Any, context: Any) -> Any:
                return await mock._grpc("Search", request, context, mock._search)

            async def BatchObjects(self, request: Any, context: Any) -> Any:
                return await mock._grpc("BatchObjects", request, context, mock._batch_objects)

            async def BatchDelete(self, request: Any, context: Any) -> Any:
                return await mock._grpc("BatchDelete", request, context, mock._batch_delete)

            async def Aggregate(self, request: Any, context: Any) -> Any:
                return await mock._grpc("Aggregate", request, context, mock._aggregate)

            async def TenantsGet(self, request: Any, context: Any) -> Any:
                return await mock._grpc("TenantsGet", request, context, mock._tenants)

        return Servicer()

    def _health_handler(self) -> grpc.GenericRpcHandler:
        async def check(request: Any, context: grpc.aio.ServicerContext) -> Any:
            def serving(_: Any) -> Message:
                return health_weaviate_pb2.WeaviateHealthCheckResponse(
                    status=health_weaviate_pb2.WeaviateHealthCheckResponse.SERVING
                )

            return await self._grpc("Health/Check", request, context, serving)

        return grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health",
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    check,
                    request_deserializer=health_weaviate_pb2.WeaviateHealthCheckRequest.FromString,
                    response_serializer=health_weaviate_pb2.WeaviateHealthCheckResponse.SerializeToString,
                )
            },
        )

    # -- lifecycle --

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[MockWeaviate]:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._http)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, MOCK_IP, 0)
        await site.start()
        self.http_port = int(runner.addresses[0][1])
        grpc_server = grpc.aio.server()
        weaviate_pb2_grpc.add_WeaviateServicer_to_server(self._servicer(), grpc_server)
        grpc_server.add_generic_rpc_handlers((self._health_handler(),))
        self.grpc_port = grpc_server.add_insecure_port(f"{MOCK_IP}:0")
        await grpc_server.start()
        try:
            yield self
        finally:
            self._stopping.set()
            await grpc_server.stop(0)
            await runner.cleanup()
