"""Background captioning through a real local Ray and HTTP, on the embedded stores and
tiny models: an upload is acknowledged "pending" and found by image at once, the
caption worker drains the backlog to "done", `wait_for_caption` captions inline, the
seed aliases keep working, a caption that always fails ends "failed" with its reason,
and killing the Captioner and then the worker mid-drain loses no caption."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
from PIL import Image

from tests.support.failing_captioner import REASON, FailingCaptionerDeployment
from tests.support.image_server import serving
from tests.support.served_app import (
    Deployed,
    replica_name,
    replica_names,
    served,
    tiny_graph_args,
)

APP = "captions"
# Bounds on waiting for the backlog (never asserted as durations).
DRAIN_WITHIN_S = 120.0
WORKER = {"concurrency": 8, "page_size": 16, "idle_poll_s": 0.2, "backoff_s": 0.0}


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (28, 36, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _upload(client: httpx.Client, image: bytes, path: str = "/images", **kw: Any) -> httpx.Response:
    return client.post(path, files={"file": ("x.png", image, "image/png")}, **kw)


def _wait_until(condition: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.3)


def _pending(client: httpx.Client) -> int:
    listed = client.get("/images", params={"caption_status": "pending", "limit": 1})
    assert listed.status_code == 200, listed.text
    return int(listed.json()["total"])


def _drained(client: httpx.Client) -> None:
    _wait_until(lambda: _pending(client) == 0, DRAIN_WITHIN_S, "the caption backlog to drain")


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    with serving({"/pic.png": (_png(900), "image/png")}) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def deployed(
    ray_session: str,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    args = tiny_graph_args(
        tiny_blip_dir,
        tiny_clip_dir,
        {"data_dir": str(tmp_path_factory.mktemp("captions"))},
        captioning={"mode": "background", "worker": WORKER},
        url_fetch={"allow_private_addresses": True},
    )
    with served(
        ray_session,
        args,
        APP,
        f"/{APP}",
        client_timeout_s=120,
        captioner_options={"health_check_period_s": 1},
        worker_options={"health_check_period_s": 1},
    ) as deployed:
        yield deployed


def test_uploads_are_acknowledged_pending_and_found_by_image_at_once(deployed: Deployed) -> None:
    client = deployed.client
    data = _png(1)
    added = _upload(client, data)
    assert added.status_code == 201, added.text
    body = added.json()
    assert (body["caption"], body["caption_status"], body["caption_error"]) == (
        None,
        "pending",
        None,
    )
    found = client.post("/search/image", files={"file": ("q.png", data, "image/png")})
    assert found.status_code == 200, found.text
    assert found.json()["results"][0]["image"]["id"] == body["id"]
    # The same bytes again: the existing record, whatever its caption's state.
    again = _upload(client, data)
    assert again.status_code == 200 and again.json()["duplicate"] is True


def test_the_backlog_drains_to_done(deployed: Deployed) -> None:
    client = deployed.client
    ids = []
    for seed in range(10, 16):
        added = _upload(client, _png(seed), data={"tags": "drain"})
        assert added.status_code == 201, added.text
        ids.append(added.json()["id"])
    _drained(client)
    for image_id in ids:
        record = client.get(f"/images/{image_id}").json()
        assert record["caption_status"] == "done", record
        assert isinstance(record["caption"], str) and record["caption"]
    done = client.get("/images", params={"caption_status": "done", "tags_all": "drain"})
    assert done.json()["total"] == len(ids)
    filtered = client.post(
        "/search/text",
        json={"query": "a photo", "limit": 50, "filters": {"caption_status": "pending"}},
    )
    assert filtered.status_code == 200, filtered.text
    assert filtered.json()["results"] == []
    health = client.get("/healthz").json()
    assert health["caption_backlog"] == 0


def test_wait_for_caption_captions_inline(deployed: Deployed, image_server: str) -> None:
    client = deployed.client
    for response in (
        _upload(client, _png(30), data={"wait_for_caption": "true"}),
        _upload(client, _png(31), params={"wait_for_caption": "true"}),
        client.post("/images", json={"url": f"{image_server}/pic.png", "wait_for_caption": True}),
    ):
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["caption_status"] == "done"
        assert isinstance(body["caption"], str) and body["caption"]
    refused = _upload(client, _png(32), data={"wait_for_caption": "maybe"})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "validation_error"


def test_seed_aliases_in_background_mode(deployed: Deployed) -> None:
    client = deployed.client
    added = _upload(client, _png(40), path="/images/add")
    assert added.status_code == 201, added.text
    assert added.json()["caption_status"] == "pending"
    # The seed's stateless endpoint keeps its synchronous contract.
    described = client.post("/embed-image/", files={"file": ("x.png", _png(41), "image/png")})
    assert described.status_code == 200, described.text
    assert isinstance(described.json()["description"], str)
    listed = client.get("/images/list", params={"caption_status": "pending", "limit": 500})
    assert listed.status_code == 200


def test_delete_while_pending_stays_deleted(deployed: Deployed) -> None:
    client = deployed.client
    image_id = _upload(client, _png(50)).json()["id"]
    assert client.delete(f"/images/{image_id}").status_code == 204
    _drained(client)
    assert client.get(f"/images/{image_id}").status_code == 404
    assert image_id not in {r["id"] for r in client.get("/images?limit=500").json()["images"]}


def test_bad_status_filter_is_refused(deployed: Deployed) -> None:
    response = deployed.client.get("/images", params={"caption_status": "lost"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def _kill(deployment: str) -> str:
    replica = replica_name(APP, deployment)
    ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=False)
    return replica


def test_killing_the_captioner_then_the_worker_loses_no_caption(deployed: Deployed) -> None:
    client = deployed.client
    ids = [_upload(client, _png(seed)).json()["id"] for seed in range(60, 76)]
    dead_captioner = _kill("Captioner")
    dead_worker = _kill("CaptionWorker")

    def replaced() -> bool:
        worker, captioner = replica_names(APP, "CaptionWorker"), replica_names(APP, "Captioner")
        return worker not in ([], [dead_worker]) and captioner not in ([], [dead_captioner])

    _wait_until(replaced, DRAIN_WITHIN_S, "Serve to replace the killed replicas")
    _drained(client)
    for image_id in ids:
        record = client.get(f"/images/{image_id}").json()
        assert record["caption_status"] == "done", record
        assert record["caption"]
    assert client.get("/images", params={"caption_status": "failed"}).json()["total"] == 0


def test_a_caption_that_always_fails_ends_failed_with_its_reason(
    ray_session: str,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    tmp_path: Path,
) -> None:
    args = tiny_graph_args(
        tiny_blip_dir,
        tiny_clip_dir,
        {"data_dir": str(tmp_path)},
        captioning={"mode": "background", "worker": {**WORKER, "max_attempts": 2}},
    )
    with served(
        ray_session,
        args,
        "failing-captions",
        "/failing-captions",
        captioner=FailingCaptionerDeployment,
    ) as deployed:
        client = deployed.client
        image_id = _upload(client, _png(80)).json()["id"]
        _drained(client)
        record = client.get(f"/images/{image_id}").json()
        assert record["caption_status"] == "failed", record
        assert record["caption"] is None
        assert REASON in record["caption_error"]
        failed = client.get("/images", params={"caption_status": "failed"}).json()
        assert [r["id"] for r in failed["images"]] == [image_id]
        # Inline captioning reports the model's failure, and stores nothing.
        inline = _upload(client, _png(81), data={"wait_for_caption": "true"})
        assert inline.status_code == 502, inline.text
        assert inline.json()["error"]["code"] == "model_error"
        assert client.get("/images").json()["total"] == 1


def test_cli_index_waits_for_this_runs_captions(
    deployed: Deployed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imagesearch_cli.main import main

    base_url = str(deployed.client.base_url).rstrip("/")
    folder = tmp_path / "pictures"
    folder.mkdir()
    for seed in range(90, 93):
        (folder / f"{seed}.png").write_bytes(_png(seed))
    status = main(["--url", base_url, "index", "--no-journal", "--wait-captions", str(folder)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "indexed 3" in out and "captioned 3, caption failed 0, still pending 0" in out
    for seed in range(90, 93):
        found = deployed.client.post(
            "/search/image", files={"file": ("q.png", _png(seed), "image/png")}
        ).json()["results"][0]["image"]
        assert found["caption_status"] == "done"
    _drained(deployed.client)
    assert main(["--url", base_url, "status"]) == 0
    assert "to caption  0" in capsys.readouterr().out
