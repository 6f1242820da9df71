"""The one place where exceptions become HTTP errors: `{"error": {"code", "message"}}`.

Everything below the HTTP layer raises its own exceptions (the domain's in
ingress.core.errors, the stores', Ray's); this module maps them to a status and code,
so a client never sees a bare 500 or a stack trace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray.exceptions import RayActorError, RayError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
    ReplicaUnavailableError,
    RequestCancelledError,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.contracts import InvalidModelInput
from ingress.core.errors import (
    BadCursor,
    BadUrl,
    DomainError,
    FetchFailed,
    FetchTimeout,
    ForbiddenAddress,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    ModelTimeout,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from ingress.http.metrics import service_metrics
from ingress.stores.base import (
    BlobNotFound,
    EmbeddingMismatch,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)

logger = logging.getLogger("ingress.http.errors")


@dataclass
class ApiError(Exception):
    """An error the service answers on purpose (not found, bad request, ...)."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


# The status of each domain error; a subclass takes its nearest listed ancestor's.
_DOMAIN_STATUS: dict[type[DomainError], int] = {
    DomainError: 400,
    InvalidRequest: 422,
    NotFound: 404,
    BadCursor: 400,
    ModelTimeout: 504,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidImage: 400,
    ImageTooLarge: 413,
    BadUrl: 400,
    ForbiddenAddress: 400,
    FetchFailed: 502,
    FetchTimeout: 504,
}


def _domain_status(exc: DomainError) -> int:
    for cls in type(exc).__mro__:
        if cls in _DOMAIN_STATUS:
            return _DOMAIN_STATUS[cls]
    return 400


def to_api_error(exc: BaseException) -> ApiError:
    """Map any exception to the status and code a client should see."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DomainError):
        return ApiError(_domain_status(exc), exc.code, exc.message)
    if isinstance(exc, BackPressureError):
        # Ray Serve's own back-pressure: every replica is at max_ongoing_requests.
        return ApiError(
            503, "overloaded", "the service is at capacity; retry shortly", {"Retry-After": "1"}
        )
    if isinstance(exc, DeploymentUnavailableError | ReplicaUnavailableError | RayActorError):
        return ApiError(
            503,
            "model_unavailable",
            "a model deployment is unavailable; retry shortly",
            {"Retry-After": "5"},
        )
    if isinstance(exc, InvalidModelInput):
        return ApiError(400, "invalid_model_input", str(exc))
    if isinstance(exc, EmbeddingMismatch):
        return ApiError(409, "embedding_mismatch", str(exc))
    if isinstance(exc, StoreUnavailable):
        return ApiError(
            503, "store_unavailable", "a store is unreachable; retry shortly", {"Retry-After": "5"}
        )
    if isinstance(exc, StoreTimeout):
        return ApiError(504, "store_timeout", "a store did not answer in time")
    if isinstance(exc, StoreError):
        return ApiError(502, "store_error", "a store failed to complete the request")
    if isinstance(exc, BlobNotFound):
        # Only ever raised for a key a record names: the record outlived its bytes, so
        # the stores are inconsistent, not the client's request.
        return ApiError(502, "store_error", "the stored bytes of this image are missing")
    if isinstance(exc, RayTaskError):
        return ApiError(502, "model_error", "a model deployment failed on this request")
    if isinstance(exc, RequestCancelledError | asyncio.CancelledError):
        return ApiError(499, "cancelled", "the request was cancelled")
    return ApiError(500, "internal_error", "unexpected error; it has been logged")


_KNOWN_FAMILIES: tuple[type[Exception], ...] = (
    ApiError,
    DomainError,
    InvalidModelInput,
    StoreError,
    RayError,
    RayServeException,
)


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        status_code=error.status,
        content={"error": {"code": error.code, "message": error.message}},
        headers=error.headers or None,
    )


def count_error(status: int, code: str) -> None:
    """Every error answer is counted by status and code, whoever sends it."""
    service_metrics().errors.inc(tags={"status": str(status), "code": code})


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one line a client can act on: `where: what; ...`."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or 'body'}: {err['msg']}" for err in errors
    )
    return problems or "invalid request"


def invalid(exc: ValidationError) -> ApiError:
    """A body or form the route validated itself, answered as FastAPI answers its own."""
    return ApiError(422, "validation_error", validation_message(exc.errors()))


def install_error_handlers(app: FastAPI) -> None:
    async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        error = ApiError(exc.status_code, code, str(exc.detail))
        count_error(error.status, error.code)
        return error_response(error)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        error = ApiError(422, "validation_error", validation_message(exc.errors()))
        count_error(error.status, error.code)
        return error_response(error)

    async def on_any_error(request: Request, exc: Exception) -> JSONResponse:
        error = to_api_error(exc)
        count_error(error.status, error.code)
        if error.status >= 500:
            # The operator needs the cause; the client gets only the code and message.
            logger.error(
                "%s %s -> %d %s",
                request.method,
                request.url.path,
                error.status,
                error.code,
                exc_info=exc if error.status == 500 or error.code.endswith("_error") else None,
            )
        return error_response(error)

    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    # Known families get their own registration: Starlette re-raises whatever reaches the
    # catch-all `Exception` handler after answering, which would log it as a crash.
    for family in _KNOWN_FAMILIES:
        app.add_exception_handler(family, on_any_error)
    app.add_exception_handler(Exception, on_any_error)
