"""BlobStore on S3 or an S3-compatible server (MinIO, LocalStack), through boto3.

One boto3 client per store, made once; boto3 clients are thread-safe, and every call
on it runs in a worker thread (``asyncio.to_thread``) so that no event loop blocks on
the network. Credentials come from the standard AWS chain (environment, shared config
and profile, container or instance role, web identity), never from arguments.

Object keys are ``prefix + key``; the content type travels as the object's
Content-Type. S3 writes are atomic per object, and a GET that has started keeps
reading the version it started on, so the store needs no locking of its own.

Errors map onto the store errors: the endpoint unreachable or no credentials ->
StoreUnavailable (503), a connect or read timeout -> StoreTimeout (504), any other
failure -> StoreError (502). Messages name the operation, bucket, key and endpoint
host, never credentials; the botocore exception stays attached as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore import exceptions as bce
from botocore.config import Config

from ingress.stores.base import (
    Blob,
    BlobInfo,
    BlobNotFound,
    BlobStream,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from ingress.stores.values import utc

DEFAULT_CONTENT_TYPE = "application/octet-stream"
# S3's limit on the UTF-8 length of an object key.
_MAX_KEY_BYTES = 1024
# More than asyncio.to_thread's default pool can run at once, so that no thread waits
# for a connection and urllib3 never discards one as "pool full".
_MAX_POOL_CONNECTIONS = 32

_TIMEOUTS = (bce.ConnectTimeoutError, bce.ReadTimeoutError)
# botocore's ConnectionError covers EndpointConnectionError, ProxyConnectionError and
# SSLError: nothing reached the server.
_UNREACHABLE = (bce.ConnectionError, bce.ConnectionClosedError)
_NO_CREDENTIALS = (
    bce.NoCredentialsError,
    bce.PartialCredentialsError,
    bce.CredentialRetrievalError,
)
# Error codes of a missing object (HEAD answers carry only the status as code).
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
# Keys per ListObjectsV2 request (S3's own maximum).
_LIST_PAGE_SIZE = 1000

T = TypeVar("T")


class S3BlobStore:
    """Blobs as objects in one bucket, under an optional key prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        connect_timeout_s: float = 5,
        read_timeout_s: float = 30,
        max_attempts: int = 3,
        create_bucket: bool = False,
    ) -> None:
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        self.bucket = bucket
        self.prefix = _normalise_prefix(prefix)
        self.region = region
        self.endpoint_url = endpoint_url
        self.create_bucket = create_bucket
        self._where = f"S3 bucket {bucket!r}"
        if endpoint_url:
            self._where += f" at {_display_endpoint(endpoint_url)}"
        config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            # Total attempts, the first included (AWS_MAX_ATTEMPTS's meaning); botocore's
            # own "max_attempts" key would count the retries only.
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=_MAX_POOL_CONNECTIONS,
            # SigV4 everywhere, presigned URLs included: MinIO and newer regions need it.
            signature_version="s3v4",
            # Virtual-host style would put the bucket into the host name, which a MinIO
            # or LocalStack endpoint (an IP address, a compose service) cannot resolve.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        # A session of our own: boto3's default session is not safe to share across
        # threads while clients are being made.
        session = boto3.session.Session(region_name=region)
        self._client: Any = session.client("s3", endpoint_url=endpoint_url, config=config)
        self._closed = False

    def __repr__(self) -> str:
        endpoint = _display_endpoint(self.endpoint_url) if self.endpoint_url else None
        return f"S3BlobStore(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={endpoint!r})"

    # -- BlobStore ---------------------------------------------------------------------

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        full = self._object_key(key)
        await self._run(
            f"put of {key!r}",
            functools.partial(
                self._client.put_object,
                Bucket=self.bucket,
                Key=full,
                Body=data,
                ContentType=content_type or DEFAULT_CONTENT_TYPE,
            ),
        )

    async def get(self, key: str) -> Blob:
        full = self._object_key(key)
        return await self._run(f"get of {key!r}", functools.partial(self._get_sync, key, full))

    async def stream(self, key: str, chunk_size: int = 256 * 1024) -> BlobStream:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        full = self._object_key(key)
        response = await self._run(
            f"get of {key!r}", functools.partial(self._get_object_sync, key, full)
        )
        body = response["Body"]
        return BlobStream(
            content_type=response.get("ContentType") or DEFAULT_CONTENT_TYPE,
            size=int(response["ContentLength"]),
            chunks=self._chunks(body, chunk_size, key),
        )

    async def delete(self, key: str) -> None:
        full = self._object_key(key)
        await self._run(f"delete of {key!r}", functools.partial(self._delete_sync, full))

    async def exists(self, key: str) -> bool:
        full = self._object_key(key)
        return await self._run(f"head of {key!r}", functools.partial(self._exists_sync, full))

    async def stat(self, key: str) -> BlobInfo | None:
        full = self._object_key(key)
        modified = await self._run(f"head of {key!r}", functools.partial(self._head_sync, full))
        return None if modified is None else BlobInfo(key=key, modified_at=utc(modified))

    async def list_blobs(self) -> AsyncIterator[BlobInfo]:
        # A paginator makes no request until iterated; each page is one request, made
        # in a worker thread.
        paginator = self._client.get_paginator("list_objects_v2")
        pages: Iterator[dict[str, Any]] = iter(
            paginator.paginate(
                Bucket=self.bucket,
                Prefix=self.prefix,
                PaginationConfig={"PageSize": _LIST_PAGE_SIZE},
            )
        )
        while True:
            page = await self._run("listing", functools.partial(next, pages, None))
            if page is None:
                return
            for obj in page.get("Contents") or ():
                key = str(obj["Key"]).removeprefix(self.prefix)
                try:
                    _validate_key(key)
                except ValueError:
                    continue  # not a key put() could have written, e.g. a folder marker
                # botocore parses S3 timestamps as aware datetimes in its own tzutc.
                yield BlobInfo(key=key, modified_at=utc(obj["LastModified"]))

    async def close(self) -> None:
        """Closes the connection pool; idempotent."""
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self._client.close)

    # -- S3 only -----------------------------------------------------------------------

    async def ensure_bucket(self) -> None:
        """Checks that the bucket exists; creates it only when create_bucket was set.

        Raises StoreUnavailable naming the bucket when it is missing and may not be
        created, so that a misconfigured replica fails at start, not at first upload.
        """
        await self._run("bucket check", self._ensure_bucket_sync)

    def presigned_url(self, key: str, expires_s: int = 300) -> str:
        """A URL that GETs the blob without credentials for expires_s seconds.

        Computed locally (no request is made), so it does not tell whether the blob
        exists; the URL answers 404 then. It points at endpoint_url as configured, which
        must be reachable by whoever follows it.
        """
        if expires_s <= 0:
            raise ValueError(f"expires_s must be positive, not {expires_s}")
        full = self._object_key(key)
        try:
            url: str = self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": full},
                ExpiresIn=expires_s,
            )
        except (bce.BotoCoreError, bce.ClientError) as e:
            raise self._error(f"presign of {key!r}", e) from e
        return url

    # -- internals ---------------------------------------------------------------------

    def _object_key(self, key: str) -> str:
        _validate_key(key)
        full = self.prefix + key
        if len(full.encode()) > _MAX_KEY_BYTES:
            raise ValueError(f"blob key {key!r} is longer than S3 allows with prefix")
        return full

    async def _run(self, what: str, call: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(call)
        except (bce.BotoCoreError, bce.ClientError) as e:
            raise self._error(what, e) from e

    def _error(self, what: str, e: Exception) -> StoreError:
        """The store error for a botocore failure. Built from the exception's class and
        the S3 error code only: botocore's own text can carry URLs and server-supplied
        messages, which have no place in an answer to an HTTP client."""
        where = f"{what} in {self._where}"
        if isinstance(e, _TIMEOUTS):
            return StoreTimeout(f"{where} timed out ({type(e).__name__})")
        if isinstance(e, _UNREACHABLE):
            return StoreUnavailable(f"{where} failed: endpoint unreachable ({type(e).__name__})")
        if isinstance(e, _NO_CREDENTIALS):
            return StoreUnavailable(
                f"{where} failed: no usable AWS credentials in the default chain "
                f"({type(e).__name__})"
            )
        if isinstance(e, bce.ClientError):
            code, status = _error_code(e), _http_status(e)
            if code == "NoSuchBucket":
                return StoreUnavailable(f"{where} failed: the bucket does not exist ({code})")
            if status == 503 or code in ("ServiceUnavailable", "SlowDown"):
                return StoreUnavailable(f"{where} failed: {code} (HTTP {status})")
            return StoreError(f"{where} failed: {code} (HTTP {status})")
        return StoreError(f"{where} failed ({type(e).__name__})")

    def _get_object_sync(self, key: str, full: str) -> dict[str, Any]:
        try:
            response: dict[str, Any] = self._client.get_object(Bucket=self.bucket, Key=full)
        except bce.ClientError as e:
            if _error_code(e) in _NOT_FOUND_CODES:
                raise BlobNotFound(key) from e
            raise
        return response

    def _get_sync(self, key: str, full: str) -> Blob:
        response = self._get_object_sync(key, full)
        with response["Body"] as body:
            data = body.read()
        return Blob(data=data, content_type=response.get("ContentType") or DEFAULT_CONTENT_TYPE)

    async def _chunks(self, body: Any, chunk_size: int, key: str) -> AsyncIterator[bytes]:
        try:
            while True:
                chunk: bytes = await self._run(
                    f"read of {key!r}", functools.partial(body.read, chunk_size)
                )
                if not chunk:
                    return
                yield chunk
        finally:
            # Unread bytes make urllib3 drop the connection rather than reuse it.
            body.close()

    def _delete_sync(self, full: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=full)
        except bce.ClientError as e:
            # S3 answers 204 for a missing key; some compatible servers say 404.
            if _error_code(e) not in _NOT_FOUND_CODES:
                raise

    def _exists_sync(self, full: str) -> bool:
        return self._head_sync(full) is not None

    def _head_sync(self, full: str) -> datetime | None:
        """The object's LastModified, None when there is no such object."""
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=full)
        except bce.ClientError as e:
            if _error_code(e) in _NOT_FOUND_CODES:
                return None
            raise
        modified: datetime = response["LastModified"]
        return modified

    def _ensure_bucket_sync(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except bce.ClientError as e:
            if _error_code(e) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        if not self.create_bucket:
            raise StoreUnavailable(
                f"{self._where} does not exist; create it, or set create_bucket to let "
                "the store create it"
            )
        kwargs: dict[str, Any] = {}
        region = self._client.meta.region_name
        # us-east-1 is the one region that refuses an explicit LocationConstraint.
        if region and region not in ("us-east-1", "aws-global"):
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(Bucket=self.bucket, **kwargs)
        except bce.ClientError as e:
            # Another replica created it between our check and our create.
            if _error_code(e) != "BucketAlreadyOwnedByYou":
                raise


def _validate_key(key: str) -> None:
    """The local store's rules, so that a key valid in one backend is valid in both: no
    empty segment (leading "/", "//", trailing "/"), no segment starting with "." (".",
    ".."), no backslash or NUL."""
    if not isinstance(key, str) or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid blob key {key!r}")
    if any(not part or part.startswith(".") for part in key.split("/")):
        raise ValueError(f"invalid blob key {key!r}")


def _normalise_prefix(prefix: str) -> str:
    """'' stays ''; 'a/b', '/a/b' and 'a/b/' all become 'a/b/'."""
    if not isinstance(prefix, str):
        raise ValueError(f"invalid S3 key prefix {prefix!r}")
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    try:
        _validate_key(stripped)
    except ValueError:
        raise ValueError(f"invalid S3 key prefix {prefix!r}") from None
    return stripped + "/"


def _display_endpoint(endpoint_url: str) -> str:
    """scheme://host:port of the endpoint, without any user info, path or query."""
    try:
        parts = urlsplit(endpoint_url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid endpoint>"
    return f"{parts.scheme}://{host}{port}"


def _error_code(e: bce.ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _http_status(e: bce.ClientError) -> int | None:
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None
