"""Every failure family maps to the DESIGN's status and code."""

from __future__ import annotations

import pytest
from ray.exceptions import ActorDiedError
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from deployments.contracts import InvalidModelInput
from ingress.core.errors import FetchTimeout, ForbiddenAddress, ModelTimeout, UnsupportedMediaType
from ingress.http.errors import to_api_error
from ingress.stores.base import (
    BlobNotFound,
    EmbeddingMismatch,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (BackPressureError(num_queued_requests=10, max_queued_requests=10), 503, "overloaded"),
        (
            DeploymentUnavailableError(DeploymentID(name="Embedder", app_name="x")),
            503,
            "model_unavailable",
        ),
        (ActorDiedError(), 503, "model_unavailable"),
        (ModelTimeout("Captioner.caption did not answer"), 504, "model_timeout"),
        (InvalidModelInput("bad"), 400, "invalid_model_input"),
        (StoreUnavailable("down"), 503, "store_unavailable"),
        (StoreTimeout("slow"), 504, "store_timeout"),
        (StoreError("boom"), 502, "store_error"),
        (BlobNotFound("blobs/ab/cd"), 502, "store_error"),
        (EmbeddingMismatch("other model"), 409, "embedding_mismatch"),
        (UnsupportedMediaType("svg"), 415, "unsupported_media_type"),
        (ForbiddenAddress("10.0.0.1"), 400, "forbidden_address"),
        (FetchTimeout("slow"), 504, "fetch_timeout"),
        (RuntimeError("secret internals"), 500, "internal_error"),
    ],
)
def test_mapping(exc: BaseException, status: int, code: str) -> None:
    error = to_api_error(exc)
    assert (error.status, error.code) == (status, code)
    assert "secret internals" not in error.message


def test_overload_and_outages_say_when_to_retry() -> None:
    for exc in (
        BackPressureError(num_queued_requests=1, max_queued_requests=1),
        StoreUnavailable("x"),
    ):
        assert "Retry-After" in to_api_error(exc).headers
