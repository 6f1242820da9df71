"""A small deterministic image for warm-up and health probes."""

from __future__ import annotations

import numpy as np


def probe_image(side: int = 64) -> np.ndarray:
    gradient = np.linspace(0, 255, side, dtype=np.float32)
    red = np.tile(gradient, (side, 1))
    green = red.T
    blue = np.full((side, side), 128, dtype=np.float32)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)
