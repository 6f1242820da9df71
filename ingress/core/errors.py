"""Errors for rejected input (uploads and user-supplied URLs).

Each class carries the HTTP status and a stable snake_case ``code`` as class attributes,
so the HTTP layer can map any of them to ``{"error": {"code", "message"}}`` without a
lookup table, and clients can branch on ``code`` without parsing messages.
"""

from __future__ import annotations

from typing import ClassVar


class IntakeError(Exception):
    """Input we refuse to ingest; ``str(error)`` is a message fit for the client."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PayloadTooLarge(IntakeError):
    """More bytes than the configured cap (upload body or fetched body)."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(IntakeError):
    """Bytes that are not one of the image formats we accept (SVG, HTML, PDF, ICO, ...)."""

    status = 415
    code = "unsupported_media_type"


class InvalidImage(IntakeError):
    """An accepted format whose bytes are empty, truncated or corrupt."""

    status = 400
    code = "invalid_image"


class ImageTooLarge(IntakeError):
    """Too many pixels (or frames) to decode safely, whatever the byte size."""

    status = 413
    code = "image_too_large"


class BadUrl(IntakeError):
    """A URL we will not fetch: wrong scheme, credentials in it, or malformed."""

    status = 400
    code = "bad_url"


class ForbiddenAddress(IntakeError):
    """A URL whose host is (or resolves to) a non-public address."""

    status = 400
    code = "forbidden_address"


class FetchFailed(IntakeError):
    """The upstream answered with an error, redirected too often, or was unreachable."""

    status = 502
    code = "fetch_failed"


class FetchTimeout(IntakeError):
    """The upstream was too slow (connect, read, or the whole-fetch deadline)."""

    status = 504
    code = "fetch_timeout"
