"""The domain's exceptions: one family, raised anywhere below the HTTP edge.

Each class carries a stable snake_case ``code`` that clients can branch on, and a
message fit for the client (``str(error)``). Which HTTP status each one becomes is
decided once, at the edge (ingress.http.errors), so this module imports nothing.
"""

from __future__ import annotations

from typing import ClassVar


class DomainError(Exception):
    """A request the service refuses on purpose; ``str(error)`` is the client's message."""

    code: ClassVar[str] = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(DomainError):
    """A field out of its bounds (a limit, a tag, a query length, a size)."""

    code = "validation_error"


class NotFound(DomainError):
    """No image with this id."""

    code = "not_found"

    def __init__(self, image_id: str) -> None:
        super().__init__(f"no image with id {image_id!r}")
        self.image_id = image_id


class BadCursor(DomainError):
    """A list cursor that this store did not hand out."""

    code = "bad_cursor"


class ModelTimeout(DomainError):
    """A model deployment did not answer within the configured time."""

    code = "model_timeout"


class IntakeError(DomainError):
    """Input we refuse to ingest: an upload or a user-supplied URL."""


class PayloadTooLarge(IntakeError):
    """More bytes than the configured cap (upload body or fetched body)."""

    code = "payload_too_large"


class UnsupportedMediaType(IntakeError):
    """Bytes that are not one of the image formats we accept (SVG, HTML, PDF, ICO, ...),
    or a request body of a type the route does not read."""

    code = "unsupported_media_type"


class InvalidImage(IntakeError):
    """An accepted format whose bytes are empty, truncated or corrupt."""

    code = "invalid_image"


class ImageTooLarge(IntakeError):
    """Too many pixels (or frames) to decode safely, whatever the byte size."""

    code = "image_too_large"


class BadUrl(IntakeError):
    """A URL we will not fetch: wrong scheme, credentials in it, or malformed."""

    code = "bad_url"


class ForbiddenAddress(IntakeError):
    """A URL whose host is (or resolves to) a non-public address."""

    code = "forbidden_address"


class FetchFailed(IntakeError):
    """The upstream answered with an error, redirected too often, or was unreachable."""

    code = "fetch_failed"


class FetchTimeout(IntakeError):
    """The upstream was too slow (connect, read, or the whole-fetch deadline)."""

    code = "fetch_timeout"
