"""A captioner that always fails: the Captioner's interface, and an error for every
image, as a model path that cannot caption would give."""

from __future__ import annotations

import numpy as np
from ray import serve

from deployments.contracts import validate_image_array
from tests.support.stand_in_captioner import StandInCaptioner

REASON = "this captioner cannot caption anything"


class FailingCaptioner(StandInCaptioner):
    model_id = "test/failing-captioner"

    async def caption(self, image: np.ndarray) -> str:
        validate_image_array(image)
        raise RuntimeError(REASON)


FailingCaptionerDeployment = serve.deployment(name="Captioner", max_ongoing_requests=32)(
    FailingCaptioner
)
