"""The ingest and delete ordering on the real embedded stores, with failures injected
on chosen calls: after each, no record points at a missing blob and no blob is left
without a record."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ingress.core.imaging import DecodedImage, ImageLimits
from ingress.core.service import ImageService
from ingress.stores.base import StoreError
from ingress.stores.lancedb import LanceDBVectorStore
from ingress.stores.local_blobs import LocalBlobStore
from ingress.stores.records import blob_key_for, image_id_for

DIM = 8


class _Models:
    """Deterministic stand-in for the model deployments (the stores are real)."""

    caption_model = "test-captioner"
    embedding_model = "test-embedder"

    def __init__(self) -> None:
        self.fail_on: set[str] = set()

    async def caption(self, pixels: np.ndarray) -> str:
        self._maybe_fail("caption")
        return f"an image of mean {pixels.mean():.1f}"

    async def embed_image(self, pixels: np.ndarray) -> np.ndarray:
        self._maybe_fail("embed_image")
        rng = np.random.default_rng(int(pixels.sum()) % 2**32)
        vector = rng.standard_normal(DIM).astype(np.float32)
        return vector / np.linalg.norm(vector)

    async def embed_text(self, text: str) -> np.ndarray:
        return await self.embed_image(np.frombuffer(text.encode(), dtype=np.uint8))

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail_on:
            raise RuntimeError(f"{name} failed")


class _Failing:
    """Wraps a real store and fails the named methods."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.fail_on: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in self.fail_on:

            async def failing(*args: Any, **kwargs: Any) -> Any:
                raise StoreError(f"{name} failed")

            return failing
        return attr


def _image(seed: int) -> DecodedImage:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    data = out.getvalue()
    return DecodedImage(data, hashlib.sha256(data).hexdigest(), "image/png", 32, 24, pixels)


@pytest.fixture
def parts(tmp_path: Path) -> tuple[ImageService, _Models, _Failing, _Failing]:
    models = _Models()
    vectors = _Failing(LanceDBVectorStore(tmp_path / "db", models.embedding_model, DIM))
    blobs = _Failing(LocalBlobStore(tmp_path / "blobs"))
    return ImageService(models, vectors, blobs, ImageLimits()), models, vectors, blobs


async def _consistent(vectors: _Failing, blobs: _Failing, root: Path) -> int:
    """Every record has its blob and every blob has its record; returns the count."""
    records = (await vectors._inner.list(1000)).records
    for record in records:
        assert await blobs._inner.exists(record.blob_key)
    keys = {
        f"{p.parent.name}/{p.name}"
        for p in (root / "blobs").rglob("*")
        if p.is_file() and not p.name.endswith(".meta.json")
    }
    assert keys == {r.blob_key for r in records}
    return len(records)


@pytest.mark.parametrize("failing", ["caption", "embed_image"])
async def test_model_failure_leaves_nothing(parts: Any, tmp_path: Path, failing: str) -> None:
    service, models, vectors, blobs = parts
    models.fail_on = {failing}
    with pytest.raises(RuntimeError, match=failing):
        await service.add(_image(1), tags=[])
    assert await _consistent(vectors, blobs, tmp_path) == 0


async def test_record_write_failure_removes_the_blob(parts: Any, tmp_path: Path) -> None:
    service, _, vectors, blobs = parts
    await service.add(_image(0), tags=[])
    vectors.fail_on = {"upsert"}
    with pytest.raises(StoreError):
        await service.add(_image(1), tags=[])
    assert await _consistent(vectors, blobs, tmp_path) == 1


async def test_blob_write_failure_writes_no_record(parts: Any, tmp_path: Path) -> None:
    service, _, vectors, blobs = parts
    blobs.fail_on = {"put"}
    with pytest.raises(StoreError):
        await service.add(_image(1), tags=[])
    blobs.fail_on = set()
    assert await _consistent(vectors, blobs, tmp_path) == 0


async def test_delete_failing_at_the_blob_keeps_no_dangling_record(
    parts: Any, tmp_path: Path
) -> None:
    service, _, vectors, blobs = parts
    added = await service.add(_image(1), tags=["a"])
    blobs.fail_on = {"delete"}
    with pytest.raises(StoreError):
        await service.delete(added.record.id)
    # The record went first: at worst an unreferenced blob remains, never a broken record.
    assert await vectors._inner.get(added.record.id) is None
    blobs.fail_on = set()


async def test_concurrent_adds_of_the_same_bytes_end_with_one_record(
    parts: Any, tmp_path: Path
) -> None:
    service, _, vectors, blobs = parts
    image = _image(3)
    results = await asyncio.gather(*(service.add(image, tags=[]) for _ in range(5)))
    assert {r.record.id for r in results} == {image_id_for(image.sha256)}
    assert await _consistent(vectors, blobs, tmp_path) == 1
    assert await blobs._inner.exists(blob_key_for(image.sha256))
    again = await service.add(image, tags=[])
    assert again.duplicate
