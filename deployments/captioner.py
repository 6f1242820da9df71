"""BLIP captioning as a batched Ray Serve deployment."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ray import serve
from transformers import BlipForConditionalGeneration, BlipProcessor

from deployments.batching import apply_batch_settings, current_batch_settings, unwrap
from deployments.contracts import CaptionerInfo, validate_image_array
from deployments.fast_attention import use_sdpa_in_blip_vision
from deployments.model_runner import ModelRunner
from deployments.preprocessing import pixel_pipeline
from deployments.probe import probe_image
from deployments.settings import BatchSettings, CaptionerSettings

logger = logging.getLogger(__name__)


class BlipCaptioner(ModelRunner):
    """Captions compact RGB images: one per Serve call (`caption`, calls batched into one
    `generate`), or a list at once in-process (`caption_many`)."""

    model: BlipForConditionalGeneration
    processor: BlipProcessor

    def __init__(self, settings: CaptionerSettings | dict[str, Any] | None = None) -> None:
        self.settings = CaptionerSettings.model_validate(settings or {})
        self._load_model(BlipForConditionalGeneration, BlipProcessor, self.settings.model)
        # Same attention math, one fused kernel: the vision encoder is most of a caption.
        use_sdpa_in_blip_vision(self.model)
        self._pixels = pixel_pipeline(
            self.processor, self.placement, self.settings.model.preprocess
        )
        self._start("captioner")
        logger.info("captioner ready: %s on %s", self.model_id, self.placement)

    # -- the public batch API (in-process: tools, benchmarks) ------------------------------

    def caption_many(self, images: Sequence[np.ndarray]) -> list[str]:
        """The caption of each image, in order, from one `generate` on the model thread;
        blocks until done. Every image is validated first (InvalidModelInput: nothing
        runs); any failure fails the whole call."""
        return self._forward(self._generate, [validate_image_array(image) for image in images])

    # -- Serve -------------------------------------------------------------------------------

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        settings = BatchSettings.model_validate(user_config)
        apply_batch_settings(self._caption_batch, settings)
        logger.info("captioner batching: %s", settings)

    async def caption(self, image: np.ndarray) -> str:
        validate_image_array(image)
        return unwrap(await self._caption_batch(image))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _caption_batch(self, images: list[np.ndarray]) -> list[str | Exception]:
        return await self._forward_isolated(self._generate, images)

    def info(self) -> CaptionerInfo:
        return CaptionerInfo(
            **self._described(), batching=current_batch_settings(self._caption_batch)
        )

    # -- the math, on validated images -----------------------------------------------------

    def _generate(self, images: list[np.ndarray], max_new_tokens: int | None = None) -> list[str]:
        with torch.inference_mode():
            inputs: dict[str, Any] = {"pixel_values": self._pixels(images)}
            if self.settings.prompt:
                prompt = self.processor(
                    text=[self.settings.prompt] * len(images), return_tensors="pt"
                )
                inputs.update(prompt.to(self.placement.device))
            tokens = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
                num_beams=self.settings.num_beams,
                do_sample=False,
            )
        captions = self.processor.batch_decode(tokens, skip_special_tokens=True)
        return [caption.strip() for caption in captions]

    def _warm_up(self) -> None:
        self._generate([probe_image()])

    def _probe(self) -> None:
        # One token proves both towers work; a full caption would take the cores from the
        # requests of an otherwise idle replica for a second.
        self._generate([probe_image(32)], 1)


# Deployment defaults; serve_config.yaml overrides them per environment.
Captioner = serve.deployment(
    name="Captioner",
    max_ongoing_requests=32,
    ray_actor_options={"num_cpus": 1},
    user_config=BatchSettings(max_batch_size=8, batch_wait_timeout_s=0.05).model_dump(),
    health_check_period_s=30,
)(BlipCaptioner)
