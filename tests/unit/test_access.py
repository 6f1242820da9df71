"""API keys, scopes and rate limits (ingress.http.access), without Ray: a small FastAPI app."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI, Response
from pydantic import ValidationError
from starlette.types import Message

from ingress.http.access import (
    AccessControl,
    KeyRing,
    Principal,
    _route_path,
    keyring_for,
    required_scope,
)
from ingress.http.asgi_errors import send_json_error
from ingress.http.rate_limit import TokenBucketLimiter, limiter_for
from ingress.settings import AuthArgs, RateLimitArgs

READER_KEY = "r3ad-only-key-0123456789abcdef"
WRITER_KEY = "Wr1te_key.~+/=-0123456789ABCDEF"
OTHER_READER_KEY = "another-reader-key-fedcba9876543210"
KEYS = (
    "# comment lines and blank lines are ignored\n"
    "\n"
    f"reader:read:{READER_KEY}\n"
    f"  writer : read+write : {WRITER_KEY}  \n"
    f"reader2:read:{OTHER_READER_KEY}\n"
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- key ring -------------------------------------------------------------------------


def test_parse_reads_names_and_scopes_and_write_implies_read() -> None:
    ring = KeyRing.parse(KEYS)
    assert ring.names == ["reader", "writer", "reader2"]
    assert len(ring) == 3
    assert ring.lookup(READER_KEY) == Principal("reader", frozenset({"read"}))
    assert ring.lookup(WRITER_KEY) == Principal("writer", frozenset({"read", "write"}))
    write_only = KeyRing.parse(f"w:write:{WRITER_KEY}").lookup(WRITER_KEY)
    assert write_only is not None and write_only.allows("read") and write_only.allows("write")


def test_parse_accepts_semicolons_on_one_line() -> None:
    ring = KeyRing.parse(f"reader:read:{READER_KEY}; writer:write:{WRITER_KEY};")
    assert ring.names == ["reader", "writer"]


def test_key_ring_never_keeps_or_shows_raw_keys() -> None:
    ring = KeyRing.parse(KEYS)
    shown = repr(ring) + repr(vars(ring))
    for key in (READER_KEY, WRITER_KEY, OTHER_READER_KEY):
        assert key not in shown


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (f"reader-read-{READER_KEY}", "expected `name:scopes:key`"),
        (f"reader:{READER_KEY}", "expected `name:scopes:key`"),
        (f"bad name:read:{READER_KEY}", "name"),
        (f":read:{READER_KEY}", "name"),
        (f"reader:admin:{READER_KEY}", "unknown scope 'admin'"),
        (f"reader::{READER_KEY}", "unknown scope ''"),
        (f"reader:read,write:{READER_KEY}", "unknown scope"),
        ("reader:read:short-key", "16 to 512"),
        (f"reader:read:{READER_KEY}:with-colon", "16 to 512"),
        (f"reader:read:{READER_KEY} space", "16 to 512"),
    ],
)
def test_malformed_entry_names_its_line_but_not_the_key(entry: str, problem: str) -> None:
    text = f"writer:write:{WRITER_KEY}\n{entry}\n"
    with pytest.raises(ValueError) as caught:
        KeyRing.parse(text, source="MY_KEYS")
    message = str(caught.value)
    assert message.startswith("MY_KEYS line 2:")
    assert problem in message
    assert READER_KEY not in message and "short-key" not in message
    assert WRITER_KEY not in message


def test_malformed_entry_after_semicolon_names_the_entry() -> None:
    with pytest.raises(ValueError, match=r"^IMAGESEARCH_API_KEYS line 1 entry 2: unknown scope"):
        KeyRing.parse(f"a:read:{READER_KEY};b:nope:{WRITER_KEY}")


def test_duplicate_names_and_keys_are_refused() -> None:
    with pytest.raises(ValueError, match=r"line 2: name 'reader' is already used at .* line 1"):
        KeyRing.parse(f"reader:read:{READER_KEY}\nreader:write:{WRITER_KEY}")
    with pytest.raises(
        ValueError, match=r"line 2: the same key is already given at .* line 1"
    ) as c:
        KeyRing.parse(f"reader:read:{READER_KEY}\nwriter:write:{READER_KEY}")
    assert READER_KEY not in str(c.value)


@pytest.mark.parametrize("value", [None, "", "  \n ", "# only a comment\n"])
def test_missing_or_empty_env_is_a_startup_error_naming_the_variable(value: str | None) -> None:
    environ = {} if value is None else {"TEAM_KEYS": value}
    with pytest.raises(ValueError, match="TEAM_KEYS"):
        keyring_for(AuthArgs(enabled=True, keys_env="TEAM_KEYS"), environ)


def test_auth_args() -> None:
    assert keyring_for(AuthArgs(), {}) is None  # off by default: no variable needed
    ring = keyring_for(
        AuthArgs(enabled=True, keys_env="TEAM_KEYS", header="X-Token"), {"TEAM_KEYS": KEYS}
    )
    assert ring is not None and ring.header == "X-Token" and len(ring) == 3
    with pytest.raises(ValidationError):
        AuthArgs.model_validate({"enabled": True, "keys": READER_KEY})
    with pytest.raises(ValidationError):
        AuthArgs(header="Authorization")
    with pytest.raises(ValidationError):
        AuthArgs(keys_env="not a variable")


def test_key_ring_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGESEARCH_API_KEYS", KEYS)
    ring = keyring_for(AuthArgs(enabled=True))
    assert ring is not None and ring.names == ["reader", "writer", "reader2"]


def test_rate_limit_args() -> None:
    assert limiter_for(RateLimitArgs()) is None
    limiter = limiter_for(RateLimitArgs(enabled=True, requests_per_s=2, burst=3, max_clients=5))
    assert limiter is not None
    assert (limiter.rate, limiter.burst, limiter.max_clients) == (2.0, 3, 5)
    for bad in ({"requests_per_s": 0}, {"burst": 0}, {"max_clients": 0}, {"per_key": True}):
        with pytest.raises(ValidationError):
            RateLimitArgs.model_validate(bad)


# -- constant-time lookup ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("presented", "expected"),
    [
        (READER_KEY, "reader"),
        (OTHER_READER_KEY, "reader2"),
        ("not-a-key-at-all-000000000000", None),
        (READER_KEY[:-1], None),
        (READER_KEY + "x", None),
        ("", None),
    ],
)
def test_lookup_compares_against_every_stored_digest(
    monkeypatch: pytest.MonkeyPatch, presented: str, expected: str | None
) -> None:
    ring = KeyRing.parse(KEYS)
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    principal = ring.lookup(presented)
    assert (principal.name if principal else None) == expected
    assert len(calls) == len(ring)
    # Digests, not keys, are compared: fixed length, whatever was presented.
    assert all(len(a) == len(b) == 32 for a, b in calls)
    assert len({a for a, _ in calls}) == len(ring)


# -- scopes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/healthz", None),
        ("HEAD", "/healthz", None),
        ("GET", "/healthz/", None),
        ("GET", "/docs", None),
        ("GET", "/docs/oauth2-redirect", None),
        ("GET", "/openapi.json", None),
        ("GET", "/redoc", None),
        ("POST", "/images", "write"),
        ("POST", "/images/", "write"),
        ("post", "/images", "write"),
        ("POST", "/images/add", "write"),
        ("DELETE", "/images/abc", "write"),
        ("DELETE", "/images/delete", "write"),
        ("PATCH", "/images/abc", "write"),
        ("PUT", "/images/abc", "write"),
        ("POST", "/images/abc/tags", "write"),  # unknown POST routes fail closed
        ("GET", "/images", "read"),
        ("GET", "/images/list", "read"),
        ("GET", "/images/abc", "read"),
        ("GET", "/images/abc/content", "read"),
        ("HEAD", "/images/abc/content", "read"),
        ("OPTIONS", "/images", "read"),
        # The search page and its two assets open without a key; the page sends one.
        ("GET", "/", None),
        ("GET", "/static/app.js", None),
        ("GET", "/static/style.css", None),
        ("GET", "/static/other.js", "read"),
        ("GET", "/images/abc/thumbnail", "read"),
        ("GET", "/nowhere", "read"),
        ("POST", "/search/text", "read"),
        ("POST", "/search/image", "read"),
        ("POST", "/search/url", "read"),
        ("POST", "/images/search/text", "read"),
        ("POST", "/images/search/image", "read"),
        ("POST", "/image/search/url", "read"),
        ("POST", "/embed-image", "read"),
        ("POST", "/embed-image/", "read"),
    ],
)
def test_required_scope(method: str, path: str, scope: str | None) -> None:
    assert required_scope(method, path) == scope


@pytest.mark.parametrize(
    ("path", "root_path", "route"),
    [
        ("/images", "", "/images"),
        ("/api/images", "/api", "/images"),
        ("/api", "/api", "/"),
        ("/apix/images", "/api", "/apix/images"),
        ("/images", "/api", "/images"),
    ],
)
def test_route_path_drops_the_mount_prefix(path: str, root_path: str, route: str) -> None:
    assert _route_path({"type": "http", "path": path, "root_path": root_path}) == route


# -- token buckets --------------------------------------------------------------------


def test_limiter_allows_a_burst_then_says_how_long_to_wait() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(rate=2, burst=3, clock=clock)
    assert [limiter.check("a") for _ in range(3)] == [None, None, None]
    assert limiter.check("a") == pytest.approx(0.5)
    assert limiter.check("a") == pytest.approx(0.5)  # refusals take no token
    clock.advance(0.25)
    assert limiter.check("a") == pytest.approx(0.25)
    clock.advance(0.25)
    assert limiter.check("a") is None
    assert limiter.check("a") == pytest.approx(0.5)


def test_limiter_refills_at_the_rate_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(rate=10, burst=5, clock=clock)
    for _ in range(5):
        assert limiter.check("a") is None
    clock.advance(0.3)  # three tokens back
    assert [limiter.check("a") for _ in range(3)] == [None, None, None]
    assert limiter.check("a") is not None
    clock.advance(3600)  # never more than the burst
    assert [limiter.check("a") for _ in range(5)] == [None] * 5
    assert limiter.check("a") == pytest.approx(0.1)


def test_limiter_buckets_are_per_client() -> None:
    limiter = TokenBucketLimiter(rate=1, burst=1, clock=FakeClock())
    assert limiter.check("a") is None
    assert limiter.check("a") is not None
    assert limiter.check("b") is None


def test_limiter_memory_is_bounded_least_recently_seen_first() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(rate=1, burst=1, max_clients=2, clock=clock)
    assert limiter.check("a") is None
    assert limiter.check("b") is None
    assert limiter.check("a") is not None  # "a" is now the most recently seen
    assert limiter.check("c") is None  # evicts "b"
    assert len(limiter) == 2
    assert limiter.check("a") is not None  # still tracked, still empty
    assert limiter.check("b") is None  # forgotten, back with a full bucket
    for n in range(1000):
        limiter.check(f"client-{n}")
    assert len(limiter) == 2


def test_limiter_rejects_nonsense() -> None:
    for args in ((0, 1, 1), (-1, 1, 1), (float("inf"), 1, 1), (1, 0, 1), (1, 1, 0)):
        with pytest.raises(ValueError):
            TokenBucketLimiter(*args)


# -- the middleware, end to end -------------------------------------------------------


class Gate:
    """What the ingress would hold in app.state: set after the app is built."""

    def __init__(self) -> None:
        self.keyring: KeyRing | None = None
        self.limiter: TokenBucketLimiter | None = None
        self.rejections: list[tuple[int, str]] = []


def build_app(gate: Gate) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/images")
    async def list_images() -> dict[str, list[str]]:
        return {"images": []}

    @app.post("/images", status_code=201)
    async def add_image() -> dict[str, str]:
        return {"id": "new"}

    @app.delete("/images/{image_id}", status_code=204)
    async def delete_image(image_id: str) -> Response:
        return Response(status_code=204)

    @app.post("/search/text")
    async def search_text() -> dict[str, list[str]]:
        return {"results": []}

    app.add_middleware(
        AccessControl,
        auth=lambda: gate.keyring,
        limiter=lambda: gate.limiter,
        on_reject=lambda status, code: gate.rejections.append((status, code)),
    )
    return app


ClientFactory = Callable[..., httpx.AsyncClient]


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def client_for(gate: Gate) -> ClientFactory:
    app = build_app(gate)

    def make(address: str = "127.0.0.1") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 12345))
        return httpx.AsyncClient(transport=transport, base_url="http://t")

    return make


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    for key in (READER_KEY, WRITER_KEY, OTHER_READER_KEY):
        assert key not in response.text


def with_keys(gate: Gate) -> None:
    gate.keyring = KeyRing.parse(KEYS)


async def test_no_settings_means_no_checks(client_for: ClientFactory) -> None:
    async with client_for() as client:
        assert (await client.post("/images")).status_code == 201
        assert (await client.delete("/images/x")).status_code == 204


async def test_missing_key_is_401_with_a_challenge(gate: Gate, client_for: ClientFactory) -> None:
    with_keys(gate)
    async with client_for() as client:
        response = await client.get("/images")
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'
    assert "X-API-Key" in response.json()["error"]["message"]
    assert gate.rejections == [(401, "unauthorized")]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": "wrong-key-0123456789abcdef"},
        {"X-API-Key": READER_KEY[:-1]},
        {"Authorization": "Bearer wrong-key-0123456789abcdef"},
        {"Authorization": f"Basic {READER_KEY}"},
        {"X-API-Key": ""},
    ],
)
async def test_wrong_key_is_401(
    gate: Gate, client_for: ClientFactory, headers: dict[str, str]
) -> None:
    with_keys(gate)
    async with client_for() as client:
        response = await client.get("/images", headers=headers)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'


async def test_read_key_cannot_write(gate: Gate, client_for: ClientFactory) -> None:
    with_keys(gate)
    async with client_for() as client:
        headers = {"X-API-Key": READER_KEY}
        assert (await client.get("/images", headers=headers)).status_code == 200
        assert (await client.post("/search/text", headers=headers)).status_code == 200
        response = await client.post("/images", headers=headers)
        assert_error(response, 403, "forbidden")
        assert "write" in response.json()["error"]["message"]
        assert_error(await client.delete("/images/x", headers=headers), 403, "forbidden")
    assert gate.rejections == [(403, "forbidden"), (403, "forbidden")]


async def test_write_key_writes_and_reads(gate: Gate, client_for: ClientFactory) -> None:
    with_keys(gate)
    async with client_for() as client:
        headers = {"x-api-key": WRITER_KEY}
        assert (await client.post("/images", headers=headers)).status_code == 201
        assert (await client.delete("/images/x", headers=headers)).status_code == 204
        assert (await client.get("/images", headers=headers)).status_code == 200
        assert (await client.post("/search/text", headers=headers)).status_code == 200


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_bearer_form_works(gate: Gate, client_for: ClientFactory, scheme: str) -> None:
    with_keys(gate)
    async with client_for() as client:
        headers = {"Authorization": f"{scheme} {WRITER_KEY}"}
        assert (await client.post("/images", headers=headers)).status_code == 201


async def test_configured_header_is_used(gate: Gate, client_for: ClientFactory) -> None:
    gate.keyring = keyring_for(
        AuthArgs(enabled=True, header="X-Token"), {"IMAGESEARCH_API_KEYS": KEYS}
    )
    async with client_for() as client:
        assert (await client.get("/images", headers={"X-Token": READER_KEY})).status_code == 200
        response = await client.get("/images", headers={"X-API-Key": READER_KEY})
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'ApiKey header="X-Token"'


async def test_open_paths_need_no_key_and_healthz_is_never_limited(
    gate: Gate, client_for: ClientFactory
) -> None:
    with_keys(gate)
    gate.limiter = TokenBucketLimiter(rate=1, burst=1, clock=FakeClock())
    async with client_for() as client:
        for _ in range(20):
            assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200
        # The docs are open but limited per address like any anonymous traffic.
        assert_error(await client.get("/docs"), 429, "rate_limited")
        # Probes keep working with the address bucket empty.
        assert (await client.get("/healthz")).status_code == 200


async def test_429_after_the_burst_with_retry_after(gate: Gate, client_for: ClientFactory) -> None:
    with_keys(gate)
    clock = FakeClock()
    gate.limiter = TokenBucketLimiter(rate=0.4, burst=2, clock=clock)
    async with client_for() as client:
        headers = {"X-API-Key": READER_KEY}
        assert (await client.get("/images", headers=headers)).status_code == 200
        assert (await client.get("/images", headers=headers)).status_code == 200
        response = await client.get("/images", headers=headers)
        assert_error(response, 429, "rate_limited")
        assert response.headers["retry-after"] == "3"  # 2.5 s, rounded up
        clock.advance(2.5)
        assert (await client.get("/images", headers=headers)).status_code == 200
        clock.advance(0.1)
        response = await client.get("/images", headers=headers)
        assert_error(response, 429, "rate_limited")
        assert response.headers["retry-after"] == "3"  # 2.4 s, rounded up
    assert gate.rejections == [(429, "rate_limited"), (429, "rate_limited")]


async def test_retry_after_is_at_least_one_second(gate: Gate, client_for: ClientFactory) -> None:
    gate.limiter = TokenBucketLimiter(rate=1000, burst=1, clock=FakeClock())
    async with client_for() as client:
        assert (await client.get("/images")).status_code == 200
        response = await client.get("/images")
    assert_error(response, 429, "rate_limited")
    assert response.headers["retry-after"] == "1"


async def test_buckets_are_per_key_not_per_address(gate: Gate, client_for: ClientFactory) -> None:
    with_keys(gate)
    gate.limiter = TokenBucketLimiter(rate=1, burst=2, clock=FakeClock())
    async with client_for() as client:
        first = {"X-API-Key": READER_KEY}
        second = {"Authorization": f"Bearer {OTHER_READER_KEY}"}
        for _ in range(2):
            assert (await client.get("/images", headers=first)).status_code == 200
        assert_error(await client.get("/images", headers=first), 429, "rate_limited")
        # Same address, another key: its own full bucket.
        for _ in range(2):
            assert (await client.get("/images", headers=second)).status_code == 200
        assert_error(await client.get("/images", headers=second), 429, "rate_limited")
    # The same key from elsewhere shares its bucket.
    async with client_for("10.0.0.9") as elsewhere:
        assert_error(await elsewhere.get("/images", headers=first), 429, "rate_limited")


async def test_failed_keys_are_throttled_per_address(gate: Gate, client_for: ClientFactory) -> None:
    with_keys(gate)
    gate.limiter = TokenBucketLimiter(rate=1, burst=2, clock=FakeClock())
    async with client_for() as client:
        bad = {"X-API-Key": "guess-0000000000000000"}
        assert_error(await client.get("/images", headers=bad), 401, "unauthorized")
        assert_error(await client.get("/images", headers=bad), 401, "unauthorized")
        assert_error(await client.get("/images", headers=bad), 429, "rate_limited")
        # A valid key is not held back by the address's failures.
        ok = await client.get("/images", headers={"X-API-Key": READER_KEY})
        assert ok.status_code == 200


async def test_auth_off_everything_passes_but_limits_apply_per_address(
    gate: Gate, client_for: ClientFactory
) -> None:
    async with client_for() as client:
        for _ in range(30):
            assert (await client.post("/images")).status_code == 201
    gate.limiter = TokenBucketLimiter(rate=1, burst=2, clock=FakeClock())
    async with client_for("10.0.0.1") as one, client_for("10.0.0.2") as two:
        assert (await one.post("/images")).status_code == 201
        assert (await one.get("/images")).status_code == 200
        assert_error(await one.get("/images"), 429, "rate_limited")
        # A key sent while auth is off is ignored: still the address's bucket.
        assert_error(
            await one.get("/images", headers={"X-API-Key": READER_KEY}), 429, "rate_limited"
        )
        assert (await two.get("/images")).status_code == 200
        assert (await two.delete("/images/x")).status_code == 204
        for _ in range(5):
            assert (await one.get("/healthz")).status_code == 200


async def test_settings_are_read_per_request(gate: Gate, client_for: ClientFactory) -> None:
    async with client_for() as client:
        assert (await client.get("/images")).status_code == 200
        with_keys(gate)  # what the ingress does once it has its arguments
        assert_error(await client.get("/images"), 401, "unauthorized")


async def test_send_json_error_adds_headers() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await send_json_error(send, 413, "payload_too_large", "too big", [("Connection", "close")])
    start, body = sent
    assert start["status"] == 413
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"connection"] == b"close"
    payload = body["body"]
    assert isinstance(payload, bytes)
    assert int(headers[b"content-length"]) == len(payload)
    assert json.loads(payload) == {"error": {"code": "payload_too_large", "message": "too big"}}
