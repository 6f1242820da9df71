"""Thumbnails: rendering, the content-addressed LRU cache, ETags, and
GET /images/{id}/thumbnail through a real local Ray and real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from ingress.app import thumbnailer as thumbnailer_for
from ingress.core.errors import ImageTooLarge, InvalidRequest
from ingress.core.imaging import ImageLimits
from ingress.core.thumbnails import (
    Thumbnail,
    ThumbnailCache,
    Thumbnailer,
    etag_matches,
    make_thumbnail,
)
from ingress.http.errors import to_api_error
from ingress.settings import AppArgs, ThumbnailArgs
from ingress.stores.base import Blob, BlobNotFound
from ingress.stores.local_blobs import LocalBlobStore
from ingress.stores.records import ImageRecord, blob_key_for, image_id_for
from tests.support.served_app import Deployed, served, tiny_graph_args

LIMITS = ImageLimits()


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, axis=0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, axis=1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 90)], axis=-1))


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# -- rendering ------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "pil_format"), [("webp", "WEBP"), ("jpeg", "JPEG")])
def test_thumbnail_is_bounded_and_keeps_the_aspect_ratio(fmt: Any, pil_format: str) -> None:
    original = encode(gradient(1200, 800), "JPEG", quality=90)
    thumb = opened(make_thumbnail(original, 256, LIMITS, fmt))
    assert thumb.format == pil_format
    assert thumb.size == (256, 171)
    # Still the same picture: the gradient runs left to right.
    pixels = np.asarray(thumb.convert("RGB"), dtype=np.int16)
    assert pixels[85, 240, 0] - pixels[85, 15, 0] > 150


def test_thumbnail_never_enlarges() -> None:
    assert opened(make_thumbnail(encode(gradient(40, 30), "PNG"), 256, LIMITS)).size == (40, 30)


def test_thumbnail_applies_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(gradient(600, 300), "JPEG", exif=exif, quality=90)
    assert opened(make_thumbnail(data, 128, LIMITS)).size == (64, 128)


def test_thumbnail_flattens_transparency_onto_white() -> None:
    rgba = np.zeros((100, 100, 4), dtype=np.uint8)
    rgba[:, 50:] = (200, 0, 0, 255)  # right half opaque red, left half transparent
    thumb = opened(make_thumbnail(encode(Image.fromarray(rgba), "PNG"), 128, LIMITS, "jpeg"))
    assert thumb.mode == "RGB"
    left, right = np.asarray(thumb)[50, 10], np.asarray(thumb)[50, 90]
    assert left.min() > 240
    assert right[0] > 170 and right[1] < 40


def test_thumbnail_decodes_within_the_intake_limits() -> None:
    data = encode(gradient(300, 300), "PNG")
    with pytest.raises(ImageTooLarge):
        make_thumbnail(data, 128, ImageLimits(max_pixels=300 * 299))


# -- ETags ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        ('"x",W/"abc" ', True),
        ("*", True),
        ('"abcd"', False),
        ('"ab"', False),
        ("abc", False),
        ("", False),
        (None, False),
    ],
)
def test_etag_matches(header: str | None, matches: bool) -> None:
    assert etag_matches(header, '"abc"') is matches


# -- the cache ------------------------------------------------------------------------


def thumb(n: int) -> Thumbnail:
    return Thumbnail(b"x" * n, "image/webp", f'"{n}"')


def test_cache_evicts_least_recently_used_by_bytes() -> None:
    one = len(thumb(1000).data) + 256  # the cache's cost of one 1000-byte thumbnail
    cache = ThumbnailCache(3 * one)
    for name in ("a", "b", "c"):
        cache.put((name, 1), thumb(1000))
    assert cache.size_bytes == 3 * one
    assert cache.get(("a", 1)) is not None  # "a" is now the most recently used
    cache.put(("d", 1), thumb(1000))
    assert ("b", 1) not in cache
    assert [k in cache for k in [("a", 1), ("c", 1), ("d", 1)]] == [True, True, True]
    assert cache.size_bytes == 3 * one
    # Replacing an entry counts its bytes once.
    cache.put(("d", 1), thumb(1000))
    assert len(cache) == 3 and cache.size_bytes == 3 * one


def test_cache_skips_what_cannot_fit() -> None:
    cache = ThumbnailCache(2000)
    cache.put(("small", 1), thumb(100))
    cache.put(("huge", 1), thumb(5000))
    assert ("huge", 1) not in cache and ("small", 1) in cache
    empty = ThumbnailCache(0)
    empty.put(("a", 1), thumb(1))
    assert len(empty) == 0 and empty.size_bytes == 0
    with pytest.raises(ValueError):
        ThumbnailCache(-1)


# -- the thumbnailer ------------------------------------------------------------------


class CountingBlobs(LocalBlobStore):
    """A real local blob store that counts reads and can hold them at a gate."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads = 0
        self.waiting = 0
        self.gate: asyncio.Event | None = None
        self.held = asyncio.Event()  # set once a read waits at the gate

    async def get(self, key: str) -> Blob:
        self.reads += 1
        if self.gate is not None:
            self.waiting += 1
            self.held.set()
            await self.gate.wait()
            self.waiting -= 1
        return await super().get(key)


async def stored(blobs: LocalBlobStore, data: bytes) -> ImageRecord:
    sha = hashlib.sha256(data).hexdigest()
    await blobs.put(blob_key_for(sha), data, "image/png")
    image = opened(data)
    return ImageRecord(
        id=image_id_for(sha),
        caption="a gradient",
        width=image.width,
        height=image.height,
        content_type="image/png",
        size_bytes=len(data),
        sha256=sha,
        created_at=datetime.now(timezone.utc),
        caption_model="m",
        embedding_model="e",
    )


def thumbnailer(**options: Any) -> Thumbnailer:
    return Thumbnailer([128, 256], 256, LIMITS, **options)


def test_sizes_are_a_fixed_list() -> None:
    t = thumbnailer()
    assert t.size_for(None) == 256
    assert t.size_for(128) == 128
    with pytest.raises(InvalidRequest) as refused:
        t.size_for(200)
    error = to_api_error(refused.value)
    assert (error.status, error.code) == (422, "validation_error")
    assert "128, 256" in refused.value.message
    with pytest.raises(ValueError):
        Thumbnailer([128], 256, LIMITS)
    with pytest.raises(ValueError):
        Thumbnailer([], 256, LIMITS)


def test_etag_names_content_size_and_encoding() -> None:
    sha = "ab" * 32
    webp, jpeg = thumbnailer(), thumbnailer(fmt="jpeg")
    tags = {webp.etag(sha, 128), webp.etag(sha, 256), jpeg.etag(sha, 256)}
    tags.add(thumbnailer(quality=50).etag(sha, 256))
    assert len(tags) == 4
    assert all(tag.startswith('"') and tag.endswith('"') and sha in tag for tag in tags)
    assert webp.etag(sha, 256) == thumbnailer().etag(sha, 256)


async def test_renders_once_then_serves_from_the_cache(tmp_path: Path) -> None:
    blobs = CountingBlobs(tmp_path)
    record = await stored(blobs, encode(gradient(640, 480), "PNG"))
    t = thumbnailer()
    first = await t.for_record(record, blobs, 128)
    assert opened(first.data).size == (128, 96)
    assert first.content_type == "image/webp"
    assert first.etag == t.etag(record.sha256, 128)
    # Cached by content: the blob is not read again, even once it is gone.
    await blobs.delete(record.blob_key)
    assert await t.for_record(record, blobs, 128) == first
    assert blobs.reads == 1
    # Another size is another entry, and needs the bytes.
    with pytest.raises(BlobNotFound):
        await t.for_record(record, blobs, 256)


async def test_concurrent_requests_share_one_rendering(tmp_path: Path) -> None:
    blobs = CountingBlobs(tmp_path)
    record = await stored(blobs, encode(gradient(300, 200), "PNG"))
    t = thumbnailer()
    results = await asyncio.gather(*(t.for_record(record, blobs, 256) for _ in range(5)))
    assert blobs.reads == 1
    assert len({r.data for r in results}) == 1


async def test_a_waiter_going_away_does_not_cancel_the_rendering(tmp_path: Path) -> None:
    blobs = CountingBlobs(tmp_path)
    record = await stored(blobs, encode(gradient(300, 200), "PNG"))
    blobs.gate = asyncio.Event()
    t = thumbnailer()
    first = asyncio.create_task(t.for_record(record, blobs, 128))
    second = asyncio.create_task(t.for_record(record, blobs, 128))
    await blobs.held.wait()
    first.cancel()
    blobs.gate.set()
    assert opened((await second).data).size == (128, 85)
    assert first.cancelled()
    assert blobs.reads == 1


async def test_renderings_at_once_are_bounded(tmp_path: Path) -> None:
    blobs = CountingBlobs(tmp_path)
    records = [await stored(blobs, encode(gradient(64 + i, 64), "PNG")) for i in range(4)]
    blobs.gate = asyncio.Event()
    t = thumbnailer(max_concurrent=2)
    tasks = [asyncio.create_task(t.for_record(r, blobs, 128)) for r in records]
    for _ in range(50):
        await asyncio.sleep(0)
    assert blobs.waiting == 2
    blobs.gate.set()
    assert len(await asyncio.gather(*tasks)) == 4
    assert blobs.reads == 4


async def test_missing_bytes_are_a_store_error(tmp_path: Path) -> None:
    blobs = CountingBlobs(tmp_path)
    record = await stored(blobs, encode(gradient(50, 50), "PNG"))
    await blobs.delete(record.blob_key)
    with pytest.raises(BlobNotFound) as raised:
        await thumbnailer().for_record(record, blobs, 128)
    # What the client gets: the record outlived its bytes, a store's fault.
    error = to_api_error(raised.value)
    assert (error.status, error.code) == (502, "store_error")


def test_thumbnail_settings_are_checked_at_load() -> None:
    assert AppArgs().thumbnails == ThumbnailArgs()
    made = thumbnailer_for(ThumbnailArgs(sizes=[64, 200], default_size=64, format="jpeg"), LIMITS)
    assert (made.sizes, made.default_size, made.content_type) == ((64, 200), 64, "image/jpeg")
    bad: dict[str, Any]
    for bad in (
        {"default_size": 100},
        {"sizes": [8, 256]},
        {"sizes": [256, 4096]},
        {"sizes": []},
        {"format": "gif"},
        {"quality": 0},
        {"cache_mb": 1},
    ):
        with pytest.raises(ValidationError):
            AppArgs.model_validate({"thumbnails": bad})


# -- over HTTP ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(
    ray_session: str,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    data_dir = tmp_path_factory.mktemp("thumb-data")
    args = tiny_graph_args(
        tiny_blip_dir,
        tiny_clip_dir,
        {"data_dir": str(data_dir)},
        thumbnails={"sizes": [64, 256], "default_size": 256},
    )
    # Under a route prefix, as the page may be served.
    with served(ray_session, args, "thumbs", "/thumbs") as deployed:
        yield deployed


def add(client: httpx.Client, data: bytes) -> dict[str, Any]:
    response = client.post("/images", files={"file": ("x.png", data, "image/png")})
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def assert_json_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == code


def test_thumbnail_over_http(deployed: Deployed) -> None:
    client = deployed.client
    record = add(client, encode(gradient(600, 400), "PNG"))
    url = f"/images/{record['id']}/thumbnail"

    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    assert opened(response.content).size == (256, 171)
    etag = response.headers["etag"]
    assert etag.startswith('"') and record["sha256"] in etag  # strong, content-addressed
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["x-content-type-options"] == "nosniff"

    small = client.get(url, params={"size": 64})
    assert small.status_code == 200
    assert opened(small.content).size == (64, 43)
    assert small.headers["etag"] != etag

    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert "immutable" in again.headers["cache-control"]
    assert client.get(url, headers={"If-None-Match": small.headers["etag"]}).status_code == 200
    # The same bytes every time: a strong ETag promises it.
    assert client.get(url).content == response.content


def test_small_images_are_not_enlarged(deployed: Deployed) -> None:
    record = add(deployed.client, encode(gradient(40, 30), "PNG"))
    response = deployed.client.get(f"/images/{record['id']}/thumbnail")
    assert response.status_code == 200
    assert opened(response.content).size == (40, 30)


def test_bad_thumbnail_requests_get_json_errors_and_change_nothing(deployed: Deployed) -> None:
    client = deployed.client
    record = add(client, encode(gradient(90, 60), "PNG"))
    before = deployed.state()
    url = f"/images/{record['id']}/thumbnail"
    for size in ("128", "0", "-5", "abc", "1e3", "99999999999999999999"):
        assert_json_error(client.get(url, params={"size": size}), 422, "validation_error")
    unknown = "00000000-0000-0000-0000-000000000000"
    assert_json_error(client.get(f"/images/{unknown}/thumbnail"), 404, "not_found")
    assert deployed.state() == before

    assert client.delete(f"/images/{record['id']}").status_code == 204
    assert_json_error(client.get(url), 404, "not_found")


def test_thumbnail_route_is_documented(deployed: Deployed) -> None:
    paths = deployed.client.get("/openapi.json").json()["paths"]
    operation = paths["/images/{image_id}/thumbnail"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"image_id", "size"}
    assert "304" in operation["responses"]
    assert "image/webp" in operation["responses"]["200"]["content"]
