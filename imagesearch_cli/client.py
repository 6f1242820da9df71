"""The service's HTTP API (v1) over aiohttp, with retries for transient failures.

Every call either returns the decoded JSON answer or raises ServiceError carrying the
status and the service's own `{"error": {"code", "message"}}`, so callers can report
exactly why a request was refused.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from imagesearch_cli.retry import DEFAULT_TIMEOUT_S, RetryPolicy, parse_retry_after

USER_AGENT = "imagesearch-cli/0.1"
# Connection-level failures worth another try: refused or reset connections, a server
# that hung up mid-answer, timeouts.
_TRANSIENT_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)

Params = Sequence[tuple[str, str]]


class ServiceError(Exception):
    """The service refused a request (status set) or could not be reached (status None)."""

    def __init__(
        self, status: int | None, code: str, message: str, *, from_service: bool = True
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        # False when the body was not the service's JSON error (a proxy's page).
        self.from_service = from_service
        # An earlier attempt of the same call may have taken effect (its replica died
        # with it, or the connection broke): a 404 now may be that attempt's doing.
        self.after_lost_attempt = False

    @property
    def stops_run(self) -> bool:
        """Unreachable, or the key refused (401, 403): every later request would fail the
        same way, so a command working through many items stops here."""
        return self.status is None or self.status in (401, 403)

    @property
    def reason(self) -> str:
        """One line for a report: `415 unsupported_media_type: image format ... `."""
        prefix = f"{self.status} {self.code}" if self.status is not None else self.code
        return f"{prefix}: {self.message}"

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Answer:
    status: int
    data: Any


def _error_from(status: int, body: bytes) -> ServiceError:
    try:
        detail = json.loads(body)["error"]
        return ServiceError(status, str(detail["code"]), str(detail["message"]))
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip().replace("\n", " ")
        message = text[:200] or f"HTTP {status}"
        if status >= 500:
            message += " (from Serve's proxy, not the service: a replica stopped mid-request)"
        return ServiceError(status, "http_error", message, from_service=False)


class ApiClient:
    """One aiohttp session against one service. Use as `async with ApiClient(...) as api`.

    `requests` counts the requests sent per operation (retries included), which is
    what tells a user, or a test, that a skipped file was never uploaded.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        policy: RetryPolicy | None = None,
        max_connections: int = 16,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.policy = policy or RetryPolicy()
        self.max_connections = max_connections
        self.requests: Counter[str] = Counter()
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.api_key:
            # The service takes its own key header or a bearer token; the bearer form
            # works whichever header name a deployment configured.
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=self.max_connections),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the API ----------------------------------------------------------------------

    async def get_image(self, image_id: str) -> dict[str, Any] | None:
        """The record, or None when the service does not have it."""
        try:
            answer = await self._call("check", "GET", f"/images/{quote(image_id, safe='')}")
        except ServiceError as exc:
            if exc.status == 404:
                return None
            raise
        return dict(answer.data)

    async def add_file(
        self, data: bytes, filename: str, content_type: str, tags: Sequence[str] = ()
    ) -> Answer:
        """POST /images as an upload: 201 with the record, or 200 when a duplicate."""

        def form() -> aiohttp.FormData:
            body = aiohttp.FormData()
            body.add_field("file", data, filename=filename, content_type=content_type)
            if tags:
                body.add_field("tags", ",".join(tags))
            return body

        return await self._call("upload", "POST", "/images", form=form)

    async def add_url(self, url: str, tags: Sequence[str] = ()) -> Answer:
        # Not idempotent for a proxy's 500: the URL may answer other bytes next time.
        return await self._call(
            "add_url",
            "POST",
            "/images",
            json_body={"url": url, "tags": list(tags)},
            idempotent=False,
        )

    async def search(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /search/{kind} with a JSON body (kind: text, url or similar)."""
        answer = await self._call(f"search_{kind}", "POST", f"/search/{kind}", json_body=body)
        return dict(answer.data)

    async def search_image(
        self, data: bytes, filename: str, content_type: str, fields: Mapping[str, str]
    ) -> dict[str, Any]:
        def form() -> aiohttp.FormData:
            body = aiohttp.FormData()
            body.add_field("file", data, filename=filename, content_type=content_type)
            for name, value in fields.items():
                body.add_field(name, value)
            return body

        answer = await self._call("search_image", "POST", "/search/image", form=form)
        return dict(answer.data)

    async def list_images(self, params: Params) -> dict[str, Any]:
        answer = await self._call("list", "GET", "/images", params=params)
        return dict(answer.data)

    async def delete(self, image_id: str) -> bool:
        """True when deleted, False when there was no such image."""
        try:
            await self._call("delete", "DELETE", f"/images/{quote(image_id, safe='')}")
        except ServiceError as exc:
            if exc.status == 404:
                # Gone either way; an attempt lost with its replica may have deleted it.
                return exc.after_lost_attempt
            raise
        return True

    async def health(self) -> dict[str, Any]:
        answer = await self._call("health", "GET", "/healthz")
        return dict(answer.data)

    # -- one request, with retries --------------------------------------------------

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        form: Callable[[], aiohttp.FormData] | None = None,
        params: Params | None = None,
        idempotent: bool = True,
    ) -> Answer:
        """One call, retried while the failure is transient. `idempotent`: repeating it
        is safe even when an attempt may have taken effect (see RetryPolicy.retryable)."""
        if self._session is None:
            raise RuntimeError("use ApiClient inside `async with`")
        url = self.base_url + path
        attempt = 0
        lost = False
        while True:
            self.requests[operation] += 1
            retry_after: float | None = None
            try:
                # A form is rebuilt per attempt: aiohttp consumes it when sending.
                async with self._session.request(
                    method,
                    url,
                    json=json_body,
                    data=form() if form is not None else None,
                    params=params,
                    allow_redirects=True,
                ) as response:
                    body = await response.read()
                    status = response.status
                    if status < 400:
                        return Answer(status, json.loads(body) if body else None)
                    error = _error_from(status, body)
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
            except aiohttp.InvalidURL as exc:
                raise ServiceError(None, "bad_url", f"not a usable service URL: {exc}") from None
            except _TRANSIENT_ERRORS as exc:
                error = ServiceError(
                    None,
                    "unreachable",
                    f"{self.base_url}: {type(exc).__name__}: {exc}".rstrip(": "),
                )
            except ValueError as exc:  # a 2xx whose body is not JSON: not this service
                raise ServiceError(
                    None, "bad_answer", f"{url} did not answer JSON: {exc}"
                ) from None
            transient = error.status is None or self.policy.retryable(
                error.status, service_answered=error.from_service, idempotent=idempotent
            )
            if not transient or attempt >= self.policy.retries:
                error.after_lost_attempt = lost
                raise error
            lost = lost or not error.from_service or error.status is None
            await self._sleep(self.policy.delay(attempt, retry_after))
            attempt += 1
