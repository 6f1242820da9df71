from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests never reach a model hub; loading must go through local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tests.support.ports import free_port
from tests.support.tiny_models import build_tiny_blip, build_tiny_clip, build_tiny_siglip

# Each folder of tests is a tier with a marker of the same name: `-m unit`, or the path.
TIERS = ("unit", "stores", "served", "repo")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture(scope="session")
def ray_session() -> Iterator[str]:
    """One local Ray and Serve for the whole test session, shut down at the end.
    Yields the base URL of Serve's HTTP proxy (loopback, a free port)."""
    import ray
    from ray import serve

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def plain_batching() -> Iterator[None]:
    """Lets `@serve.batch` run on a plain class under asyncio. Ray 2.60's batch queue only
    needs the replica context for a warning about max_ongoing_requests; outside a
    replica that lookup raises, so the warning is switched off and nothing else."""
    from ray.serve import batching

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            batching._BatchQueue,
            "_warn_if_max_batch_size_exceeds_max_ongoing_requests",
            lambda self: None,
        )
        yield
