"""The ingress's view of the model deployments: query vectors are remembered per text."""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from typing import Any

import numpy as np
import pytest

from deployments.batching import BatchSettings
from deployments.contracts import EmbedderInfo
from deployments.settings import EmbedderBatching
from ingress.http import model_client
from ingress.http.model_client import ServedModels


class _Response:
    def __init__(self, value: Any) -> None:
        self._value = value

    def __await__(self) -> Generator[Any, None, Any]:
        async def value() -> Any:
            return self._value

        return value().__await__()

    def cancel(self) -> None:
        pass


class _Method:
    def __init__(self, handle: _Handle, name: str) -> None:
        self._handle, self._name = handle, name

    def remote(self, arg: Any) -> Awaitable[Any]:
        self._handle.calls.append((self._name, arg))
        seed = sum(map(ord, str(arg)))
        return _Response(np.random.default_rng(seed).normal(size=4).astype(np.float32))


class _Handle:
    """Answers like a Serve handle to the embedder, and counts the calls."""

    deployment_name = "Embedder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> _Method:
        return _Method(self, name)


@pytest.fixture
def embedder() -> _Handle:
    return _Handle()


def _models(embedder: _Handle) -> ServedModels:
    batching = EmbedderBatching(image=BatchSettings(), text=BatchSettings())
    info = EmbedderInfo(
        model_id="m", dim=4, device="cpu", dtype="float32", replica="r", batching=batching
    )
    return ServedModels(_Handle(), embedder, "c", info, timeout_s=5.0)  # type: ignore[arg-type]


async def test_a_repeated_query_is_embedded_once(embedder: _Handle) -> None:
    models = _models(embedder)
    first = await models.embed_text("a red car")
    again = await models.embed_text("a red car")
    other = await models.embed_text("a blue car")
    assert embedder.calls == [("embed_text", "a red car"), ("embed_text", "a blue car")]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # Shared between requests, so nobody may change it.
    with pytest.raises(ValueError):
        again[0] = 1.0


async def test_the_least_recently_used_query_is_forgotten(
    embedder: _Handle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_client, "TEXT_CACHE_ENTRIES", 2)
    models = _models(embedder)
    for text in ("one", "two", "one", "three", "one", "two"):
        await models.embed_text(text)
    # "two" was the oldest when "three" came in; "one" stayed in use.
    assert [arg for _, arg in embedder.calls] == ["one", "two", "three", "two"]


async def test_images_are_never_cached(embedder: _Handle) -> None:
    models = _models(embedder)
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    await models.embed_image(pixels)
    await models.embed_image(pixels)
    assert [name for name, _ in embedder.calls] == ["embed_image", "embed_image"]
