"""A replica that dies mid-request: Serve's proxy answers a bare `500 text/plain` (ray-project/
ray#47219). The CLI's client tries such an answer again for the calls that are safe to
repeat, and only for those, against a scripted aiohttp server on loopback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from imagesearch_cli.client import ApiClient, ServiceError
from imagesearch_cli.retry import RetryPolicy
from tests.unit.test_cli_client import Script, script

__all__ = ["script"]  # the fixture: a scripted aiohttp server on loopback

PROXY_500 = "Internal Server Error"


def _proxy_failure(status: int = 500) -> web.Response:
    return web.Response(status=status, text=PROXY_500, content_type="text/plain")


def _service_error(status: int, code: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": "m"}}, status=status)


async def _no_sleep(seconds: float) -> None:
    return None


def _client(url: str, retries: int = 3) -> ApiClient:
    policy = RetryPolicy(retries=retries, base_delay_s=0.0, jitter=lambda: 1.0)
    return ApiClient(url, timeout_s=10, policy=policy, sleep=_no_sleep)


def test_the_rule() -> None:
    policy = RetryPolicy()
    for status in (500, 502, 503, 504, 520):
        assert policy.retryable(status, service_answered=False)
    # The service's own JSON 500 is an answer, not a lost request.
    assert not policy.retryable(500, service_answered=True)
    # Not repeatable: only "not now" statuses, which say nothing was done.
    assert not policy.retryable(500, service_answered=False, idempotent=False)
    assert policy.retryable(503, service_answered=False, idempotent=False)
    for status in (400, 404, 413, 415, 422):
        assert not policy.retryable(status, service_answered=False)


Call = Callable[[ApiClient], Awaitable[Any]]
IDEMPOTENT: dict[str, tuple[Call, web.Response]] = {
    "upload": (
        lambda api: api.add_file(b"bytes", "a.jpg", "image/jpeg"),
        web.json_response({"id": "x", "duplicate": True}),
    ),
    "get": (lambda api: api.get_image("x"), web.json_response({"id": "x"})),
    "list": (lambda api: api.list_images([]), web.json_response({"images": []})),
    "search": (
        lambda api: api.search("text", {"query": "cat"}),
        web.json_response({"results": []}),
    ),
    "search_image": (
        lambda api: api.search_image(b"bytes", "a.jpg", "image/jpeg", {}),
        web.json_response({"results": []}),
    ),
    "delete": (lambda api: api.delete("x"), web.Response(status=204)),
}


@pytest.mark.parametrize("name", sorted(IDEMPOTENT))
async def test_a_proxy_500_is_retried_for_idempotent_calls(
    script: tuple[Script, str], name: str
) -> None:
    server, url = script
    call, success = IDEMPOTENT[name]
    server.answers = [_proxy_failure(), _proxy_failure(502), success]
    async with _client(url) as api:
        assert await call(api)
    assert len(server.seen) == 3


async def test_a_json_500_from_the_service_is_final(script: tuple[Script, str]) -> None:
    server, url = script
    server.answers = [_service_error(500, "internal_error")]
    async with _client(url) as api:
        with pytest.raises(ServiceError) as caught:
            await api.add_file(b"bytes", "a.jpg", "image/jpeg")
    assert (caught.value.status, caught.value.code) == (500, "internal_error")
    assert caught.value.from_service
    assert [seen["method"] for seen in server.seen] == ["POST"]


async def test_adding_by_url_is_not_repeated_after_a_proxy_500(
    script: tuple[Script, str],
) -> None:
    server, url = script
    server.answers = [_proxy_failure(), _proxy_failure()]
    async with _client(url) as api:
        with pytest.raises(ServiceError) as caught:
            await api.add_url("https://example.com/a.jpg")
    assert caught.value.status == 500 and not caught.value.from_service
    assert "replica stopped mid-request" in caught.value.message
    assert [seen["method"] for seen in server.seen] == ["POST"]
    # Still one request for what is not left to chance: a 503 says nothing was done.
    server.answers = [_service_error(503, "overloaded"), web.json_response({"id": "y"})]
    async with _client(url) as api:
        assert (await api.add_url("https://example.com/a.jpg")).data == {"id": "y"}


async def test_retries_are_bounded(script: tuple[Script, str]) -> None:
    server, url = script
    server.answers = [_proxy_failure() for _ in range(3)]
    async with _client(url, retries=2) as api:
        with pytest.raises(ServiceError) as caught:
            await api.search("text", {"query": "cat"})
    assert caught.value.status == 500
    assert len(server.seen) == 3


async def test_a_delete_lost_with_its_replica_counts_as_deleted(
    script: tuple[Script, str],
) -> None:
    """The first attempt deleted the record, then its replica died: the retry's 404 means
    the image is gone, as asked."""
    server, url = script
    server.answers = [_proxy_failure(), _service_error(404, "not_found")]
    async with _client(url) as api:
        assert await api.delete("x") is True
    server.answers = [_service_error(404, "not_found")]
    async with _client(url) as api:
        assert await api.delete("x") is False
