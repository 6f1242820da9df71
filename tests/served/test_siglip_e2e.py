"""The whole graph with a SigLIP embedder: `embedder.model.model_id` set to a tiny SigLIP
directory, and nothing else changed. Uploads, text search and image search answer
with SigLIP's vectors (the scores are the cosines the same model gives in-process)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deployments.embedder import DualEncoderEmbedder
from deployments.settings import EmbedderSettings
from ingress.core.imaging import ImageLimits, decode_image
from tests.support.served_app import Deployed, served, tiny_graph_args
from tests.support.tiny_models import TINY_DIM

QUERY = "a red dog on the grass"


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48 + seed, 64, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


UPLOADS = [_png(seed) for seed in range(3)]


@pytest.fixture(scope="module")
def siglip(tiny_siglip_dir: Path) -> DualEncoderEmbedder:
    """The same model in-process: what the served vectors must be."""
    return DualEncoderEmbedder(
        EmbedderSettings.model_validate(
            {"model": {"model_id": str(tiny_siglip_dir), "dtype": "float32"}}
        )
    )


@pytest.fixture(scope="module")
def service(
    ray_session: str,
    tiny_blip_dir: Path,
    tiny_siglip_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    data_dir = tmp_path_factory.mktemp("siglip-data")
    args = tiny_graph_args(tiny_blip_dir, tiny_siglip_dir, {"data_dir": str(data_dir)})
    # float32 in both processes, so the served scores can be compared tightly.
    args.embedder.model.dtype = "float32"
    with served(ray_session, args, "siglip", "/siglip") as deployed:
        yield deployed


@pytest.fixture(scope="module")
def ids(service: Deployed) -> list[str]:
    added = []
    for data in UPLOADS:
        response = service.client.post("/images", files={"file": ("x.png", data, "image/png")})
        assert response.status_code == 201, response.text
        added.append(response.json()["id"])
    return added


def _image_vector(model: DualEncoderEmbedder, data: bytes) -> np.ndarray:
    # The compact image the ingress hands the embedder.
    return model.embed_images([decode_image(data, ImageLimits()).pixels])[0]


def test_the_service_reports_the_siglip_model(service: Deployed, tiny_siglip_dir: Path) -> None:
    health = service.client.get("/healthz")
    assert health.status_code == 200, health.text
    assert health.json()["embedding_model"] == str(tiny_siglip_dir)
    assert health.json()["embedding_dim"] == TINY_DIM


def test_text_search_scores_are_siglip_cosines(
    service: Deployed, ids: list[str], siglip: DualEncoderEmbedder
) -> None:
    response = service.client.post("/search/text", json={"query": QUERY, "limit": 10})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    text = siglip.embed_texts([QUERY])[0]
    expected = {
        image_id: float(text @ _image_vector(siglip, data))
        for image_id, data in zip(ids, UPLOADS, strict=True)
    }
    assert [r["image"]["id"] for r in results] == sorted(expected, key=expected.__getitem__)[::-1]
    for result in results:
        assert result["score"] == pytest.approx(expected[result["image"]["id"]], abs=1e-4)


def test_image_search_finds_the_same_image_first(service: Deployed, ids: list[str]) -> None:
    for image_id, data in zip(ids, UPLOADS, strict=True):
        response = service.client.post(
            "/search/image", files={"file": ("q.png", data, "image/png")}, data={"limit": "3"}
        )
        assert response.status_code == 200, response.text
        best = response.json()["results"][0]
        assert best["image"]["id"] == image_id
        # Not exactly 1: a query is decoded straight to the embedder's input size, the
        # stored image to the 512 side first (ingress/core/imaging.py).
        assert best["score"] == pytest.approx(1.0, abs=0.01)
