"""CLIP image and text embedding as a batched Ray Serve deployment."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from ray import serve
from transformers import CLIPModel, CLIPProcessor

from deployments.batching import (
    Liveness,
    ModelThread,
    apply_batch_settings,
    current_batch_settings,
    replica_tag,
    run_isolated,
    unwrap,
)
from deployments.contracts import EmbedderInfo, validate_image_array, validate_text
from deployments.model_loading import load_pretrained
from deployments.probe import probe_image
from deployments.settings import EmbedderBatching, EmbedderSettings

logger = logging.getLogger(__name__)


class ClipEmbedder:
    """Embeds compact RGB images and query texts into one L2-normalised float32 space."""

    def __init__(self, settings: EmbedderSettings | dict[str, Any] | None = None) -> None:
        self.settings = EmbedderSettings.model_validate(settings or {})
        self.model, self.processor, self.placement = load_pretrained(
            CLIPModel, CLIPProcessor, self.settings.model
        )
        self.model_id = self.settings.model.model_id
        config: Any = self.model.config
        self.dim = int(config.projection_dim)
        self._max_text_tokens = int(config.text_config.max_position_embeddings)
        self._liveness = Liveness()
        self._thread = ModelThread("embedder")
        self._thread.call(self._probe)
        logger.info("embedder ready: %s (dim %d) on %s", self.model_id, self.dim, self.placement)

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
        return await self._run(self._image_vectors, images)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def _text_batch(self, texts: list[str]) -> list[np.ndarray | Exception]:
        return await self._run(self._text_vectors, texts)

    async def _run(self, fn: Any, items: list[Any]) -> list[np.ndarray | Exception]:
        # The forward pass runs off the event loop so the replica keeps queueing the next batch.
        outcomes: list[np.ndarray | Exception] = await self._thread.run(run_isolated, fn, items)
        if any(not isinstance(o, Exception) for o in outcomes):
            self._liveness.mark_ok()
        return outcomes

    def _image_vectors(self, images: list[np.ndarray]) -> list[np.ndarray]:
        inputs = self.processor(images=images, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.placement.device, self.placement.dtype)
        with torch.inference_mode():
            features = self.model.get_image_features(pixel_values=pixel_values).pooler_output
        return _normalised_rows(features)

    def _text_vectors(self, texts: list[str]) -> list[np.ndarray]:
        inputs = self.processor(
            text=texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self._max_text_tokens,
        ).to(self.placement.device)
        with torch.inference_mode():
            features = self.model.get_text_features(**inputs).pooler_output
        return _normalised_rows(features)

    def _probe(self) -> None:
        # Both towers, so a broken tokenizer fails as loudly as a broken vision model.
        self._image_vectors([probe_image()])
        self._text_vectors(["a photo"])
        self._liveness.mark_ok()

    async def check_health(self) -> None:
        if self._liveness.needs_probe():
            await self._thread.run(self._probe)

    def info(self) -> EmbedderInfo:
        return EmbedderInfo(
            model_id=self.model_id,
            dim=self.dim,
            device=str(self.placement.device),
            dtype=str(self.placement.dtype).removeprefix("torch."),
            replica=replica_tag(),
            batching=EmbedderBatching(
                image=current_batch_settings(self._image_batch),
                text=current_batch_settings(self._text_batch),
            ),
        )


# Deployment defaults; serve_config.yaml overrides them per environment.
Embedder = serve.deployment(
    name="Embedder",
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 1},
    user_config=EmbedderBatching().model_dump(),
    health_check_period_s=30,
)(ClipEmbedder)


def _normalised_rows(features: torch.Tensor) -> list[np.ndarray]:
    # Normalise in float32: bf16 norms are off by up to ~1e-2.
    vectors = torch.nn.functional.normalize(features.float(), dim=-1)
    return list(vectors.cpu().numpy().astype(np.float32, copy=False))
