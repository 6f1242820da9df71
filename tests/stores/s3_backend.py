"""S3 for the store tests: moto's S3 server on loopback, speaking the real wire protocol.

``moto_s3_endpoint`` starts one ThreadedMotoServer for the session and points the AWS
credential chain at dummy values for as long as it runs, so that no test can reach a
real account with real credentials. ``s3_blobs_backend`` is the contract suite's
factory: each test gets a bucket of its own on that server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingress.stores.base import BlobStore
from ingress.stores.s3_blobs import S3BlobStore

# Set for the whole session once the server starts; also handed to worker processes.
DUMMY_AWS_ENV: dict[str, str] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Never wait for an instance metadata service that is not there.
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Anything else in the chain that could pick real credentials or another endpoint. An
# explicit profile would even make botocore skip the environment variables above.
_CLEARED_AWS_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CREDENTIAL_PROCESS",
)


def dummy_aws_env(config_dir: Path) -> dict[str, str]:
    """The dummy environment, with the shared config files pointed at nothing."""
    return {
        **DUMMY_AWS_ENV,
        "AWS_CONFIG_FILE": str(config_dir / "no-such-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(config_dir / "no-such-credentials"),
    }


@pytest.fixture(scope="session")
def moto_s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a moto S3 server on loopback, with dummy credentials set meanwhile."""
    from moto.server import ThreadedMotoServer

    env = dummy_aws_env(tmp_path_factory.mktemp("aws-config"))
    with pytest.MonkeyPatch.context() as mp:
        # Before any client exists: boto3 reads the chain when it makes a client.
        for name in _CLEARED_AWS_ENV:
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def unique_bucket(kind: str = "test") -> str:
    return f"{kind}-{uuid.uuid4().hex}"[:63]


def open_s3_blob_store(
    endpoint_url: str, bucket: str, env: tuple[tuple[str, str], ...] = ()
) -> S3BlobStore:
    """The contract suite's opener. Spawned workers inherit the session environment;
    env is set again here so that they have the dummy credentials even if not."""
    os.environ.update(env)
    return S3BlobStore(bucket=bucket, endpoint_url=endpoint_url, create_bucket=True)


def _run_in_fresh_loop(opener: Callable[[], S3BlobStore]) -> None:
    async def ensure() -> None:
        store = opener()
        try:
            await store.ensure_bucket()
        finally:
            await store.close()

    # A thread of its own: the caller may be running inside an event loop already.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, ensure()).result()


def s3_blobs_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], BlobStore]:
    """Contract-suite factory: a fresh bucket on the moto server, already created."""
    endpoint = request.getfixturevalue("moto_s3_endpoint")
    names = [*DUMMY_AWS_ENV, "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"]
    env = tuple((name, os.environ[name]) for name in names if name in os.environ)
    opener = functools.partial(open_s3_blob_store, endpoint, unique_bucket("contract"), env)
    _run_in_fresh_loop(opener)
    return opener
