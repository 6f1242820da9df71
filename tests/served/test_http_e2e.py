"""The whole graph through a real local Ray and real HTTP, on the embedded stores and
tiny models: what a user does with curl, and what bad input gets back."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from ray import serve

from tests.support.image_server import serving
from tests.support.served_app import Deployed, blob_files, deploy_graph, tiny_graph_args
from tests.support.tiny_models import TINY_DIM

MAX_UPLOAD = 1024 * 1024


def _jpeg(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    pixels = np.clip(base + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    files = {
        "/cat.jpg": (_jpeg(101), "image/jpeg"),
        "/dog.png": (_png(102), "image/png"),
        "/page.html": (b"<html><body>not an image</body></html>", "text/html"),
    }
    with serving(files) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def service(
    ray_session: str,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[httpx.Client, Path]]:
    data_dir = tmp_path_factory.mktemp("data")
    args = tiny_graph_args(
        tiny_blip_dir,
        tiny_clip_dir,
        {"data_dir": str(data_dir)},
        max_new_tokens=6,
        intake={"max_upload_bytes": MAX_UPLOAD, "max_pixels": 4_000_000},
        # The test's image server is on loopback.
        url_fetch={"allow_private_addresses": True},
    )
    deploy_graph(args, "imagesearch", "/")
    with httpx.Client(base_url=ray_session, timeout=60) as client:
        yield client, data_dir
    serve.delete("imagesearch")


@pytest.fixture
def client(service: tuple[httpx.Client, Path]) -> httpx.Client:
    return service[0]


def _upload(
    client: httpx.Client, data: bytes, path: str = "/images", **fields: str
) -> httpx.Response:
    return client.post(path, files={"file": ("x.jpg", data, "image/jpeg")}, data=fields)


def _state(service: tuple[httpx.Client, Path]) -> tuple[int, list[Path]]:
    return Deployed(*service).state()


def test_health_and_docs(client: httpx.Client) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200, health.text
    assert health.json()["embedding_dim"] == TINY_DIM
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "paths" in spec, spec
    paths = spec["paths"]
    for path in (
        "/images",
        "/images/{image_id}",
        "/images/{image_id}/content",
        "/search/text",
        "/search/image",
        "/search/url",
        "/embed-image/",
        "/healthz",
    ):
        assert path in paths


def test_add_get_content_list_search_delete(
    service: tuple[httpx.Client, Path], image_server: str
) -> None:
    client, data_dir = service
    uploads = [_jpeg(seed) for seed in range(4)]
    added = []
    for data in uploads:
        response = _upload(client, data, tags="holiday, beach")
        assert response.status_code == 201, response.text
        added.append(response.json())
    first = added[0]
    assert first["duplicate"] is False
    assert first["tags"] == ["holiday", "beach"]
    assert (first["width"], first["height"], first["content_type"]) == (96, 64, "image/jpeg")
    assert first["size_bytes"] == len(uploads[0])
    assert isinstance(first["caption"], str) and first["caption"]
    assert first["content_url"] == f"/images/{first['id']}/content"

    by_url = client.post("/images", json={"url": f"{image_server}/dog.png", "tags": ["pet"]})
    assert by_url.status_code == 201, by_url.text
    assert by_url.json()["source_url"] == f"{image_server}/dog.png"
    assert by_url.json()["content_type"] == "image/png"
    ids = {a["id"] for a in added} | {by_url.json()["id"]}

    # Same bytes again: the same record, no second copy.
    again = _upload(client, uploads[1])
    assert again.status_code == 200
    assert again.json()["duplicate"] is True and again.json()["id"] == added[1]["id"]

    content = client.get(first["content_url"])
    assert content.status_code == 200
    assert content.content == uploads[0]
    assert content.headers["content-type"] == "image/jpeg"
    assert client.get(f"/images/{first['id']}").json() == {
        k: v for k, v in first.items() if k not in ("duplicate", "near_duplicate_of")
    }

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/images", params=params).json()
        assert page["total"] == len(ids)
        seen += [image["id"] for image in page["images"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)

    by_image = client.post(
        "/search/image", files={"file": ("q.jpg", uploads[2], "image/jpeg")}, data={"limit": "3"}
    )
    assert by_image.status_code == 200, by_image.text
    results = by_image.json()["results"]
    assert len(results) == 3
    assert results[0]["image"]["id"] == added[2]["id"]
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)

    by_text = client.post("/search/text", json={"query": "a dog on the beach", "limit": 10})
    assert by_text.status_code == 200
    text_results = by_text.json()["results"]
    assert {r["image"]["id"] for r in text_results} == ids
    assert all(-1.0 <= r["score"] <= 1.0 for r in text_results)
    assert by_text.json()["took_ms"] > 0

    by_url_search = client.post("/search/url", json={"url": f"{image_server}/dog.png", "limit": 1})
    assert by_url_search.json()["results"][0]["image"]["id"] == by_url.json()["id"]

    gone = added[3]["id"]
    assert client.delete(f"/images/{gone}").status_code == 204
    assert client.get(f"/images/{gone}").status_code == 404
    assert client.get(f"/images/{gone}/content").status_code == 404
    assert client.delete(f"/images/{gone}").status_code == 404
    listed = client.get("/images", params={"limit": 100}).json()
    assert gone not in {image["id"] for image in listed["images"]}
    searched = client.post("/search/text", json={"query": "anything", "limit": 100}).json()
    assert gone not in {r["image"]["id"] for r in searched["results"]}
    # Every remaining record has exactly its blob; the deleted one's is gone.
    assert len(blob_files(data_dir)) == 2 * listed["total"]  # data + content-type sidecar


def test_seed_compatible_calls(client: httpx.Client, image_server: str) -> None:
    data = _jpeg(7)
    for path in ("/embed-image/", "/embed-image"):
        response = client.post(path, files={"file": ("image.jpg", data, "image/jpeg")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"description", "embedding_vector"}
        assert len(body["embedding_vector"]) == TINY_DIM
        assert np.linalg.norm(body["embedding_vector"]) == pytest.approx(1.0, abs=1e-4)
    # /embed-image stores nothing.
    assert client.get("/images/" + _id_of(client, data)).status_code == 404

    added = client.post("/images/add", json={"url": f"{image_server}/cat.jpg"})
    assert added.status_code == 201, added.text
    image_id = added.json()["id"]
    assert image_id in {
        i["id"] for i in client.get("/images/list", params={"limit": 500}).json()["images"]
    }
    assert client.post("/images/search/text", json={"query": "cat"}).status_code == 200
    hit = client.post("/image/search/url", json={"url": f"{image_server}/cat.jpg", "limit": 1})
    assert hit.json()["results"][0]["image"]["id"] == image_id
    hit = client.post(
        "/images/search/image",
        files={"file": ("c.jpg", _jpeg(101), "image/jpeg")},
    )
    assert hit.json()["results"][0]["image"]["id"] == image_id
    assert client.delete("/images/delete", params={"id": image_id}).status_code == 204
    assert client.get(f"/images/{image_id}").status_code == 404


def _id_of(client: httpx.Client, data: bytes) -> str:
    import hashlib

    from ingress.stores.records import image_id_for

    return image_id_for(hashlib.sha256(data).hexdigest())


def _huge_png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


BAD_UPLOADS = [
    pytest.param(b"", 400, "invalid_image", id="zero-bytes"),
    pytest.param(_png(5)[:60], 400, "invalid_image", id="truncated-png"),
    pytest.param(
        b"<svg xmlns='http://www.w3.org/2000/svg'><rect/></svg>",
        415,
        "unsupported_media_type",
        id="svg",
    ),
    pytest.param(b"<html><body>hi</body></html>", 415, "unsupported_media_type", id="html"),
    pytest.param(_huge_png(), 413, "image_too_large", id="pixel-bomb"),
    pytest.param(
        b"\xff\xd8\xff" + b"\0" * (MAX_UPLOAD + 10), 413, "payload_too_large", id="too-many-bytes"
    ),
]


@pytest.mark.parametrize(("data", "status", "code"), BAD_UPLOADS)
@pytest.mark.parametrize("path", ["/images", "/search/image", "/embed-image/"])
def test_bad_uploads_are_refused_and_store_nothing(
    service: tuple[httpx.Client, Path], path: str, data: bytes, status: int, code: str
) -> None:
    client = service[0]
    before = _state(service)
    response = _upload(client, data, path=path)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert _state(service) == before
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        (
            "post",
            "/images",
            {"content": b"raw", "headers": {"content-type": "image/jpeg"}},
            415,
            "unsupported_media_type",
        ),
        ("post", "/images", {"files": {"other": ("x", b"1")}}, 422, "validation_error"),
        (
            "post",
            "/images",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
            "validation_error",
        ),
        ("post", "/images", {"json": {"url": "file:///etc/passwd"}}, 400, "bad_url"),
        ("post", "/images", {"json": {"url": "ftp://example.com/a.jpg"}}, 400, "bad_url"),
        ("post", "/images", {"json": {"url": "URL/page.html"}}, 415, "unsupported_media_type"),
        ("post", "/images", {"json": {"url": "URL/missing.jpg"}}, 502, "fetch_failed"),
        (
            "post",
            "/images",
            {"json": {"url": "URL/cat.jpg", "tags": ["x" * 65]}},
            422,
            "validation_error",
        ),
        ("post", "/images", {"json": {"url": "URL/cat.jpg", "extra": 1}}, 422, "validation_error"),
        ("post", "/search/text", {"json": {"query": ""}}, 422, "validation_error"),
        ("post", "/search/text", {"json": {"query": "x" * 1001}}, 422, "validation_error"),
        ("post", "/search/text", {"json": {"query": "dog", "limit": 101}}, 422, "validation_error"),
        ("post", "/search/text", {"json": {"query": "dog", "limit": 0}}, 422, "validation_error"),
        ("post", "/search/url", {"json": {"url": "gopher://x/"}}, 400, "bad_url"),
        ("get", "/images", {"params": {"cursor": "not-a-cursor"}}, 400, "bad_cursor"),
        ("get", "/images", {"params": {"limit": 100000}}, 422, "validation_error"),
        ("get", "/images/00000000-0000-0000-0000-000000000000", {}, 404, "not_found"),
        ("get", "/images/'; DROP TABLE images;--/content", {}, 404, "not_found"),
        ("delete", "/images/nope", {}, 404, "not_found"),
        ("delete", "/images/delete", {}, 422, "validation_error"),
        ("get", "/no/such/route", {}, 404, "not_found"),
        ("put", "/images", {}, 405, "method_not_allowed"),
    ],
)
def test_bad_requests_get_json_errors_and_change_nothing(
    service: tuple[httpx.Client, Path],
    image_server: str,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    client = service[0]
    if "json" in kwargs and isinstance(kwargs["json"].get("url"), str):
        kwargs = {
            **kwargs,
            "json": {**kwargs["json"], "url": kwargs["json"]["url"].replace("URL", image_server)},
        }
    before = _state(service)
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert _state(service) == before
