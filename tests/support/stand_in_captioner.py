"""What the test captioners share: the Captioner's interface without a model.

A stand-in answers `info` and `check_health` as the real deployment does and captions
by a rule of its own (`caption`), so that a test can know what a caption will be, or
that it will fail.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deployments.batching import replica_tag
from deployments.contracts import CaptionerInfo
from deployments.settings import BatchSettings


class StandInCaptioner:
    model_id = "test/stand-in-captioner"

    def __init__(self, settings: Any = None) -> None:
        del settings  # compose() passes the captioner settings; there is no model to load.

    async def caption(self, image: np.ndarray) -> str:
        raise NotImplementedError

    def info(self) -> CaptionerInfo:
        return CaptionerInfo(
            model_id=self.model_id,
            device="cpu",
            dtype="uint8",
            replica=replica_tag(),
            batching=BatchSettings(),
        )

    async def check_health(self) -> None:
        return None
