"""Image and text embedding by a dual encoder (CLIP, SigLIP; deployments/embedder_families.py)
as a batched Ray Serve deployment."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ray import serve
from transformers import AutoModel, AutoProcessor, ProcessorMixin

from deployments.batching import apply_batch_settings, current_batch_settings, unwrap
from deployments.contracts import EmbedderInfo, validate_image_array, validate_text
from deployments.embedder_families import family_of
from deployments.model_runner import ModelRunner
from deployments.preprocessing import image_input_side, pixel_pipeline
from deployments.probe import probe_image
from deployments.settings import EmbedderBatching, EmbedderSettings

logger = logging.getLogger(__name__)


class DualEncoderEmbedder(ModelRunner):
    """Embeds compact RGB images and query texts into one L2-normalised float32 space:
    one per Serve call (`embed_image`, `embed_text`, each batched), or a list at once
    in-process (`embed_images`, `embed_texts`)."""

    # The family's model class (CLIPModel, SiglipModel, ...), as AutoModel picked it.
    model: Any
    processor: ProcessorMixin

    def __init__(self, settings: EmbedderSettings | dict[str, Any] | None = None) -> None:
        self.settings = EmbedderSettings.model_validate(settings or {})
        self._load_model(AutoModel, AutoProcessor, self.settings.model)
        config: Any = self.model.config
        try:
            self.family = family_of(config.model_type)
        except ValueError as exc:
            # As load_pretrained fails: the replica, or the tool, stops with the reason.
            raise RuntimeError(f"cannot embed with {self.model_id!r}: {exc}") from exc
        self.dim = self.family.dimension(config)
        self._max_text_tokens = self.family.max_text_tokens(config)
        self._pixels = pixel_pipeline(
            self.processor, self.placement, self.settings.model.preprocess
        )
        self.input_side = image_input_side(self.processor)
        self._start("embedder")
        logger.info(
            "embedder ready: %s (%s, dim %d) on %s",
            self.model_id,
            self.family.name,
            self.dim,
            self.placement,
        )

    # -- the public batch API (in-process: tools, benchmarks) ------------------------------

    def embed_images(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The vector (float32, unit length, `dim` long) of each image, in order, from one
        forward pass on the model thread; blocks until done. Every image is validated
        first (InvalidModelInput: nothing runs); any failure fails the whole call."""
        return self._forward(self._image_vectors, [validate_image_array(image) for image in images])

    def embed_texts(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The vector of each text, as embed_images; texts longer than the model's
        context are truncated."""
        return self._forward(self._text_vectors, [validate_text(text) for text in texts])

    # -- Serve -------------------------------------------------------------------------------

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        batching = EmbedderBatching.model_validate(user_config)
        apply_batch_settings(self._image_batch, batching.image)
        apply_batch_settings(self._text_batch, batching.text)
        logger.info("embedder batching: %s", batching)

    async def embed_image(self, image: np.ndarray) -> np.ndarray:
        validate_image_array(image)
        return unwrap(await self._image_batch(image))

    async def embed_text(self, text: str) -> np.ndarray:
        validate_text(text)
        return unwrap(await self._text_batch(text))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def _image_batch(self, images: list[np.ndarray]) -> list[np.ndarray | Exception]:
        return await self._forward_isolated(self._image_vectors, images)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def _text_batch(self, texts: list[str]) -> list[np.ndarray | Exception]:
        return await self._forward_isolated(self._text_vectors, texts)

    def info(self) -> EmbedderInfo:
        return EmbedderInfo(
            **self._described(),
            dim=self.dim,
            input_side=self.input_side,
            batching=EmbedderBatching(
                image=current_batch_settings(self._image_batch),
                text=current_batch_settings(self._text_batch),
            ),
        )

    # -- the math, on validated items ------------------------------------------------------

    def _image_vectors(self, images: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            pixel_values = self._pixels(images)
            features = self.model.get_image_features(pixel_values=pixel_values).pooler_output
        return _normalised_rows(features)

    def _text_vectors(self, texts: list[str]) -> list[np.ndarray]:
        inputs = self.family.encode_texts(
            self.processor, texts, self._max_text_tokens, self.placement
        )
        with torch.inference_mode():
            features = self.model.get_text_features(**inputs).pooler_output
        return _normalised_rows(features)

    def _warm_up(self) -> None:
        widths = {len(v) for v in self._image_vectors([probe_image()]) + self._text_vectors(["a"])}
        if widths != {self.dim}:
            # A family reading the wrong config field would fill a store with vectors
            # of a width its recording does not state.
            raise RuntimeError(
                f"{self.model_id!r}: its config gives dim {self.dim}, its towers "
                f"vectors of {sorted(widths)}"
            )

    def _probe(self) -> None:
        # Both towers, so a broken tokenizer fails as loudly as a broken vision model.
        self._image_vectors([probe_image()])
        self._text_vectors(["a photo"])


# Deployment defaults; serve_config.yaml overrides them per environment.
Embedder = serve.deployment(
    name="Embedder",
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 1},
    user_config=EmbedderBatching().model_dump(),
    health_check_period_s=30,
)(DualEncoderEmbedder)

# The name from when only CLIP was served; benchmarks, tools and tests import it.
ClipEmbedder = DualEncoderEmbedder


def _normalised_rows(features: torch.Tensor) -> list[np.ndarray]:
    # Normalise in float32: bf16 norms are off by up to ~1e-2.
    vectors = torch.nn.functional.normalize(features.float(), dim=-1)
    return list(vectors.cpu().numpy().astype(np.float32, copy=False))
