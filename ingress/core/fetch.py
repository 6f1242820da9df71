"""Fetch user-supplied image URLs without becoming an SSRF proxy.

The threat: a client asks us to fetch ``http://169.254.169.254/...`` (cloud metadata),
``http://localhost:6379/`` or an internal service, directly, through an odd spelling of
an IP literal, through a redirect, or through a DNS name that resolves to a public
address when checked and to a private one when connected (DNS rebinding).

How it is closed:
- URLs are parsed once with yarl and that parsed URL is what aiohttp requests.
- IP literals are interpreted the way a resolver would (``0177.0.0.1``, ``2130706433``
  and ``0x7f.1`` are all 127.0.0.1) and checked before any connection; aiohttp never
  passes literals through a resolver, so this is the only place they can be checked.
- Names are checked inside a custom aiohttp resolver (:class:`_CheckingResolver`). The
  addresses it returns are the very ones the connector dials, so there is no window
  between check and use for a second DNS answer to slip into.
- Redirects are followed by hand, each hop parsed and checked like the first URL.
- The whole fetch runs under one deadline; the body is streamed under a byte cap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from ingress.core.errors import (
    BadUrl,
    FetchFailed,
    FetchTimeout,
    ForbiddenAddress,
    IntakeError,
    PayloadTooLarge,
)

MiB = 1024 * 1024
IPAddress = IPv4Address | IPv6Address

_SCHEMES = frozenset({"http", "https"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MAX_URL_LENGTH = 8192
_CHUNK_SIZE = 64 * 1024
# Characters of a DNS name as yarl hands it over (IDNs already punycoded). Anything else
# (spaces, control characters) is refused rather than passed to a resolver that might
# read it more leniently than we do.
_HOST_NAME = re.compile(r"[a-z0-9._-]+")
# Hosts that inet_aton might read as IPv4: digits, hex digits, 'x' and dots only.
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")

# Non-global IPv4 ranges (IANA special-purpose registry). An explicit table rather than
# ipaddress's is_global/is_private, whose answers changed between Python patch releases.
_FORBIDDEN_V4: tuple[IPv4Network, ...] = tuple(
    IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches localhost on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, includes cloud metadata 169.254.169.254
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes broadcast
    )
)
# Only 2000::/3 is global unicast; inside it, these are not.
_GLOBAL_V6 = IPv6Network("2000::/3")
_FORBIDDEN_V6: tuple[IPv6Network, ...] = tuple(
    IPv6Network(net)
    for net in (
        "2001::/23",  # IETF protocol assignments, includes Teredo 2001::/32
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
    )
)
_NAT64 = IPv6Network("64:ff9b::/96")


def is_forbidden_address(address: str | IPAddress) -> bool:
    """True for any address that is not globally routable unicast.

    IPv6 forms that embed an IPv4 address (mapped ``::ffff:a.b.c.d``, NAT64
    ``64:ff9b::a.b.c.d``, 6to4 ``2002:AABB:CCDD::``) are judged by that IPv4 address;
    every other IPv6 address outside 2000::/3 (loopback, unspecified, IPv4-compatible,
    ULA, link-local, multicast, ...) is forbidden.
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, IPv4Address):
        return any(ip in net for net in _FORBIDDEN_V4)
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return is_forbidden_address(embedded)
    if ip not in _GLOBAL_V6:
        return True
    return any(ip in net for net in _FORBIDDEN_V6)


def _embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour  # None unless 2002::/16


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a resolver would read from ``host``, or None if it is a name.

    IPv4 follows inet_aton, as getaddrinfo does: ``2130706433``, ``0177.0.0.1``,
    ``0x7f.1`` and ``127.1`` are all 127.0.0.1. ``host`` is yarl's decoded host:
    lower-case, IPv6 without brackets, zone id after '%'.
    """
    if ":" in host:
        try:
            return ipaddress.ip_address(host)
        except ValueError:
            raise BadUrl(f"malformed IPv6 address {host!r}") from None
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return IPv4Address(socket.inet_aton(host))
        except OSError:
            return None  # e.g. "cafe.be": a (strange) name; the resolver checks it
    return None


@dataclass(frozen=True)
class FetchPolicy:
    # True only for trusted deployments and tests: turns off every address check.
    allow_private_addresses: bool = False
    # Non-global networks that may still be fetched from (CIDR strings), e.g. an internal
    # image CDN at "10.20.0.0/16". Everything else non-global stays forbidden.
    allowed_networks: tuple[str, ...] = ()
    connect_timeout_s: float = 5.0
    # Longest silence while reading; a trickling body is caught by total_timeout_s.
    read_timeout_s: float = 10.0
    # Hard deadline for the whole fetch: every hop, DNS, connect and the body.
    total_timeout_s: float = 30.0
    max_bytes: int = 20 * MiB
    max_redirects: int = 3
    user_agent: str = "imagesearch-fetcher/0.1"

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "read_timeout_s", "total_timeout_s", "max_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"FetchPolicy.{name} must be positive")
        if self.max_redirects < 0:
            raise ValueError("FetchPolicy.max_redirects must be >= 0")
        for net in self.allowed_networks:
            ipaddress.ip_network(net)  # fail at configuration time, not on first fetch


@dataclass(frozen=True)
class FetchedBody:
    data: bytes = field(repr=False)
    url: str  # after redirects
    # As declared by the server (media type only, lower-case); never trusted.
    content_type: str | None


class _AddressGuard:
    def __init__(self, policy: FetchPolicy) -> None:
        self._allow_all = policy.allow_private_addresses
        self._allowed = tuple(ipaddress.ip_network(net) for net in policy.allowed_networks)

    def check(self, ip: IPAddress, host: str) -> None:
        if self._allow_all:
            return
        # An allowlist entry "127.0.0.1/32" should also cover ::ffff:127.0.0.1.
        plain = ip.ipv4_mapped if isinstance(ip, IPv6Address) and ip.ipv4_mapped else ip
        if any(plain in net for net in self._allowed):
            return
        if is_forbidden_address(plain):
            # For a name, the address it resolved to is not echoed: clients must not be
            # able to use us as an oracle for internal DNS.
            raise ForbiddenAddress(f"refusing to fetch from {host}: not a public address")


class _CheckingResolver(AbstractResolver):
    """Resolves with ``inner``, then refuses the answer if any address is forbidden.

    aiohttp connects only to addresses its resolver returns, so checking here checks the
    address actually dialled. Refusing the whole answer, rather than dropping the bad
    entries, keeps the outcome independent of which address the connector tries first.
    """

    def __init__(self, inner: AbstractResolver, guard: _AddressGuard) -> None:
        self._inner = inner
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            try:
                ip = ipaddress.ip_address(result["host"])
            except ValueError:
                # Fail closed: an answer we cannot read is an answer we cannot check.
                raise ForbiddenAddress(
                    f"refusing to fetch from {host}: unreadable address"
                ) from None
            self._guard.check(ip, host)
        return results

    async def close(self) -> None:
        await self._inner.close()


class SafeFetcher:
    """Fetches image URLs under a :class:`FetchPolicy`. One per process; reuse it.

    ``resolver`` replaces the system resolver for name lookups (tests use a stub); the
    address checks always wrap it.
    """

    def __init__(self, policy: FetchPolicy, *, resolver: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._guard = _AddressGuard(policy)
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._resolver: _CheckingResolver | None = None

    async def fetch(self, url: str) -> FetchedBody:
        """Fetch ``url``; raise an :class:`IntakeError` subclass on any refusal or failure."""
        try:
            return await asyncio.wait_for(self._fetch(url), self._policy.total_timeout_s)
        except IntakeError:
            raise
        # Before ClientError and OSError: aiohttp's timeouts subclass both.
        except asyncio.TimeoutError as exc:
            raise FetchTimeout(
                f"fetching the URL timed out (deadline {self._policy.total_timeout_s:g} s)"
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise BadUrl(f"invalid URL: {exc}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            # In case a future aiohttp wraps exceptions raised by the resolver.
            cause = exc.__cause__
            if isinstance(cause, IntakeError):
                raise cause from exc
            # Only the kind of failure: aiohttp's messages can quote the upstream's bytes,
            # and the upstream may be an internal host the client should learn nothing of.
            raise FetchFailed(f"fetching the URL failed ({type(exc).__name__})") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            # Passed in, so the connector does not own (or close) it.
            await self._resolver.close()
            self._resolver = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop it will be bound to, and then
        # reused: a session per request would defeat connection pooling and DNS caching.
        if self._session is None:
            inner = self._inner_resolver or aiohttp.DefaultResolver()
            self._resolver = _CheckingResolver(inner, self._guard)
            p = self._policy
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=self._resolver),
                timeout=aiohttp.ClientTimeout(
                    total=None,  # our own deadline spans all hops
                    connect=p.connect_timeout_s,  # DNS + pool wait + TCP/TLS
                    sock_connect=p.connect_timeout_s,
                    sock_read=p.read_timeout_s,
                ),
                headers={
                    "User-Agent": p.user_agent,
                    "Accept": "image/*,*/*;q=0.8",
                    # Images are compressed already; refusing content-encoding also
                    # means no gzip bomb can expand past max_bytes inside aiohttp.
                    "Accept-Encoding": "identity",
                },
                auto_decompress=False,
                # No proxies from the environment: the address dialled must be the
                # checked one. No cookies: one hop must not send state to the next host.
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def _fetch(self, raw_url: str) -> FetchedBody:
        session = self._client()
        url = _parse_url(raw_url)
        for _ in range(self._policy.max_redirects + 1):
            self._check_literal_host(url)
            async with session.get(url, allow_redirects=False) as resp:
                if resp.status in _REDIRECT_STATUSES:
                    url = _redirect_target(url, resp.headers.get("Location"))
                    continue
                if not 200 <= resp.status < 300:
                    raise FetchFailed(f"upstream answered HTTP {resp.status}")
                data = await self._read_body(resp)
                return FetchedBody(data=data, url=str(url), content_type=_media_type(resp))
        raise FetchFailed(f"too many redirects (more than {self._policy.max_redirects})")

    def _check_literal_host(self, url: URL) -> None:
        host = url.host or ""
        ip = parse_ip_literal(host)
        if ip is None:
            return  # a name: _CheckingResolver checks what it resolves to, at connect time
        self._guard.check(ip, host)
        if isinstance(ip, IPv4Address) and host != str(ip):
            # Allowed, but aiohttp refuses legacy spellings; say so plainly.
            raise BadUrl(f"write the IPv4 address {host!r} as {ip}")

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self._policy.max_bytes
        if resp.content_length is not None and resp.content_length > limit:
            resp.close()
            raise PayloadTooLarge(f"remote body is {resp.content_length} bytes; limit {limit}")
        body = bytearray()
        async for chunk in resp.content.iter_chunked(_CHUNK_SIZE):
            body += chunk
            if len(body) > limit:
                # close(), not release(): drop the connection instead of draining the rest.
                resp.close()
                raise PayloadTooLarge(f"remote body exceeds the limit of {limit} bytes")
        return bytes(body)


def _parse_url(raw: str) -> URL:
    if len(raw) > _MAX_URL_LENGTH:
        raise BadUrl(f"URL is longer than {_MAX_URL_LENGTH} characters")
    try:
        url = URL(raw)
    except (ValueError, TypeError) as exc:
        raise BadUrl(f"malformed URL: {exc}") from exc
    if url.scheme not in _SCHEMES:
        raise BadUrl(f"URL scheme {url.scheme or '(none)'!r} is not allowed; use http or https")
    if url.user is not None or url.password is not None:
        raise BadUrl("URLs with credentials are not accepted")
    raw_host = url.raw_host
    if not raw_host:
        raise BadUrl("URL has no host")
    if ":" not in raw_host and not _HOST_NAME.fullmatch(raw_host):
        raise BadUrl(f"malformed host {raw_host!r}")
    return url.with_fragment(None)


def _redirect_target(current: URL, location: str | None) -> URL:
    if not location:
        raise FetchFailed("upstream redirected without a Location header")
    try:
        target = current.join(URL(location))  # relative Locations resolve against current
    except (ValueError, TypeError) as exc:
        raise BadUrl(f"redirect to a malformed URL: {exc}") from exc
    return _parse_url(str(target))


def _media_type(resp: aiohttp.ClientResponse) -> str | None:
    value = resp.headers.get("Content-Type")
    if not value:
        return None
    return value.split(";", 1)[0].strip().lower() or None
