"""BLIP captioning as a batched Ray Serve deployment."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from ray import serve
from transformers import BlipForConditionalGeneration, BlipProcessor

from deployments.batching import (
    Liveness,
    ModelThread,
    apply_batch_settings,
    current_batch_settings,
    replica_tag,
    run_isolated,
    unwrap,
)
from deployments.contracts import CaptionerInfo, validate_image_array
from deployments.fast_attention import use_sdpa_in_blip_vision
from deployments.model_loading import load_pretrained
from deployments.probe import probe_image
from deployments.settings import BatchSettings, CaptionerSettings

logger = logging.getLogger(__name__)


class BlipCaptioner:
    """Captions one compact RGB image per call; calls are batched into one `generate`."""

    def __init__(self, settings: CaptionerSettings | dict[str, Any] | None = None) -> None:
        self.settings = CaptionerSettings.model_validate(settings or {})
        self.model, self.processor, self.placement = load_pretrained(
            BlipForConditionalGeneration, BlipProcessor, self.settings.model
        )
        # Same attention math, one fused kernel: the vision encoder is most of a caption.
        use_sdpa_in_blip_vision(self.model)
        self.model_id = self.settings.model.model_id
        self._liveness = Liveness()
        self._thread = ModelThread("captioner")
        # Warm up now so that a broken model fails the replica at start, not a user
        # request; on the model thread, so that its torch threads are ready too.
        self._thread.call(self._generate, [probe_image()])
        self._liveness.mark_ok()
        logger.info("captioner ready: %s on %s", self.model_id, self.placement)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        settings = BatchSettings.model_validate(user_config)
        apply_batch_settings(self._caption_batch, settings)
        logger.info("captioner batching: %s", settings)

    async def caption(self, image: np.ndarray) -> str:
        validate_image_array(image)
        return unwrap(await self._caption_batch(image))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _caption_batch(self, images: list[np.ndarray]) -> list[str | Exception]:
        # The forward pass runs off the event loop so the replica keeps queueing the next batch.
        outcomes = await self._thread.run(run_isolated, self._generate, images)
        if any(not isinstance(o, Exception) for o in outcomes):
            self._liveness.mark_ok()
        return outcomes

    def _generate(self, images: list[np.ndarray], max_new_tokens: int | None = None) -> list[str]:
        text = [self.settings.prompt] * len(images) if self.settings.prompt else None
        inputs = self.processor(images=images, text=text, return_tensors="pt")
        inputs = inputs.to(self.placement.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.placement.dtype)
        with torch.inference_mode():
            tokens = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
                num_beams=self.settings.num_beams,
                do_sample=False,
            )
        captions = self.processor.batch_decode(tokens, skip_special_tokens=True)
        return [caption.strip() for caption in captions]

    async def check_health(self) -> None:
        if self._liveness.needs_probe():
            # One token proves both towers work; a full caption would take the cores
            # from the requests of an otherwise idle replica for a second.
            await self._thread.run(self._generate, [probe_image(32)], 1)
            self._liveness.mark_ok()

    def info(self) -> CaptionerInfo:
        return CaptionerInfo(
            model_id=self.model_id,
            device=str(self.placement.device),
            dtype=str(self.placement.dtype).removeprefix("torch."),
            replica=replica_tag(),
            batching=current_batch_settings(self._caption_batch),
        )


# Deployment defaults; serve_config.yaml overrides them per environment.
Captioner = serve.deployment(
    name="Captioner",
    max_ongoing_requests=32,
    ray_actor_options={"num_cpus": 1},
    user_config=BatchSettings(max_batch_size=8, batch_wait_timeout_s=0.05).model_dump(),
    health_check_period_s=30,
)(BlipCaptioner)
