"""JSON error responses sent straight from ASGI middleware, before FastAPI is reached.

The body has the same shape as every other error of the API (see ingress.http.errors):
`{"error": {"code": ..., "message": ...}}`, with its content type and length.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from starlette.types import Send

HeaderItems = Mapping[str, str] | Iterable[tuple[str, str]]


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


async def send_json_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: HeaderItems | None = None,
) -> None:
    """Answer the request with `status` and the standard error body.

    `headers` adds to content-type and content-length (e.g. Retry-After,
    WWW-Authenticate, Connection: close); names are sent in lower case.
    """
    payload = error_body(code, message)
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if headers is not None:
        items = headers.items() if isinstance(headers, Mapping) else headers
        raw.extend(
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in items
        )
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
