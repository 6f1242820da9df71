"""A model replica that dies in the middle of a request, through a real local Ray and
real HTTP: that request gets a JSON 503 `model_unavailable` (never a hang, never a bare
500), nothing is stored for it, and Serve replaces the replica so the service recovers.

To have a request provably inside a model replica when it dies, the batch queues are
configured to wait (user_config: max_batch_size 2, batch_wait_timeout_s 10): a lone
request sits in the queue until its batch fills or the wait runs out. The replica is
killed while the request waits there. Afterwards requests are sent in pairs, which fill
a batch at once, so the long wait costs nothing.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
from PIL import Image

from tests.support.served_app import Deployed, replica_name, served, tiny_graph_args

APP = "replica-failure"
# The longest wait BatchSettings allows; the kill comes long before it runs out.
SLOW_BATCH: dict[str, Any] = {"max_batch_size": 2, "batch_wait_timeout_s": 10.0}
FAST_BATCH: dict[str, Any] = {"max_batch_size": 8, "batch_wait_timeout_s": 0.01}
# Bounds on waiting for something to happen (never asserted as durations).
IN_FLIGHT_WITHIN_S = 8.0
RECOVERY_WITHIN_S = 90.0


@pytest.fixture(scope="module")
def deployed(
    ray_session: str,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    data_dir = tmp_path_factory.mktemp("replica-failure")
    args = tiny_graph_args(
        tiny_blip_dir,
        tiny_clip_dir,
        {"data_dir": str(data_dir)},
        model_timeout_s=60,
    )
    with served(
        ray_session,
        args,
        APP,
        f"/{APP}",
        client_timeout_s=120,
        captioner_options={"user_config": SLOW_BATCH, "health_check_period_s": 1},
        # Text queries wait in the queue; image embeddings (part of every ingest) do not.
        embedder_options={
            "user_config": {"image": FAST_BATCH, "text": SLOW_BATCH},
            "health_check_period_s": 1,
        },
    ) as deployed:
        yield deployed


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _replica(deployment: str) -> str:
    return replica_name(APP, deployment)


def _ongoing_requests(replica: str) -> int:
    """Requests the replica holds now, its batch queue included. This is the replica
    actor's own method that Serve's request routers poll for queue lengths."""
    actor = ray.get_actor(replica, namespace="serve")
    count: Any = ray.get(actor.get_num_ongoing_requests.remote(), timeout=30)
    return int(count)


def _wait_until(condition: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def _kill_during(
    deployed: Deployed, deployment: str, send: Callable[[httpx.Client], httpx.Response]
) -> tuple[httpx.Response, str]:
    """Send one request from a thread, kill `deployment`'s replica while the request is
    inside it, and return the request's answer and the dead replica's actor id."""
    replica = _replica(deployment)
    assert _ongoing_requests(replica) == 0
    with ThreadPoolExecutor(1) as pool:
        pending: Future[httpx.Response] = pool.submit(send, deployed.client)
        _wait_until(
            lambda: pending.done() or _ongoing_requests(replica) > 0,
            IN_FLIGHT_WITHIN_S,
            f"the request to reach {deployment}",
        )
        assert not pending.done(), pending.result().text
        # Serve creates replicas with max_restarts=0: Ray does not bring this actor back;
        # Serve's controller notices the death and starts a new replica.
        ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=False)
        return pending.result(timeout=120), replica


def _recovered(deployed: Deployed, deployment: str, dead: str) -> None:
    def healthy() -> bool:
        if deployed.client.get("/healthz").status_code != 200:
            return False
        try:
            return _replica(deployment) != dead
        except AssertionError:  # none alive yet while Serve replaces it
            return False

    _wait_until(healthy, RECOVERY_WITHIN_S, f"{deployment} to be replaced")


def _assert_model_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "model_unavailable"
    assert response.json()["error"]["message"]
    assert int(response.headers["retry-after"]) > 0


def _in_pairs(
    deployed: Deployed, send: Callable[[httpx.Client, int], httpx.Response]
) -> list[httpx.Response]:
    # Two at once fill a batch of 2, so neither waits for the batch timeout.
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda i: send(deployed.client, i), range(2)))


def _search(client: httpx.Client, i: int = 0) -> httpx.Response:
    return client.post("/search/text", json={"query": f"a photo of thing {i}", "limit": 5})


def test_embedder_dies_during_a_search(deployed: Deployed) -> None:
    assert deployed.client.get("/healthz").status_code == 200

    response, dead = _kill_during(deployed, "Embedder", _search)
    _assert_model_unavailable(response)

    _recovered(deployed, "Embedder", dead)
    for answer in _in_pairs(deployed, _search):
        assert answer.status_code == 200, answer.text


def test_captioner_dies_during_an_ingest_and_nothing_is_stored(deployed: Deployed) -> None:
    before = deployed.state()

    def add(client: httpx.Client) -> httpx.Response:
        return client.post("/images", files={"file": ("a.png", _png(1), "image/png")})

    response, dead = _kill_during(deployed, "Captioner", add)
    _assert_model_unavailable(response)
    # The embedding and the blob were done before the caption failed: the blob is gone
    # again and no record was written.
    assert deployed.state() == before

    _recovered(deployed, "Captioner", dead)
    added = _in_pairs(
        deployed,
        lambda client, i: client.post(
            "/images", files={"file": ("b.png", _png(1 + i), "image/png")}
        ),
    )
    assert [a.status_code for a in added] == [201, 201], [a.text for a in added]
    assert deployed.state()[0] == before[0] + 2
