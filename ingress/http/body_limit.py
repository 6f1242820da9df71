"""Caps request bodies while they stream in, before any parser buffers them."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingress.core.errors import PayloadTooLarge
from ingress.http.asgi_errors import send_json_error


class BodySizeLimit:
    """413 when Content-Length says too much; PayloadTooLarge (mapped to 413 by the
    error handlers) as soon as a streamed body without one goes past the limit.
    JSON bodies get their own, much smaller limit."""

    def __init__(
        self, app: ASGIApp, limit: Callable[[], int], json_limit: Callable[[], int]
    ) -> None:
        self.app = app
        self.limit = limit
        self.json_limit = json_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        is_json = headers.get(b"content-type", b"").startswith(b"application/json")
        limit = self.json_limit() if is_json else self.limit()
        declared = _content_length(headers.get(b"content-length"))
        if declared is not None and declared > limit:
            message = f"request body of {declared} bytes exceeds {limit} bytes"
            await send_json_error(send, 413, "payload_too_large", message, {"Connection": "close"})
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"request body exceeds {limit} bytes")
            return message

        await self.app(scope, limited, send)


def _content_length(value: bytes | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
