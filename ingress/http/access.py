"""Access control for the HTTP API: optional API keys with scopes, and rate limits.

Both are off by default (local use) and switched on in the production config.

API keys come only from the environment variable named by `AuthArgs.keys_env`
(default `IMAGESEARCH_API_KEYS`, typically filled from a Kubernetes Secret), read when
the ingress replica starts. Its value holds one entry per line (or entries separated
by `;`), each `name:scopes:key`:

    ci-bot:read+write:Vx3kq0J2d9YcP1o8wzZr7tLmNa4sEbHf
    grafana:read:7b1f0c2e9d8a4b6c5e3f1a0d9c8b7a6e

- `name`: a non-secret label, `[A-Za-z0-9._-]{1,64}`, unique; used in logs and as the
  rate-limit bucket, never the key itself.
- `scopes`: `read`, `write` or `read+write`. `read` allows searching, listing and
  fetching; `write` allows adding and deleting images and implies `read`.
- `key`: 16 to 512 characters of `A-Z a-z 0-9 . _ ~ + / = -` (hex, base64 and
  URL-safe base64 all fit; e.g. `python -c "import secrets; print(secrets.token_urlsafe(32))"`).
  Keys must be unique.

Whitespace around fields, blank lines and lines starting with `#` are ignored. A
malformed entry stops the replica at start with a ValueError naming its line, never
its content.

Clients send the key in the `X-API-Key` header (configurable) or as
`Authorization: Bearer <key>`. Keys are stored only as SHA-256 digests and a presented
key is compared against every stored digest with `hmac.compare_digest`, so the time
taken does not depend on which key, or how much of one, matched.

Rate limits are token buckets per API key name, or per client address when keys are
off (and for the open documentation paths). Each ingress replica keeps its own
buckets: with N replicas a client may get up to N times the configured rate.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from ingress.http.asgi_errors import send_json_error
from ingress.http.rate_limit import TokenBucketLimiter
from ingress.settings import DEFAULT_HEADER, DEFAULT_KEYS_ENV, AuthArgs

logger = logging.getLogger("ingress.http.access")

READ = "read"
WRITE = "write"
SCOPES = frozenset({READ, WRITE})


# Paths that need no key: probes and the API documentation.
OPEN_PATHS = frozenset(
    {
        "/healthz",
        "/docs",
        "/docs/oauth2-redirect",
        "/openapi.json",
        "/redoc",
        # The search page and its script and style: a browser opening the page sends no
        # key; the page sends the key the user enters with every API call it makes.
        "/",
        "/static/app.js",
        "/static/style.css",
    }
)
# Paths never rate limited, so liveness and readiness probes never see a 429.
UNLIMITED_PATHS = frozenset({"/healthz"})

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# POST routes that only read: the searches and the stateless embed-image.
_READ_POST_PREFIXES = ("/search/", "/images/search/")
_READ_POST_PATHS = frozenset({"/image/search/url", "/embed-image"})


# -- keys -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who a key belongs to: a non-secret label and what it may do."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class KeyRing:
    """The configured API keys, held as SHA-256 digests only."""

    def __init__(self, entries: list[tuple[bytes, Principal]], header: str = DEFAULT_HEADER):
        if not entries:
            raise ValueError("a key ring needs at least one key")
        self._entries = entries
        self.header = header

    @classmethod
    def parse(
        cls, text: str, source: str = DEFAULT_KEYS_ENV, header: str = DEFAULT_HEADER
    ) -> KeyRing:
        """Parse `name:scopes:key` entries; errors name `source` and the line, never a key."""
        entries: list[tuple[bytes, Principal]] = []
        names: dict[str, str] = {}
        digests: dict[bytes, str] = {}
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip().startswith("#"):
                continue
            parts = [part.strip() for part in line.split(";")]
            for index, entry in enumerate(parts, start=1):
                if not entry:
                    continue
                where = f"{source} line {lineno}" + (f" entry {index}" if len(parts) > 1 else "")
                principal, key = _parse_entry(entry, where)
                if principal.name in names:
                    raise ValueError(
                        f"{where}: name {principal.name!r} is already used at {names[principal.name]}"
                    )
                digest = _digest(key)
                if digest in digests:
                    raise ValueError(f"{where}: the same key is already given at {digests[digest]}")
                names[principal.name] = where
                digests[digest] = where
                entries.append((digest, principal))
        if not entries:
            raise ValueError(f"{source} holds no API keys; expected `name:scopes:key` entries")
        return cls(entries, header)

    @classmethod
    def from_env(
        cls,
        env_var: str = DEFAULT_KEYS_ENV,
        header: str = DEFAULT_HEADER,
        environ: Mapping[str, str] | None = None,
    ) -> KeyRing:
        value = (os.environ if environ is None else environ).get(env_var, "")
        if not value.strip():
            raise ValueError(
                f"API keys are enabled but the environment variable {env_var} is not set or "
                "empty; give it `name:scopes:key` entries, one per line (e.g. from a Secret)"
            )
        return cls.parse(value, source=env_var, header=header)

    @property
    def names(self) -> list[str]:
        return [principal.name for _, principal in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"KeyRing(names={self.names!r}, header={self.header!r})"

    def lookup(self, presented: str) -> Principal | None:
        """The key's principal, or None. Compares against every stored digest, always."""
        digest = _digest(presented)
        found: Principal | None = None
        for stored, principal in self._entries:
            # No early exit: every request costs the same number of comparisons.
            if hmac.compare_digest(stored, digest):
                found = principal
        return found


def _parse_entry(entry: str, where: str) -> tuple[Principal, str]:
    fields = [field.strip() for field in entry.split(":", 2)]
    if len(fields) != 3:
        raise ValueError(f"{where}: expected `name:scopes:key`")
    name, scopes_text, key = fields
    if not _NAME.fullmatch(name):
        raise ValueError(f"{where}: the name must be 1 to 64 of A-Z a-z 0-9 . _ -")
    scopes = {scope.strip() for scope in scopes_text.split("+")}
    unknown = sorted(scopes - SCOPES)
    if unknown:
        raise ValueError(f"{where}: unknown scope {unknown[0]!r}; use read, write or read+write")
    if WRITE in scopes:
        scopes.add(READ)
    if not _KEY.fullmatch(key):
        raise ValueError(f"{where}: the key must be 16 to 512 of A-Z a-z 0-9 . _ ~ + / = -")
    return Principal(name, frozenset(scopes)), key


# -- which scope a request needs ------------------------------------------------------


def _normalise(path: str) -> str:
    stripped = path.rstrip("/")
    return stripped or "/"


def required_scope(method: str, path: str) -> str | None:
    """None for the open paths, `write` for what changes data, `read` for the rest.

    Read: GET/HEAD/OPTIONS, and POST to the searches (`/search/*`, `/images/search/*`,
    `/image/search/url`) and `/embed-image`. Write: any other POST (`/images`,
    `/images/add`, and any route added later until it is classified here), DELETE,
    PATCH, PUT and other methods. Unknown routes fail closed.
    """
    path = _normalise(path)
    if path in OPEN_PATHS:
        return None
    method = method.upper()
    if method in _READ_METHODS:
        return READ
    if method == "POST" and (path in _READ_POST_PATHS or path.startswith(_READ_POST_PREFIXES)):
        return READ
    return WRITE


# -- middleware -----------------------------------------------------------------------


def _route_path(scope: Scope) -> str:
    """The path the router sees: `path` without the `root_path` mount prefix."""
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


def _presented_key(scope: Scope, header: str) -> str | None:
    wanted = header.lower().encode("latin-1")
    bearer: str | None = None
    for name, value in scope.get("headers", []):
        if name == wanted:
            key = value.decode("latin-1").strip()
            if key:
                return key
        elif name == b"authorization" and bearer is None:
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                bearer = credentials.strip()
    return bearer


def _client_bucket(scope: Scope) -> str:
    client = scope.get("client")
    return f"addr:{client[0] if client else 'unknown'}"


class AccessControl:
    """API keys and rate limits in front of the app, as plain ASGI.

    `auth` and `limiter` are called per request, because the ingress learns its
    settings only after the app is built; None switches that part off.
    `on_reject(status, code)` is told about every refusal (e.g. to count it).
    """

    def __init__(
        self,
        app: ASGIApp,
        auth: Callable[[], KeyRing | None],
        limiter: Callable[[], TokenBucketLimiter | None],
        on_reject: Callable[[int, str], None] | None = None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.limiter = limiter
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        keyring = self.auth()
        limiter = self.limiter()
        if keyring is None and limiter is None:
            await self.app(scope, receive, send)
            return
        path = _normalise(_route_path(scope))
        needed = required_scope(scope.get("method", "GET"), path)
        bucket: str | None = None
        if keyring is not None and needed is not None:
            presented = _presented_key(scope, keyring.header)
            principal = keyring.lookup(presented) if presented is not None else None
            if principal is None:
                # Failed attempts count against the caller's address, so a flood of
                # guesses is throttled like any other traffic.
                if limiter is not None:
                    wait = limiter.check(_client_bucket(scope))
                    if wait is not None:
                        await self._too_many(scope, send, wait)
                        return
                message = (
                    "the API key is not valid"
                    if presented is not None
                    else f"an API key is required: send it in the {keyring.header} header "
                    "or as `Authorization: Bearer <key>`"
                )
                await self._refuse(
                    scope,
                    send,
                    401,
                    "unauthorized",
                    message,
                    {"WWW-Authenticate": f'ApiKey header="{keyring.header}"'},
                )
                return
            if not principal.allows(needed):
                await self._refuse(
                    scope,
                    send,
                    403,
                    "forbidden",
                    f"this API key lacks the {needed!r} scope",
                    None,
                    f"key:{principal.name}",
                )
                return
            bucket = f"key:{principal.name}"
        elif path not in UNLIMITED_PATHS:
            bucket = _client_bucket(scope)
        if limiter is not None and bucket is not None:
            wait = limiter.check(bucket)
            if wait is not None:
                await self._too_many(scope, send, wait, bucket)
                return
        await self.app(scope, receive, send)

    async def _too_many(
        self, scope: Scope, send: Send, wait: float, who: str | None = None
    ) -> None:
        seconds = max(1, math.ceil(wait))
        await self._refuse(
            scope,
            send,
            429,
            "rate_limited",
            f"too many requests; retry in {seconds} s",
            {"Retry-After": str(seconds)},
            who,
        )

    async def _refuse(
        self,
        scope: Scope,
        send: Send,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None,
        who: str | None = None,
    ) -> None:
        logger.debug(
            "%s %s -> %d %s (%s)",
            scope.get("method"),
            scope.get("path"),
            status,
            code,
            who or _client_bucket(scope),
        )
        if self.on_reject is not None:
            try:
                self.on_reject(status, code)
            except Exception:  # counting must never turn a refusal into a crash
                logger.exception("on_reject hook failed")
        await send_json_error(send, status, code, message, headers)


def keyring_for(args: AuthArgs, environ: Mapping[str, str] | None = None) -> KeyRing | None:
    """The keys from the environment when auth is enabled; None when it is off.

    Raises ValueError when enabled and the variable is missing, empty or malformed.
    """
    if not args.enabled:
        return None
    return KeyRing.from_env(args.keys_env, header=args.header, environ=environ)
