"""The model deployments through a real local Ray: batching, isolation and user_config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ray import serve

from deployments.captioner import Captioner
from deployments.embedder import Embedder
from deployments.settings import CaptionerSettings, EmbedderSettings, ModelSettings
from tests.support.tiny_models import TINY_DIM

APP = "models-under-test"


@pytest.fixture(scope="module")
def handles(ray_session: str, tiny_blip_dir: Path, tiny_clip_dir: Path) -> Iterator[dict[str, Any]]:
    zero_cpu = {"num_cpus": 0}
    captioner = Captioner.options(ray_actor_options=zero_cpu).bind(
        CaptionerSettings(
            model=ModelSettings(model_id=str(tiny_blip_dir), dtype="float32"), max_new_tokens=6
        )
    )
    embedder = Embedder.options(ray_actor_options=zero_cpu).bind(
        EmbedderSettings(model=ModelSettings(model_id=str(tiny_clip_dir), dtype="float32"))
    )
    caption_handle = serve.run(captioner, name=f"{APP}-captioner", route_prefix=None)
    embed_handle = serve.run(embedder, name=f"{APP}-embedder", route_prefix=None)
    yield {"captioner": caption_handle, "embedder": embed_handle}
    serve.delete(f"{APP}-captioner")
    serve.delete(f"{APP}-embedder")


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def test_concurrent_requests_through_ray_match_single_calls(handles: dict[str, Any]) -> None:
    embedder, captioner = handles["embedder"], handles["captioner"]
    images = [_image(seed) for seed in range(12)]
    single = [embedder.embed_image.remote(images[0]).result()]
    responses = [embedder.embed_image.remote(image) for image in images]
    vectors = [response.result() for response in responses]
    assert all(v.shape == (TINY_DIM,) and v.dtype == np.float32 for v in vectors)
    np.testing.assert_allclose(vectors[0], single[0], atol=1e-5)
    captions = [captioner.caption.remote(image) for image in images]
    texts = [response.result() for response in captions]
    assert texts[3] == captioner.caption.remote(images[3]).result()
    info = embedder.info.remote().result()
    assert info.dim == TINY_DIM


def test_bad_item_in_a_concurrent_burst_fails_alone(handles: dict[str, Any]) -> None:
    embedder = handles["embedder"]
    good = [embedder.embed_image.remote(_image(seed)) for seed in range(4)]
    bad = embedder.embed_image.remote(np.zeros((3, 3), dtype=np.uint8))
    more_good = [embedder.embed_image.remote(_image(seed)) for seed in range(4, 8)]
    with pytest.raises(Exception, match="uint8 HxWx3"):
        bad.result()
    assert all(r.result().shape == (TINY_DIM,) for r in good + more_good)


def test_user_config_reaches_the_batch_queues(handles: dict[str, Any], tiny_clip_dir: Path) -> None:
    before = handles["embedder"].info.remote().result()
    assert before.batching.image.max_batch_size == 16
    new_config = {"image": {"max_batch_size": 4, "batch_wait_timeout_s": 0.01}, "text": {}}
    app = Embedder.options(ray_actor_options={"num_cpus": 0}, user_config=new_config).bind(
        EmbedderSettings(model=ModelSettings(model_id=str(tiny_clip_dir), dtype="float32"))
    )
    handle = serve.run(app, name=f"{APP}-embedder", route_prefix=None)
    after = handle.info.remote().result()
    assert after.batching.image.max_batch_size == 4
    assert handle.embed_text.remote("a blue car").result().shape == (TINY_DIM,)
