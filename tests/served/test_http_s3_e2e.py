"""The graph once more through real Ray and HTTP, with image bytes in S3 (moto's S3
server on loopback, the real wire protocol) and vectors in LanceDB: streamed content,
and the presigned-redirect option."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
from PIL import Image
from ray import serve

from tests.stores.s3_backend import DUMMY_AWS_ENV, moto_s3_endpoint, unique_bucket
from tests.support.served_app import deploy_graph, tiny_graph_args

__all__ = ["moto_s3_endpoint"]  # the fixture, imported for this module's tests

PREFIX = "originals/"


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture(scope="module", params=[False, True], ids=["streamed", "presigned-redirect"])
def s3_service(
    request: pytest.FixtureRequest,
    ray_session: str,
    moto_s3_endpoint: str,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[httpx.Client, Any, str]]:
    bucket = unique_bucket("e2e")
    args = tiny_graph_args(
        tiny_blip_dir,
        tiny_clip_dir,
        {
            "data_dir": str(tmp_path_factory.mktemp("s3-e2e")),
            "blobs": {
                "kind": "s3",
                "bucket": bucket,
                "prefix": PREFIX,
                "endpoint_url": moto_s3_endpoint,
                "create_bucket": True,
                "presigned_redirect": request.param,
            },
        },
    )
    deploy_graph(args, "imagesearch-s3", "/s3", ingress_env=DUMMY_AWS_ENV)
    raw_s3 = boto3.client("s3", endpoint_url=moto_s3_endpoint, region_name="us-east-1")
    with httpx.Client(base_url=f"{ray_session}/s3", timeout=60) as client:
        yield client, raw_s3, bucket
    serve.delete("imagesearch-s3")


def test_add_content_search_delete_with_s3(s3_service: tuple[httpx.Client, Any, str]) -> None:
    client, raw_s3, bucket = s3_service
    data = _jpeg(11)
    added = client.post("/images", files={"file": ("a.jpg", data, "image/jpeg")})
    assert added.status_code == 201, added.text
    record = added.json()
    key = f"{PREFIX}{record['sha256'][:2]}/{record['sha256']}"
    stored = raw_s3.get_object(Bucket=bucket, Key=key)
    assert stored["Body"].read() == data
    assert stored["ContentType"] == "image/jpeg"

    content = client.get(record["content_url"], follow_redirects=True)
    assert content.status_code == 200
    assert content.content == data
    assert content.headers["content-type"] == "image/jpeg"
    first = client.get(record["content_url"])
    if first.status_code == 307:
        assert first.headers["location"].startswith(str(raw_s3.meta.endpoint_url))
    else:
        assert first.status_code == 200

    hits = client.post("/search/image", files={"file": ("q.jpg", data, "image/jpeg")}).json()
    assert hits["results"][0]["image"]["id"] == record["id"]

    assert client.delete(f"/images/{record['id']}").status_code == 204
    assert raw_s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX).get("KeyCount", 0) == 0
    assert client.get(record["content_url"]).status_code == 404


def test_rejected_upload_leaves_the_bucket_empty(s3_service: tuple[httpx.Client, Any, str]) -> None:
    client, raw_s3, bucket = s3_service
    response = client.post("/images", files={"file": ("x.svg", b"<svg/>", "image/svg+xml")})
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert raw_s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
