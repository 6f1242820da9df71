"""SafeFetcher against loopback servers started here; nothing leaves 127.0.0.1 / ::1.

The servers are raw asyncio sockets rather than aiohttp.web so that tests can count TCP
connections (not just HTTP requests) and misbehave freely: trickle, lie, omit lengths.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from ingress.core.errors import (
    BadUrl,
    FetchFailed,
    FetchTimeout,
    ForbiddenAddress,
    PayloadTooLarge,
)
from ingress.core.fetch import (
    FetchPolicy,
    SafeFetcher,
    is_forbidden_address,
    parse_ip_literal,
)
from ingress.http.errors import to_api_error

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"not really a png, the fetcher does not care" * 10
PRIVATE_OK = FetchPolicy(allow_private_addresses=True)


@dataclass
class Request:
    path: str
    headers: dict[str, str]


Handler = Callable[[asyncio.StreamWriter, Request], Awaitable[None]]


@dataclass
class LoopbackServer:
    host: str
    routes: dict[str, Handler] = field(default_factory=dict)
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")
            headers = {}
            for line in header_lines:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            request = Request(path=request_line.split(" ")[1], headers=headers)
            self.requests.append(request)
            await self.routes.get(request.path, not_found)(writer, request)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up, as it should after a refusal
        finally:
            writer.close()
            self._tasks.discard(task)


async def write_head(
    writer: asyncio.StreamWriter, status: str, headers: dict[str, str | int]
) -> None:
    lines = [f"HTTP/1.1 {status}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()


def body(data: bytes, content_type: str = "image/png", length: bool = True) -> Handler:
    async def handler(writer: asyncio.StreamWriter, request: Request) -> None:
        headers: dict[str, str | int] = {"Content-Type": content_type}
        if length:
            headers["Content-Length"] = len(data)
        await write_head(writer, "200 OK", headers)
        writer.write(data)
        await writer.drain()

    return handler


def redirect(location: str, status: str = "302 Found") -> Handler:
    async def handler(writer: asyncio.StreamWriter, request: Request) -> None:
        await write_head(writer, status, {"Location": location, "Content-Length": 0})

    return handler


async def not_found(writer: asyncio.StreamWriter, request: Request) -> None:
    await write_head(writer, "404 Not Found", {"Content-Length": 0})


async def trickle(writer: asyncio.StreamWriter, request: Request) -> None:
    await write_head(writer, "200 OK", {"Content-Type": "image/png", "Content-Length": 1000})
    for _ in range(1000):
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.2)


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    srv = LoopbackServer("127.0.0.1")
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def server6() -> AsyncIterator[LoopbackServer | None]:
    """A server on ::1, or None where this machine has no IPv6 loopback."""
    srv = LoopbackServer("::1")
    try:
        await srv.start()
    except OSError:
        yield None
        return
    yield srv
    await srv.stop()


@pytest.fixture
async def fetchers() -> AsyncIterator[Callable[..., SafeFetcher]]:
    made: list[SafeFetcher] = []

    def make(
        policy: FetchPolicy = PRIVATE_OK, resolver: AbstractResolver | None = None
    ) -> SafeFetcher:
        fetcher = SafeFetcher(policy, resolver=resolver)
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        await fetcher.close()


class StubResolver(AbstractResolver):
    """Answers from a table instead of DNS, to stand in for public names offline."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        if host not in self.table:
            raise OSError(f"stub: no such host {host}")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.table[host]
        ]

    async def close(self) -> None:
        pass


# --- the address predicate and literal parsing, as tables ------------------------------


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("8.8.8.8", False),
        ("1.1.1.1", False),
        ("93.184.216.34", False),
        ("127.0.0.1", True),
        ("127.255.255.254", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("172.31.255.255", True),
        ("172.32.0.1", False),
        ("192.168.1.1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("100.64.0.1", True),  # CGNAT
        ("100.127.255.255", True),
        ("100.128.0.1", False),
        ("0.0.0.0", True),
        ("0.1.2.3", True),
        ("224.0.0.1", True),  # multicast
        ("239.255.255.250", True),
        ("240.0.0.1", True),  # reserved
        ("255.255.255.255", True),
        ("192.0.2.1", True),  # documentation
        ("198.18.0.1", True),  # benchmarking
        ("2606:4700:4700::1111", False),
        ("2001:4860:4860::8888", False),
        ("::1", True),
        ("::", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped loopback
        ("::ffff:10.0.0.1", True),
        ("::ffff:8.8.8.8", False),  # mapped public: the same as 8.8.8.8
        ("::127.0.0.1", True),  # IPv4-compatible (deprecated)
        ("64:ff9b::7f00:1", True),  # NAT64 of 127.0.0.1
        ("64:ff9b::808:808", False),  # NAT64 of 8.8.8.8
        ("2002:7f00:1::", True),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", True),  # 6to4 of 169.254.169.254
        ("2002:808:808::1", False),  # 6to4 of 8.8.8.8
        ("fe80::1", True),  # link-local
        ("fe80::1%1", True),
        ("fc00::1", True),  # unique local
        ("fd12:3456::1", True),
        ("ff02::1", True),  # multicast
        ("2001:db8::1", True),  # documentation
        ("2001:0:4136:e378::1", True),  # Teredo
        ("100::1", True),  # discard-only
    ],
)
def test_is_forbidden_address(address: str, forbidden: bool) -> None:
    assert is_forbidden_address(address) is forbidden


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # one 32-bit number
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("0x7f.0.0.1", "127.0.0.1"),  # hex
        ("0x7f.1", "127.0.0.1"),  # hex, short form
        ("127.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("::1", "::1"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
        ("example.com", None),
        ("cafe.be", None),  # hex letters only: a name, not a number
        ("1.2.3.4.5", None),
    ],
)
def test_parse_ip_literal(host: str, expected: str | None) -> None:
    parsed = parse_ip_literal(host)
    assert (None if parsed is None else str(parsed)) == expected


# --- fetching ----------------------------------------------------------------------------


async def test_fetch_from_loopback_when_allowed(server: LoopbackServer, fetchers) -> None:
    server.routes["/cat.png"] = body(PNG_BYTES)
    fetched = await fetchers().fetch(server.url("/cat.png"))
    assert fetched.data == PNG_BYTES
    assert fetched.content_type == "image/png"
    assert fetched.url == server.url("/cat.png")
    assert server.requests[0].headers["accept-encoding"] == "identity"


async def test_session_is_created_once_and_reused(server: LoopbackServer, fetchers) -> None:
    server.routes["/a"] = body(b"a")
    fetcher = fetchers()
    await fetcher.fetch(server.url("/a"))
    session = fetcher._session
    await fetcher.fetch(server.url("/a"))
    assert session is not None and fetcher._session is session


async def test_lying_content_type_is_returned_as_declared(server: LoopbackServer, fetchers) -> None:
    server.routes["/x"] = body(PNG_BYTES, content_type="text/html; charset=utf-8")
    fetched = await fetchers().fetch(server.url("/x"))
    assert fetched.content_type == "text/html"
    assert fetched.data == PNG_BYTES


async def test_default_policy_refuses_loopback(server: LoopbackServer, fetchers) -> None:
    server.routes["/cat.png"] = body(PNG_BYTES)
    with pytest.raises(ForbiddenAddress):
        await fetchers(FetchPolicy()).fetch(server.url("/cat.png"))
    assert server.connections == 0


@pytest.mark.parametrize(
    "host",
    [
        "[::ffff:127.0.0.1]",
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0x7f.1",
        "127.1",
        "0.0.0.0",  # reaches local services on Linux
        "localhost",  # a name: refused by the resolver, before connecting
    ],
)
async def test_loopback_in_any_spelling_is_refused_before_connecting(
    host: str, server: LoopbackServer, fetchers
) -> None:
    server.routes["/"] = body(PNG_BYTES)
    with pytest.raises(ForbiddenAddress):
        await fetchers(FetchPolicy()).fetch(f"http://{host}:{server.port}/")
    assert server.connections == 0


async def test_ipv6_loopback_is_refused_before_connecting(
    server6: LoopbackServer | None, fetchers
) -> None:
    port = server6.port if server6 else 9  # without ::1, the refusal must still come first
    with pytest.raises(ForbiddenAddress):
        await fetchers(FetchPolicy()).fetch(f"http://[::1]:{port}/")
    if server6:
        assert server6.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/image.png",
        "gopher://127.0.0.1:70/_GET",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "//example.com/image.png",
        "image.png",
        "http:///image.png",
        "http://exa mple.com/",
        "http://example.com:99999/",
        "http://[::1/",
        "",
    ],
)
async def test_bad_urls(url: str, fetchers) -> None:
    with pytest.raises(BadUrl):
        await fetchers().fetch(url)


@pytest.mark.parametrize("userinfo", ["user:pw@", "user@", ":pw@"])
async def test_credentials_in_url_are_refused(
    userinfo: str, server: LoopbackServer, fetchers
) -> None:
    with pytest.raises(BadUrl):
        await fetchers().fetch(f"http://{userinfo}127.0.0.1:{server.port}/")
    assert server.connections == 0


async def test_redirects_are_followed_up_to_the_limit(server: LoopbackServer, fetchers) -> None:
    for n in range(1, 5):
        server.routes[f"/r{n}"] = redirect(f"/r{n - 1}")
    server.routes["/r0"] = body(PNG_BYTES)
    fetcher = fetchers(FetchPolicy(allow_private_addresses=True, max_redirects=3))

    fetched = await fetcher.fetch(server.url("/r3"))
    assert fetched.data == PNG_BYTES
    assert fetched.url == server.url("/r0")

    server.requests.clear()
    with pytest.raises(FetchFailed, match="redirect"):
        await fetcher.fetch(server.url("/r4"))
    assert [r.path for r in server.requests] == ["/r4", "/r3", "/r2", "/r1"]


async def test_relative_location_resolves_against_current_url(
    server: LoopbackServer, fetchers
) -> None:
    server.routes["/a/b/start"] = redirect("../img.png", status="301 Moved Permanently")
    server.routes["/a/img.png"] = body(PNG_BYTES)
    fetched = await fetchers().fetch(server.url("/a/b/start"))
    assert fetched.url == server.url("/a/img.png")


async def test_redirect_without_location_fails(server: LoopbackServer, fetchers) -> None:
    async def bare(writer: asyncio.StreamWriter, request: Request) -> None:
        await write_head(writer, "302 Found", {"Content-Length": 0})

    server.routes["/"] = bare
    with pytest.raises(FetchFailed):
        await fetchers().fetch(server.url("/"))


# Redirect re-validation. No public server exists offline, so the first hop is a public-
# looking name that a stub resolver maps to 127.0.0.1, and the policy allows exactly
# 127.0.0.1/32 through `allowed_networks`. Every other non-public address stays
# forbidden, so each test below shows a later hop being checked on its own.

ONLY_127_0_0_1 = FetchPolicy(allowed_networks=("127.0.0.1/32",))


@pytest.fixture
def stub_dns() -> StubResolver:
    return StubResolver(
        {
            "images.example": ["127.0.0.1"],
            "internal.example": ["10.0.0.7"],
            "metadata.example": ["169.254.169.254"],
            "mixed.example": ["127.0.0.1", "10.0.0.7"],
            "garbled.example": ["not-an-address"],
        }
    )


async def test_names_connect_to_the_checked_address(
    server: LoopbackServer, fetchers, stub_dns: StubResolver
) -> None:
    server.routes["/cat.png"] = body(PNG_BYTES)
    fetcher = fetchers(ONLY_127_0_0_1, resolver=stub_dns)
    fetched = await fetcher.fetch(f"http://images.example:{server.port}/cat.png")
    assert fetched.data == PNG_BYTES
    assert server.requests[0].headers["host"] == f"images.example:{server.port}"
    assert stub_dns.lookups == ["images.example"]


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("internal.example", ForbiddenAddress),
        ("metadata.example", ForbiddenAddress),
        # One bad address spoils the answer: which one gets dialled is not ours to pick.
        ("mixed.example", ForbiddenAddress),
        ("garbled.example", ForbiddenAddress),  # fail closed
        ("unknown.example", FetchFailed),  # does not resolve at all
    ],
)
async def test_names_resolving_to_forbidden_addresses_are_refused(
    name: str, error: type[Exception], server: LoopbackServer, fetchers, stub_dns: StubResolver
) -> None:
    with pytest.raises(error):
        await fetchers(ONLY_127_0_0_1, resolver=stub_dns).fetch(
            f"http://{name}:{server.port}/cat.png"
        )
    assert server.connections == 0


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("http://127.0.0.2:{port}/cat.png", ForbiddenAddress),  # literal, not allowlisted
        ("http://0x7f000002:{port}/cat.png", ForbiddenAddress),  # same, odd spelling
        ("http://[::1]:{port}/cat.png", ForbiddenAddress),
        ("http://internal.example:{port}/cat.png", ForbiddenAddress),  # via the resolver
        ("file:///etc/passwd", BadUrl),
        ("gopher://images.example:{port}/", BadUrl),
        ("http://user:pw@images.example:{port}/cat.png", BadUrl),
    ],
)
async def test_every_redirect_hop_is_checked(
    target: str,
    error: type[Exception],
    server: LoopbackServer,
    fetchers,
    stub_dns: StubResolver,
) -> None:
    server.routes["/go"] = redirect(target.format(port=server.port))
    server.routes["/cat.png"] = body(PNG_BYTES)
    with pytest.raises(error):
        await fetchers(ONLY_127_0_0_1, resolver=stub_dns).fetch(
            f"http://images.example:{server.port}/go"
        )
    # The first hop was fetched; the refused hop never reached any server.
    assert [r.path for r in server.requests] == ["/go"]
    assert server.connections == 1


async def test_body_over_limit_with_content_length(server: LoopbackServer, fetchers) -> None:
    server.routes["/big"] = body(b"x" * 5000)
    with pytest.raises(PayloadTooLarge):
        await fetchers(FetchPolicy(allow_private_addresses=True, max_bytes=4096)).fetch(
            server.url("/big")
        )


async def test_body_over_limit_without_content_length(server: LoopbackServer, fetchers) -> None:
    server.routes["/big"] = body(b"x" * 200_000, length=False)
    with pytest.raises(PayloadTooLarge):
        await fetchers(FetchPolicy(allow_private_addresses=True, max_bytes=100_000)).fetch(
            server.url("/big")
        )


async def test_body_at_the_limit_is_fine(server: LoopbackServer, fetchers) -> None:
    server.routes["/exact"] = body(b"x" * 4096, length=False)
    policy = FetchPolicy(allow_private_addresses=True, max_bytes=4096)
    assert len((await fetchers(policy).fetch(server.url("/exact"))).data) == 4096


async def test_trickling_body_hits_the_total_deadline(server: LoopbackServer, fetchers) -> None:
    # Each byte arrives well within the read timeout; only the whole-fetch deadline ends it.
    server.routes["/slow"] = trickle
    policy = FetchPolicy(allow_private_addresses=True, read_timeout_s=0.5, total_timeout_s=1.0)
    with pytest.raises(FetchTimeout):
        await fetchers(policy).fetch(server.url("/slow"))


@pytest.mark.parametrize("status", ["404 Not Found", "500 Internal Server Error"])
async def test_upstream_error_status_fails(status: str, server: LoopbackServer, fetchers) -> None:
    async def error(writer: asyncio.StreamWriter, request: Request) -> None:
        await write_head(writer, status, {"Content-Length": 0})

    server.routes["/"] = error
    with pytest.raises(FetchFailed, match=status.split()[0]) as info:
        await fetchers().fetch(server.url("/"))
    assert to_api_error(info.value).status == 502


async def test_connection_refused_fails(fetchers) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens there now.
    with pytest.raises(FetchFailed):
        await fetchers().fetch(f"http://127.0.0.1:{port}/")


async def test_close_is_idempotent_and_fetcher_can_restart(
    server: LoopbackServer, fetchers
) -> None:
    server.routes["/a"] = body(b"a")
    fetcher = fetchers()
    await fetcher.fetch(server.url("/a"))
    await fetcher.close()
    await fetcher.close()
    assert (await fetcher.fetch(server.url("/a"))).data == b"a"


def test_policy_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        FetchPolicy(allowed_networks=("not-a-network",))
    with pytest.raises(ValueError):
        FetchPolicy(total_timeout_s=0)
