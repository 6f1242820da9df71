"""Weaviate client failures as StoreErrors: unreachable (StoreUnavailable, 503), too
slow (StoreTimeout, 504), or any other failure (StoreError, 502); see map_weaviate_error.
"""

from __future__ import annotations

import asyncio

import grpc
import httpx
from weaviate.exceptions import (
    UnexpectedStatusCodeError,
    WeaviateClosedClientError,
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateRetryError,
    WeaviateStartUpError,
    WeaviateTimeoutError,
)

from ingress.stores.base import StoreError, StoreTimeout, StoreUnavailable

_UNAVAILABLE_TYPES: tuple[type[BaseException], ...] = (
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateRetryError,  # only raised after gRPC UNAVAILABLE retries ran out
    WeaviateClosedClientError,
    httpx.ConnectError,
    httpx.NetworkError,
    ConnectionError,
)
_TIMEOUT_TYPES: tuple[type[BaseException], ...] = (
    WeaviateTimeoutError,
    httpx.TimeoutException,
    TimeoutError,
    asyncio.TimeoutError,
)


def _classify(exc: BaseException) -> type[StoreError] | None:
    if isinstance(exc, _TIMEOUT_TYPES):
        return StoreTimeout
    if isinstance(exc, WeaviateStartUpError):
        # Also raised for a server version the client does not support: not an outage.
        return StoreError if "not supported" in str(exc) else StoreUnavailable
    if isinstance(exc, _UNAVAILABLE_TYPES):
        return StoreUnavailable
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            return StoreUnavailable
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return StoreTimeout
    if isinstance(exc, UnexpectedStatusCodeError) and not isinstance(
        exc.__cause__ or exc.__context__, grpc.RpcError
    ):
        if exc.status_code == 503:
            return StoreUnavailable
        if exc.status_code == 504:
            return StoreTimeout
    return None


def map_weaviate_error(exc: BaseException, op: str = "request") -> StoreError:
    """The StoreError for a client failure: 503, 504 or 502 once it reaches the API.

    The client often wraps the transport error (an AioRpcError inside a
    WeaviateQueryError, an httpx error inside a WeaviateConnectionError), so the whole
    cause/context chain is searched; the outermost recognisable link decides.
    """
    if isinstance(exc, StoreError):
        return exc
    seen: set[int] = set()
    link: BaseException | None = exc
    kind: type[StoreError] = StoreError
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        found = _classify(link)
        if found is not None:
            kind = found
            break
        link = link.__cause__ or link.__context__
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    mapped = kind(f"weaviate {op} failed: {detail}")
    mapped.__cause__ = exc
    return mapped
