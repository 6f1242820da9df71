"""S3BlobStore beyond the contract suite: prefix, presigned URLs, bucket checks and the
mapping of failures onto StoreUnavailable / StoreTimeout / StoreError.

Everything runs against moto's S3 server on loopback (the contract suite's session
server), or against loopback ports that refuse or never answer.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.stub import Stubber

from ingress.stores.base import (
    BlobNotFound,
    BlobStore,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from ingress.stores.records import blob_key_for
from ingress.stores.s3_blobs import S3BlobStore
from tests.stores.s3_backend import unique_bucket

KEY = blob_key_for("ab" * 32)
# Distinctive enough that finding them in a message cannot be a coincidence.
SECRET_KEY_ID = "AKIALEAKCHECK0000001"
SECRET_ACCESS_KEY = "leak-check/secret+Zq9vXo2Lr7Tn4Wm8Kp3"
SESSION_TOKEN = "leak-check-session-token-Jb5Hc6Nd"


@pytest.fixture
def raw_s3(moto_s3_endpoint: str) -> Any:
    """A plain boto3 client on the moto server, to look behind the store's back."""
    return boto3.client("s3", endpoint_url=moto_s3_endpoint, region_name="us-east-1")


async def _open(endpoint: str, **kwargs: Any) -> S3BlobStore:
    store = S3BlobStore(endpoint_url=endpoint, **{"bucket": unique_bucket(), **kwargs})
    if kwargs.get("create_bucket"):
        await store.ensure_bucket()
    return store


@pytest.fixture
async def store(moto_s3_endpoint: str) -> AsyncIterator[S3BlobStore]:
    s = await _open(moto_s3_endpoint, prefix="tenant-a/images", create_bucket=True)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def refused_endpoint() -> str:
    """A loopback port that nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A loopback port that accepts connections (the kernel does) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_is_a_blob_store(moto_s3_endpoint: str) -> None:
    assert isinstance(S3BlobStore("b-x", endpoint_url=moto_s3_endpoint), BlobStore)


# -- prefix and metadata ------------------------------------------------------------


async def test_prefix_is_applied(store: S3BlobStore, raw_s3: Any) -> None:
    await store.put(KEY, b"bytes", "image/webp")

    listed = raw_s3.list_objects_v2(Bucket=store.bucket)
    assert [o["Key"] for o in listed["Contents"]] == [f"tenant-a/images/{KEY}"]
    head = raw_s3.head_object(Bucket=store.bucket, Key=f"tenant-a/images/{KEY}")
    assert head["ContentType"] == "image/webp"
    assert head["ContentLength"] == 5

    # Written behind the store's back under the prefix: the store finds it by bare key.
    other = blob_key_for("cd" * 32)
    raw_s3.put_object(
        Bucket=store.bucket, Key=f"tenant-a/images/{other}", Body=b"raw", ContentType="image/gif"
    )
    blob = await store.get(other)
    assert (blob.data, blob.content_type) == (b"raw", "image/gif")
    # ...and not an object at the bare key.
    raw_s3.put_object(Bucket=store.bucket, Key=blob_key_for("ef" * 32), Body=b"x")
    assert await store.exists(blob_key_for("ef" * 32)) is False


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("", ""), ("/", ""), ("a", "a/"), ("a/b", "a/b/"), ("/a/b/", "a/b/"), ("a/b//", "a/b/")],
)
def test_prefix_is_normalised(moto_s3_endpoint: str, prefix: str, expected: str) -> None:
    assert S3BlobStore("b-x", prefix=prefix, endpoint_url=moto_s3_endpoint).prefix == expected


@pytest.mark.parametrize("prefix", ["a//b", "../a", "a/../b", "a/./b", "a\\b"])
def test_bad_prefix_is_refused(moto_s3_endpoint: str, prefix: str) -> None:
    with pytest.raises(ValueError):
        S3BlobStore("b-x", prefix=prefix, endpoint_url=moto_s3_endpoint)


async def test_missing_content_type_reads_back_as_octet_stream(
    store: S3BlobStore, raw_s3: Any
) -> None:
    raw_s3.put_object(Bucket=store.bucket, Key=f"tenant-a/images/{KEY}", Body=b"x")
    blob = await store.get(KEY)
    assert blob.content_type in ("binary/octet-stream", "application/octet-stream")


async def test_two_prefixes_share_a_bucket(moto_s3_endpoint: str) -> None:
    a = await _open(moto_s3_endpoint, prefix="a", create_bucket=True)
    b = S3BlobStore(a.bucket, prefix="b", endpoint_url=moto_s3_endpoint)
    try:
        await a.put(KEY, b"in a", "image/png")
        assert await b.exists(KEY) is False
        with pytest.raises(BlobNotFound):
            await b.stream(KEY)
    finally:
        await a.close()
        await b.close()


# -- presigned URLs -----------------------------------------------------------------


async def test_presigned_url_downloads_the_bytes(store: S3BlobStore) -> None:
    data = os.urandom(100_000)
    await store.put(KEY, data, "image/jpeg")

    url = store.presigned_url(KEY, expires_s=60)

    assert url.startswith(store.endpoint_url or "")
    async with httpx.AsyncClient() as client:  # no AWS credentials involved
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "image/jpeg"


async def test_presigned_url_of_missing_blob_is_404(store: S3BlobStore) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(store.presigned_url(blob_key_for("00" * 32)))
    assert response.status_code == 404


@pytest.mark.parametrize("key", ["", "../x", "/etc/passwd"])
def test_presigned_url_validates_the_key(store: S3BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.presigned_url(key)


def test_presigned_url_refuses_non_positive_expiry(store: S3BlobStore) -> None:
    with pytest.raises(ValueError):
        store.presigned_url(KEY, expires_s=0)


# -- the bucket ---------------------------------------------------------------------


async def test_ensure_bucket_creates_only_when_allowed(moto_s3_endpoint: str, raw_s3: Any) -> None:
    bucket = unique_bucket("missing")
    refused = S3BlobStore(bucket, endpoint_url=moto_s3_endpoint)
    with pytest.raises(StoreUnavailable, match=bucket):
        await refused.ensure_bucket()
    # The data path says the same, naming the bucket too.
    with pytest.raises(StoreUnavailable, match=bucket):
        await refused.put(KEY, b"x", "image/png")
    with pytest.raises(StoreUnavailable, match=bucket):
        await refused.get(KEY)
    await refused.close()
    assert bucket not in [b["Name"] for b in raw_s3.list_buckets()["Buckets"]]

    allowed = S3BlobStore(bucket, endpoint_url=moto_s3_endpoint, create_bucket=True)
    await allowed.ensure_bucket()
    await allowed.ensure_bucket()  # idempotent
    assert bucket in [b["Name"] for b in raw_s3.list_buckets()["Buckets"]]
    # Now it exists, a store without create_bucket accepts it.
    await refused.ensure_bucket()
    await allowed.close()


async def test_ensure_bucket_in_another_region(moto_s3_endpoint: str, raw_s3: Any) -> None:
    store = await _open(moto_s3_endpoint, region="eu-west-1", create_bucket=True)
    try:
        location = raw_s3.get_bucket_location(Bucket=store.bucket)["LocationConstraint"]
        assert location == "eu-west-1"
        await store.put(KEY, b"x", "image/png")
        assert (await store.get(KEY)).data == b"x"
    finally:
        await store.close()


# -- failures -----------------------------------------------------------------------


def _fast_store(endpoint: str) -> S3BlobStore:
    """Small timeouts and no retries: a failure shows at once."""
    return S3BlobStore(
        "b-x", endpoint_url=endpoint, connect_timeout_s=1, read_timeout_s=0.2, max_attempts=1
    )


async def _every_operation(store: S3BlobStore, with_exists: bool = True) -> list[Exception]:
    """Runs each operation and returns what each raised."""
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.ensure_bucket(),
        lambda: store.put(KEY, b"x", "image/png"),
        lambda: store.get(KEY),
        lambda: store.stream(KEY),
        lambda: store.delete(KEY),
    ]
    if with_exists:
        calls.append(lambda: store.exists(KEY))
    raised: list[Exception] = []
    for call in calls:
        with pytest.raises(StoreError) as info:
            await call()
        raised.append(info.value)
    return raised


async def test_unreachable_endpoint_is_unavailable(refused_endpoint: str) -> None:
    store = _fast_store(refused_endpoint)
    try:
        for error in await _every_operation(store):
            assert type(error) is StoreUnavailable
            assert "unreachable" in str(error)
            assert refused_endpoint in str(error)
    finally:
        await store.close()


async def test_endpoint_that_never_answers_is_a_timeout(silent_endpoint: str) -> None:
    store = _fast_store(silent_endpoint)
    try:
        for error in await _every_operation(store):
            assert type(error) is StoreTimeout
    finally:
        await store.close()


async def test_no_credentials_is_unavailable(
    moto_s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3BlobStore("b-x", endpoint_url=moto_s3_endpoint, max_attempts=1)
    try:
        with pytest.raises(StoreUnavailable, match="credentials"):
            await store.get(KEY)
        with pytest.raises(StoreUnavailable, match="credentials"):
            store.presigned_url(KEY)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("InternalError", 500, StoreError),
        ("AccessDenied", 403, StoreError),
        ("SignatureDoesNotMatch", 403, StoreError),
        ("SlowDown", 503, StoreUnavailable),
        ("NoSuchBucket", 404, StoreUnavailable),
    ],
)
async def test_server_errors_map_to_store_errors(
    moto_s3_endpoint: str, code: str, status: int, expected: type[StoreError]
) -> None:
    store = S3BlobStore("b-x", endpoint_url=moto_s3_endpoint, max_attempts=1)
    # The server's message is not passed on: it is the server's to word, not ours.
    with Stubber(store._client) as stub:
        stub.add_client_error(
            "get_object", code, f"message with {SECRET_KEY_ID}", http_status_code=status
        )
        with pytest.raises(StoreError) as info:
            await store.get(KEY)
    assert type(info.value) is expected
    assert code in str(info.value)
    assert SECRET_KEY_ID not in str(info.value)
    assert isinstance(info.value.__cause__, Exception)  # kept for the logs
    await store.close()


async def test_missing_key_is_not_found_not_an_error(store: S3BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        await store.get(KEY)
    assert await store.exists(KEY) is False
    await store.delete(KEY)


async def test_error_messages_carry_no_credentials(
    moto_s3_endpoint: str,
    refused_endpoint: str,
    silent_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SECRET_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    errors: list[Exception] = []

    for endpoint in (refused_endpoint, silent_endpoint):
        store = _fast_store(endpoint)
        errors += await _every_operation(store)
        await store.close()

    missing = S3BlobStore(unique_bucket("missing"), endpoint_url=moto_s3_endpoint)
    # HEAD of an object in a missing bucket is a plain 404: exists says False.
    errors += await _every_operation(missing, with_exists=False)
    with Stubber(missing._client) as stub:
        stub.add_client_error("put_object", "InvalidAccessKeyId", SECRET_KEY_ID, 403)
        with pytest.raises(StoreError) as info:
            await missing.put(KEY, b"x", "image/png")
        errors.append(info.value)
    await missing.close()

    assert len(errors) == 6 + 6 + 5 + 1
    for error in errors:
        for text in (str(error), repr(error)):
            for secret in (SECRET_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN):
                assert secret not in text
