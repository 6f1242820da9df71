"""The CLI's HTTP client: which failures it retries, how long it waits, and what it
reports, against a scripted aiohttp server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from imagesearch_cli.client import ApiClient, ServiceError
from imagesearch_cli.retry import RetryPolicy, parse_retry_after
from tests.conftest import free_port


def test_backoff_is_exponential_capped_and_jittered() -> None:
    top = RetryPolicy(base_delay_s=0.5, max_delay_s=5.0, jitter=lambda: 1.0)
    assert [top.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 5.0]
    half = RetryPolicy(base_delay_s=0.5, max_delay_s=5.0, jitter=lambda: 0.5)
    assert half.delay(2) == 1.0
    # The server's Retry-After wins, within the cap.
    assert top.delay(0, retry_after=3.0) == 3.0
    assert top.delay(0, retry_after=600.0) == 5.0
    assert [s for s in (400, 413, 415, 422, 429, 500, 502, 503, 504) if top.retryable(s)] == [
        429,
        502,
        503,
        504,
    ]


def test_retry_after_header_forms() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_unreachable_or_refused_key_stops_a_run() -> None:
    stopping = [ServiceError(status, "x", "y") for status in (None, 401, 403)]
    assert all(error.stops_run for error in stopping)
    going_on = [ServiceError(status, "x", "y") for status in (400, 404, 413, 415, 429, 503)]
    assert not any(error.stops_run for error in going_on)


class Script:
    """Answers the scripted responses in order, recording each request."""

    def __init__(self) -> None:
        self.answers: list[web.Response] = []
        self.seen: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        seen: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "auth": request.headers.get("Authorization"),
        }
        if request.content_type == "multipart/form-data":
            form = await request.post()
            upload = form["file"]
            assert isinstance(upload, web.FileField)
            seen["file"] = upload.file.read()
            seen["tags"] = form.get("tags")
        elif request.can_read_body:
            seen["json"] = await request.json()
        self.seen.append(seen)
        return self.answers.pop(0)


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


@pytest.fixture
async def script() -> AsyncIterator[tuple[Script, str]]:
    scripted = Script()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield scripted, str(server.make_url("/svc"))
    finally:
        await server.close()


class Sleeps:
    def __init__(self) -> None:
        self.waited: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waited.append(seconds)


def _client(url: str, sleeps: Sleeps, retries: int = 3, key: str | None = None) -> ApiClient:
    policy = RetryPolicy(retries=retries, base_delay_s=1.0, max_delay_s=60.0, jitter=lambda: 1.0)
    return ApiClient(url, key, timeout_s=10, policy=policy, sleep=sleeps)


async def test_transient_errors_are_retried_with_the_same_upload(
    script: tuple[Script, str],
) -> None:
    server, url = script
    server.answers = [
        _error(503, "overloaded", "busy", **{"Retry-After": "7"}),
        _error(502, "model_error", "the captioner failed"),
        web.json_response({"id": "x", "duplicate": False}, status=201),
    ]
    sleeps = Sleeps()
    async with _client(url, sleeps, key="k" * 20) as api:
        answer = await api.add_file(b"\xff\xd8bytes", "a.jpg", "image/jpeg", ["cats", "pets"])
    assert (answer.status, answer.data["id"]) == (201, "x")
    assert sleeps.waited == [7.0, 2.0]  # Retry-After, then base·2¹
    assert [seen["file"] for seen in server.seen] == [b"\xff\xd8bytes"] * 3
    assert {seen["tags"] for seen in server.seen} == {"cats,pets"}
    assert {seen["path"] for seen in server.seen} == {"/svc/images"}
    assert {seen["auth"] for seen in server.seen} == {"Bearer " + "k" * 20}
    assert api.requests["upload"] == 3


async def test_client_errors_are_final_with_the_service_reason(
    script: tuple[Script, str],
) -> None:
    server, url = script
    server.answers = [_error(415, "unsupported_media_type", "image format 'PDF' is not accepted")]
    sleeps = Sleeps()
    async with _client(url, sleeps) as api:
        with pytest.raises(ServiceError) as caught:
            await api.add_url("https://example.com/a.pdf", ["docs"])
    assert caught.value.reason == ("415 unsupported_media_type: image format 'PDF' is not accepted")
    assert sleeps.waited == [] and len(server.seen) == 1
    assert server.seen[0]["json"] == {"url": "https://example.com/a.pdf", "tags": ["docs"]}
    assert server.seen[0]["auth"] is None


async def test_retries_run_out(script: tuple[Script, str]) -> None:
    server, url = script
    server.answers = [
        _error(429, "rate_limited", "slow down", **{"Retry-After": "1"}) for _ in range(3)
    ]
    sleeps = Sleeps()
    async with _client(url, sleeps, retries=2) as api:
        with pytest.raises(ServiceError) as caught:
            await api.search("text", {"query": "cat"})
    assert (caught.value.status, caught.value.code) == (429, "rate_limited")
    assert len(server.seen) == 3 and sleeps.waited == [1.0, 1.0]


async def test_not_found_is_an_answer_and_non_json_errors_are_reported(
    script: tuple[Script, str],
) -> None:
    server, url = script
    server.answers = [
        _error(404, "not_found", "no image abc"),
        _error(404, "not_found", "no image abc"),
        web.Response(status=500, text="<html>Internal Server Error</html>"),
    ]
    async with _client(url, Sleeps()) as api:
        assert await api.get_image("abc") is None
        assert await api.delete("abc") is False
        # Adding by URL is not repeated after a proxy's 500 (tests/unit/test_cli_retry.py).
        with pytest.raises(ServiceError) as caught:
            await api.add_url("https://example.com/a.jpg")
    assert caught.value.reason.startswith("500 http_error: <html>Internal Server Error</html>")
    assert "Serve's proxy" in caught.value.reason
    assert [s["method"] for s in server.seen] == ["GET", "DELETE", "POST"]


async def test_unreachable_service_is_retried_then_reported() -> None:
    sleeps = Sleeps()
    async with _client(f"http://127.0.0.1:{free_port()}", sleeps, retries=2) as api:
        with pytest.raises(ServiceError) as caught:
            await api.health()
    assert caught.value.status is None and caught.value.code == "unreachable"
    assert api.requests["health"] == 3 and sleeps.waited == [1.0, 2.0]
