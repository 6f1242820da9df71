"""A deterministic captioner for end-to-end search tests.

A tiny random BLIP writes nonsense, so keyword search over its captions proves nothing.
This deployment has the Captioner's interface (caption, info, check_health) and
captions an image by its dominant colour from a fixed palette, with the sentence the
test chose for that colour: a resized or recompressed copy keeps its caption.
"""

from __future__ import annotations

import numpy as np
from ray import serve

from deployments.contracts import validate_image_array
from tests.support.stand_in_captioner import StandInCaptioner

MODEL_ID = "test/colour-captioner"

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 210),
    "yellow": (240, 210, 40),
    "purple": (130, 40, 160),
    "orange": (245, 130, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}

CAPTIONS: dict[str, str] = {
    "red": "a red kite above the beach",
    "green": "a green field behind a wooden fence",
    "blue": "a blue boat on a calm lake",
    "yellow": "a yellow taxi in a busy street",
    "purple": "a purple umbrella in the rain",
    "orange": "an orange cat asleep on a sofa",
    "white": "a white plate on a wooden table",
    "black": "a black dog in the snow",
}


def dominant_colour(pixels: np.ndarray) -> str:
    """The palette colour nearest to most pixels."""
    colours = np.asarray(list(PALETTE.values()), dtype=np.int32)
    flat = pixels.reshape(-1, 3).astype(np.int32)
    nearest = np.argmin(((flat[:, None, :] - colours[None, :, :]) ** 2).sum(axis=2), axis=1)
    return list(PALETTE)[int(np.bincount(nearest, minlength=len(PALETTE)).argmax())]


class ColourCaptioner(StandInCaptioner):
    model_id = MODEL_ID

    async def caption(self, image: np.ndarray) -> str:
        validate_image_array(image)
        return CAPTIONS[dominant_colour(image)]


ColourCaptionerDeployment = serve.deployment(name="Captioner", max_ongoing_requests=32)(
    ColourCaptioner
)
