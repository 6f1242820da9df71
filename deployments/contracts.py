"""What the model deployments promise their callers, without torch or transformers:
the info each one answers, the input it accepts and the error it refuses input with.

The Ingress replica imports this module and never the model modules, so it does not
load torch, transformers or the weights' code it never runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from deployments.settings import BatchSettings, EmbedderBatching

# The ingress sends images already decoded and shrunk; anything bigger is a caller bug
# and would waste a batch slot on a huge tensor.
MAX_IMAGE_SIDE = 1024
MAX_TEXT_CHARS = 2000


class InvalidModelInput(ValueError):
    """An item a model deployment refuses before it joins a batch."""


class CaptionerInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    device: str
    dtype: str
    replica: str
    batching: BatchSettings


class EmbedderInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    dim: int
    device: str
    dtype: str
    replica: str
    batching: EmbedderBatching
    # The shorter side the model resizes an image to (CLIP's shortest_edge; the larger
    # of height and width where it resizes to both): a query image needs no more.
    # None where the processor's settings do not say (the ingress then sends queries
    # as large as stored images).
    input_side: int | None = None


def validate_image_array(image: Any) -> np.ndarray:
    """A compact RGB image: uint8, HxWx3, both sides within MAX_IMAGE_SIDE."""
    if not isinstance(image, np.ndarray):
        raise InvalidModelInput(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidModelInput(
            f"expected a uint8 HxWx3 RGB array, got {image.dtype} {tuple(image.shape)}"
        )
    height, width = image.shape[:2]
    if not (1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE):
        raise InvalidModelInput(
            f"image sides must be within 1..{MAX_IMAGE_SIDE}, got {width}x{height}"
        )
    return image


def validate_text(text: Any) -> str:
    if not isinstance(text, str):
        raise InvalidModelInput(f"expected a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidModelInput("text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidModelInput(f"text longer than {MAX_TEXT_CHARS} characters")
    return text
