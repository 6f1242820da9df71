"""The model classes as plain Python objects under asyncio: batching, failure isolation,
determinism, the embedding space and the public batch API. Serve's local testing mode cannot run
`@serve.batch` in Ray 2.60, so the real-Ray path is in test_model_serving.py. Every embedder
test runs on each family: a tiny CLIP and a tiny SigLIP."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deployments.captioner import BlipCaptioner
from deployments.contracts import InvalidModelInput
from deployments.embedder import DualEncoderEmbedder
from deployments.settings import CaptionerSettings, EmbedderSettings, ModelSettings
from tests.support.tiny_models import TINY_DIM, TINY_SIGLIP_TEXT_TOKENS

# A batch queue lives on the event loop that created it, as in a replica: one loop per module.
pytestmark = [pytest.mark.usefixtures("plain_batching"), pytest.mark.asyncio(loop_scope="module")]


def _image(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module", params=["tiny_clip_dir", "tiny_siglip_dir"])
def embedder_dir(request: pytest.FixtureRequest) -> Path:
    return Path(request.getfixturevalue(request.param))


@pytest.fixture(scope="module")
def embedder(embedder_dir: Path) -> Any:
    return DualEncoderEmbedder(
        EmbedderSettings(model=ModelSettings(model_id=str(embedder_dir), dtype="float32"))
    )


@pytest.fixture(scope="module")
def captioner(tiny_blip_dir: Path) -> Any:
    settings = CaptionerSettings(
        model=ModelSettings(model_id=str(tiny_blip_dir), dtype="float32"), max_new_tokens=8
    )
    return BlipCaptioner(settings)


async def _gather(coros: list[Any]) -> list[Any]:
    return await asyncio.gather(*coros, return_exceptions=True)


class TestEmbedder:
    async def test_reports_model_and_dimension(self, embedder: Any, embedder_dir: Path) -> None:
        info = embedder.info()
        assert info.model_id == str(embedder_dir)
        assert info.dim == TINY_DIM
        assert info.dtype == "float32"

    async def test_image_vectors_are_unit_float32_of_model_dimension(self, embedder: Any) -> None:
        vector = await embedder.embed_image(_image(1))
        assert vector.dtype == np.float32
        assert vector.shape == (TINY_DIM,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)

    async def test_same_vector_alone_or_in_a_batch(self, embedder: Any) -> None:
        images = [_image(seed, 40 + seed, 70 - seed) for seed in range(6)]
        alone = [await embedder.embed_image(image) for image in images]
        with _CallCounter(embedder.model, "get_image_features") as counter:
            batched = await asyncio.gather(*(embedder.embed_image(image) for image in images))
        # Concurrent calls really shared batches: fewer forward passes than images.
        assert 1 <= counter.calls < len(images)
        for single, together in zip(alone, batched, strict=True):
            np.testing.assert_allclose(single, together, atol=1e-5)

    async def test_different_images_give_different_vectors(self, embedder: Any) -> None:
        first, second = await asyncio.gather(
            embedder.embed_image(_image(1)), embedder.embed_image(_image(2))
        )
        assert float(first @ second) < 0.9999

    async def test_text_vectors_share_the_image_space(self, embedder: Any) -> None:
        image = _image(3)
        texts = ["a red dog", "a cat on grass"]
        image_vec = await embedder.embed_image(image)
        text_vecs = await asyncio.gather(*(embedder.embed_text(t) for t in texts))
        for vec in text_vecs:
            assert vec.shape == (TINY_DIM,)
            assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
        # The model's own image-text logits are the scaled (CLIP; SigLIP: and shifted)
        # cosine of exactly these vectors: on the embedder's pixels, and on texts
        # tokenized as the model card says (SigLIP: padded to the maximum, no mask).
        model = embedder.model
        if embedder.family.name == "clip":
            tokens = dict(embedder.processor(text=texts, return_tensors="pt", padding=True))
        else:
            encoded = embedder.processor(
                text=texts,
                return_tensors="pt",
                padding="max_length",
                max_length=TINY_SIGLIP_TEXT_TOKENS,
            )
            tokens = {"input_ids": encoded["input_ids"]}
        with torch.inference_mode():
            out = model(pixel_values=embedder._pixels([image]), **tokens)
            bias = getattr(model, "logit_bias", torch.zeros(1))
            expected = ((out.logits_per_image - bias) / model.logit_scale.exp()).numpy()[0]
        ours = np.array([image_vec @ vec for vec in text_vecs])
        np.testing.assert_allclose(ours, expected, atol=1e-4)

    async def test_text_alone_or_batched_and_long_text_truncated(self, embedder: Any) -> None:
        texts = ["dog", "a photo of a blue car in the sky", "x " * 500]
        alone = [await embedder.embed_text(t) for t in texts]
        batched = await asyncio.gather(*(embedder.embed_text(t) for t in texts))
        for single, together in zip(alone, batched, strict=True):
            np.testing.assert_allclose(single, together, atol=1e-5)

    async def test_a_bad_item_fails_only_its_own_request(self, embedder: Any) -> None:
        good = [_image(seed) for seed in range(3)]
        bad_shape = np.zeros((10, 10), dtype=np.uint8)
        bad_dtype = np.zeros((10, 10, 3), dtype=np.float32)
        results = await _gather(
            [
                embedder.embed_image(good[0]),
                embedder.embed_image(bad_shape),
                embedder.embed_image(good[1]),
                embedder.embed_image(bad_dtype),
                embedder.embed_image(good[2]),
                embedder.embed_text(""),
            ]
        )
        assert isinstance(results[1], InvalidModelInput)
        assert isinstance(results[3], InvalidModelInput)
        assert isinstance(results[5], InvalidModelInput)
        for index in (0, 2, 4):
            assert isinstance(results[index], np.ndarray)

    async def test_an_item_failing_inside_the_model_fails_only_itself(
        self, embedder: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # An item that passes validation but breaks the forward pass (e.g. a processor
        # corner case): the batch is retried item by item.
        poison = _image(99)
        real = embedder._pixels

        def flaky(images: Any) -> Any:
            if any(image is poison for image in images):
                raise RuntimeError("model blew up on this image")
            return real(images)

        monkeypatch.setattr(embedder, "_pixels", flaky)
        results = await _gather(
            [
                embedder.embed_image(_image(1)),
                embedder.embed_image(poison),
                embedder.embed_image(_image(2)),
            ]
        )
        assert isinstance(results[1], RuntimeError)
        assert isinstance(results[0], np.ndarray) and isinstance(results[2], np.ndarray)

    async def test_batch_size_changes_through_user_config(self, embedder: Any) -> None:
        embedder.reconfigure({"image": {"max_batch_size": 2, "batch_wait_timeout_s": 0.2}})
        try:
            with _CallCounter(embedder.model, "get_image_features") as counter:
                await asyncio.gather(*(embedder.embed_image(_image(s)) for s in range(6)))
            assert counter.calls == 3
            assert embedder.info().batching.image.max_batch_size == 2
        finally:
            embedder.reconfigure({})
        with pytest.raises(ValueError):
            embedder.reconfigure({"image": {"max_batch_size": 0}})

    async def test_health_check_runs_the_model(
        self, embedder: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        embedder._liveness._last_ok = 0.0
        await embedder.check_health()

        def broken(**kwargs: Any) -> Any:
            raise RuntimeError("weights corrupted")

        monkeypatch.setattr(embedder.model, "get_text_features", broken)
        embedder._liveness._last_ok = 0.0
        with pytest.raises(RuntimeError, match="weights corrupted"):
            await embedder.check_health()

    async def test_batch_api_gives_what_the_served_path_gives(self, embedder: Any) -> None:
        images = [_image(seed, 40 + seed, 70 - seed) for seed in range(4)]
        texts = ["dog", "a photo of a blue car in the sky", "x " * 500]
        served_images = [await embedder.embed_image(image) for image in images]
        served_texts = [await embedder.embed_text(text) for text in texts]
        with _CallCounter(embedder.model, "get_image_features") as counter:
            vectors = embedder.embed_images(images)
        # One forward pass for the whole list, on the model thread.
        assert counter.calls == 1
        assert counter.threads and all(t.startswith("embedder") for t in counter.threads)
        with _CallCounter(embedder.model, "get_text_features") as counter:
            text_vectors = embedder.embed_texts(tuple(texts))
        assert counter.calls == 1
        for got, want in zip(vectors + text_vectors, served_images + served_texts, strict=True):
            assert got.dtype == np.float32 and got.shape == (TINY_DIM,)
            assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(got, want, atol=1e-5)

    async def test_batch_api_validates_every_item_before_the_model_runs(
        self, embedder: Any
    ) -> None:
        with _CallCounter(embedder.model, "get_image_features") as counter:
            with pytest.raises(InvalidModelInput, match="uint8 HxWx3"):
                embedder.embed_images([_image(1), np.zeros((10, 10), dtype=np.uint8)])
            assert embedder.embed_images([]) == []
        assert counter.calls == 0
        with _CallCounter(embedder.model, "get_text_features") as counter:
            with pytest.raises(InvalidModelInput, match="empty"):
                embedder.embed_texts(["a dog", " "])
            assert embedder.embed_texts([]) == []
        assert counter.calls == 0


class TestCaptioner:
    async def test_captions_are_deterministic_and_same_alone_or_batched(
        self, captioner: Any
    ) -> None:
        images = [_image(seed, 30 + 5 * seed, 60) for seed in range(5)]
        alone = [await captioner.caption(image) for image in images]
        again = [await captioner.caption(image) for image in images]
        with _CallCounter(captioner.model, "generate") as counter:
            batched = await asyncio.gather(*(captioner.caption(image) for image in images))
        assert 1 <= counter.calls < len(images)
        assert alone == again == list(batched)
        assert all(isinstance(caption, str) and caption for caption in alone)

    async def test_prompt_and_generation_settings(self, tiny_blip_dir: Path) -> None:
        settings = CaptionerSettings(
            model=ModelSettings(model_id=str(tiny_blip_dir), dtype="float32"),
            max_new_tokens=3,
            num_beams=2,
            prompt="a photo of",
        )
        prompted = BlipCaptioner(settings)
        caption = await prompted.caption(_image(5))
        # BLIP continues the prompt; at most max_new_tokens word pieces follow it.
        assert caption.startswith("a photo of")
        assert prompted.info().model_id == str(tiny_blip_dir)

    async def test_a_bad_item_fails_only_its_own_request(self, captioner: Any) -> None:
        results = await _gather(
            [
                captioner.caption(_image(1)),
                captioner.caption(np.zeros((5000, 4, 3), np.uint8)),
                captioner.caption(_image(2)),
                captioner.caption("not an image"),
            ]
        )
        assert isinstance(results[1], InvalidModelInput)
        assert isinstance(results[3], InvalidModelInput)
        assert isinstance(results[0], str) and isinstance(results[2], str)

    async def test_batch_api_gives_what_the_served_path_gives(self, captioner: Any) -> None:
        images = [_image(seed, 30 + 5 * seed, 60) for seed in range(4)]
        served = [await captioner.caption(image) for image in images]
        with _CallCounter(captioner.model, "generate") as counter:
            assert captioner.caption_many(images) == served
        assert counter.calls == 1
        assert counter.threads and all(t.startswith("captioner") for t in counter.threads)

    async def test_batch_api_validates_every_item_before_the_model_runs(
        self, captioner: Any
    ) -> None:
        with _CallCounter(captioner.model, "generate") as counter:
            with pytest.raises(InvalidModelInput):
                captioner.caption_many([_image(1), np.zeros((5000, 4, 3), np.uint8)])
            assert captioner.caption_many([]) == []
        assert counter.calls == 0

    async def test_generation_settings_are_validated(self, tiny_blip_dir: Path) -> None:
        with pytest.raises(ValueError):
            CaptionerSettings.model_validate({"model": {"model_id": "x"}, "max_new_tokens": 0})


class _CallCounter:
    """Counts forward passes, and the threads they ran on, by wrapping a method of the
    model object (e.g. `model.generate`)."""

    def __init__(self, instance: Any, method: str) -> None:
        self.calls = 0
        self.threads: set[str] = set()
        real = getattr(instance, method)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.threads.add(threading.current_thread().name)
            return real(*args, **kwargs)

        setattr(instance, method, counted)
        self._restore = lambda: delattr(instance, method)

    def __enter__(self) -> _CallCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()
