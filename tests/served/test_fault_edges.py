"""The fault edges through a real local Ray and real HTTP, tiny models:

- `imagesearch index` of a folder while the Ingress replica is SIGKILLed twice ends
  with exit 0, every image indexed once, and the journal complete: the client tries the
  proxy's bare `500 text/plain` again (ray-project/ray#47219) for calls safe to repeat;
- the service's own orphan sweep removes the blob an ingest killed mid-way left, and no
  record loses its blob;
- a model replica whose model id cannot be resolved fails at once with the message that
  names the id, the cause and the fixes, and Serve reports the deployment failed.

The orphan test needs an ingest provably between its blob and its record when the
Ingress dies: with `wait_for_caption` it waits in the Captioner's batch queue
(max_batch_size 2, batch_wait_timeout_s 10) after its blob was written, and the kill
comes then.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import threading
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
from ray import serve

from deployments.embedder import Embedder
from deployments.settings import EmbedderSettings, ModelSettings
from imagesearch_cli import client as cli_client
from imagesearch_cli.main import main
from ingress.stores.records import blob_key_for, image_id_for
from tests.served.test_web_page import browser
from tests.support.served_app import Deployed, blob_files, replica_name, served, tiny_graph_args

APP = "fault-edges"
IMAGES = 48
SLOW_BATCH: dict[str, Any] = {"max_batch_size": 2, "batch_wait_timeout_s": 10.0}
SWEEP_MIN_AGE_S = 15.0
__all__ = ["browser"]  # the fixture: headless Chromium, or a skip
PROXY_500 = "Internal Server Error"
# Bounds on waiting for something to happen (never asserted as durations).
WITHIN_S = 120.0


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
        {"data_dir": str(tmp_path_factory.mktemp("fault-edges"))},
        model_timeout_s=60,
        captioning={"mode": "background"},
        # Far above an ingest here (embedding only), short enough for a test.
        orphan_sweep={"min_age_s": SWEEP_MIN_AGE_S, "interval_s": 1, "initial_delay_s": 0},
    )
    with served(
        ray_session,
        args,
        APP,
        f"/{APP}",
        client_timeout_s=120,
        captioner_options={"user_config": SLOW_BATCH},
        ingress_options={"health_check_period_s": 1},
    ) as deployed:
        yield deployed


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _wait_until(condition: Callable[[], bool], what: str, within_s: float = WITHIN_S) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def _ingress() -> str | None:
    try:
        return replica_name(APP, "Ingress")
    except AssertionError:  # none (or two) while Serve replaces one
        return None


def _sigkill_ingress() -> str:
    """SIGKILL the live Ingress replica's process, found through Ray's actor handle;
    its name. Serve creates replicas with max_restarts=0: its controller notices the
    death at the next health check and starts a new replica."""
    name = _ingress()
    assert name is not None
    actor = ray.get_actor(name, namespace="serve")
    pid: Any = ray.get(actor.__ray_call__.remote(lambda _: os.getpid()), timeout=30)
    os.kill(int(pid), signal.SIGKILL)
    return name


def _replaced(dead: str) -> bool:
    alive = _ingress()
    return alive is not None and alive != dead


def _journal_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _every_record_has_its_blob(deployed: Deployed) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = deployed.client.get("/images", params={"limit": 500}).json()[
        "images"
    ]
    for record in records:
        content = deployed.client.get(f"/images/{record['id']}/content")
        assert content.status_code == 200, (record["id"], content.text)
        assert hashlib.sha256(content.content).hexdigest() == record["sha256"]
    return records


def test_index_survives_two_ingress_kills(
    deployed: Deployed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    images = {folder / f"img{n:02d}.png": _png(1000 + n) for n in range(IMAGES)}
    for path, data in images.items():
        path.write_bytes(data)
    journal = tmp_path / "index.jsonl"
    assert deployed.client.get("/images").json()["total"] == 0

    # Every answer that was not the service's own JSON (the proxy's page), as seen.
    proxy_failures: list[int] = []
    original = cli_client._error_from

    def recording(status: int, body: bytes) -> cli_client.ServiceError:
        error = original(status, body)
        if not error.from_service:
            proxy_failures.append(status)
        return error

    monkeypatch.setattr(cli_client, "_error_from", recording)

    kills: list[str] = []
    done = threading.Event()

    def killer() -> None:
        # Twice, each while uploads are in flight: after 6 and after 20 finished.
        for after in (6, 20):
            while len(_journal_lines(journal)) < after:
                if done.wait(0.02):
                    return
            if kills:
                # The first replacement is up (nothing finishes without one anyway).
                while not _replaced(kills[-1]):
                    if done.wait(0.02):
                        return
            kills.append(_sigkill_ingress())

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        status = main(
            [
                "--url",
                str(deployed.client.base_url).rstrip("/"),
                "index",
                str(folder),
                "--journal",
                str(journal),
                "--concurrency",
                "4",
                "--no-progress",
            ]
        )
    finally:
        done.set()
        thread.join(timeout=60)
    out = capsys.readouterr().out

    assert len(kills) == 2, (kills, out)
    assert status == 0, out
    # The kills reached requests inside the replica, and they were tried again.
    assert proxy_failures and set(proxy_failures) <= set(range(500, 600)), proxy_failures
    # The journal is complete: each image once, indexed (or found there by a retry
    # whose first attempt had stored it before its replica died).
    entries = _journal_lines(journal)
    assert sorted(e["source"] for e in entries) == sorted(str(p) for p in images)
    assert {e["outcome"] for e in entries} <= {"indexed", "exists"}
    expected = {image_id_for(hashlib.sha256(data).hexdigest()) for data in images.values()}
    assert {e["id"] for e in entries} == expected
    # Every image indexed once, with its blob.
    records = _every_record_has_its_blob(deployed)
    assert sorted(r["id"] for r in records) == sorted(expected)
    assert deployed.client.get("/images").json()["total"] == IMAGES


def _no_caption_pending(deployed: Deployed) -> bool:
    answer = deployed.client.get("/images", params={"caption_status": "pending", "limit": 1})
    return answer.status_code == 200 and answer.json()["total"] == 0


def test_the_sweep_removes_what_a_killed_ingest_left(deployed: Deployed) -> None:
    # Nothing else in the Captioner's queue: the upload below waits there alone.
    _wait_until(lambda: _no_caption_pending(deployed), "the caption backlog to drain")
    _wait_until(lambda: _ingress() is not None, "an Ingress replica")
    before = _every_record_has_its_blob(deployed)
    data = _png(5)
    sha = hashlib.sha256(data).hexdigest()
    blob = deployed.data_dir / "blobs" / blob_key_for(sha)

    def upload(client: httpx.Client) -> httpx.Response:
        return client.post(
            "/images",
            files={"file": ("left.png", data, "image/png")},
            data={"wait_for_caption": "true"},
        )

    with ThreadPoolExecutor(1) as pool:
        pending: Future[httpx.Response] = pool.submit(upload, deployed.client)
        _wait_until(lambda: pending.done() or blob.exists(), "the ingest to write its blob")
        assert not pending.done(), pending.result().text
        assert deployed.client.get(f"/images/{image_id_for(sha)}").status_code == 404
        dead = _sigkill_ingress()
        answer = pending.result(timeout=120)
    # What Serve's proxy answers for a request whose replica died (ray-project/ray#47219):
    # not the service's JSON, which is why the clients retry such answers.
    assert answer.status_code == 500, answer.text
    assert not answer.headers.get("content-type", "").startswith("application/json")

    _wait_until(lambda: _replaced(dead), "the Ingress to be replaced")
    assert blob.exists()  # left behind: no record points at it
    assert deployed.client.get(f"/images/{image_id_for(sha)}").status_code == 404

    # The sweep removes it once it is older than min_age_s, and nothing else.
    _wait_until(lambda: not blob.exists(), "the orphan sweep", within_s=SWEEP_MIN_AGE_S + WITHIN_S)
    after = _every_record_has_its_blob(deployed)
    assert [r["id"] for r in after] == [r["id"] for r in before]
    # The blob directory holds exactly the records' blobs (besides their metadata).
    stored = {f.name for f in blob_files(deployed.data_dir) if not f.name.endswith(".json")}
    assert stored == {r["sha256"] for r in after}


# -- the page ------------------------------------------------------------------------------


def test_the_page_retries_a_proxy_500_then_says_the_service_restarted(
    deployed: Deployed, browser: Any
) -> None:
    """The proxy's bare 500 is played by the browser's own request routing: twice, then
    the real answer (the page shows results, no error); then on every try (the page
    gives up and says what happened)."""
    base = str(deployed.client.base_url).rstrip("/")
    page = browser.new_context().new_page()
    page.goto(f"{base}/")
    sent: list[str] = []
    failures = {"left": 2}

    def flaky(route: Any) -> None:
        sent.append(route.request.method)
        if failures["left"] != 0:
            failures["left"] -= 1
            route.fulfill(status=500, body=PROXY_500, content_type="text/plain")
        else:
            route.continue_()

    page.route("**/search/text", flaky)
    page.fill("#query", "a picture")
    with page.expect_response(lambda r: r.url.endswith("/search/text") and r.ok):
        page.press("#query", "Enter")
    assert len(sent) == 3
    assert page.locator("#error").is_hidden()

    sent.clear()
    failures["left"] = -1  # always
    page.press("#query", "Enter")
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=30_000)
    assert "the service restarted, try again" in error.inner_text()
    assert len(sent) == 4  # the first try and three more


# -- models that cannot be loaded -----------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "env", "cause"),
    [
        ("/nonexistent/models/clip-vit", {}, "no such directory"),
        (
            "no-such-org/no-such-clip",
            {"HF_HUB_OFFLINE": "1"},
            "HF_HUB_OFFLINE=1 and the model is not in the local cache",
        ),
    ],
    ids=["missing-dir", "offline-hub-id"],
)
def test_an_unresolvable_model_fails_its_replica_at_once(
    ray_session: str,
    tmp_path: Path,
    model_id: str,
    env: dict[str, str],
    cause: str,
) -> None:
    """Serve gives up after its constructor retries and reports the deployment failed,
    with the replica's one-line reason; serve.run raises it. One try here (Serve's
    default is 3 per replica, each a fresh worker process): the reason is the same."""
    name = f"bad-model-{abs(hash(model_id)) % 10_000}"
    settings = EmbedderSettings(model=ModelSettings(model_id=model_id))
    # An empty cache of its own: nothing the session's other tests left can satisfy it.
    runtime_env = {"env_vars": {**env, "HF_HOME": str(tmp_path / "hf-home")}}
    app = Embedder.options(
        ray_actor_options={"num_cpus": 0, "runtime_env": runtime_env},
        max_constructor_retry_count=1,
    ).bind(settings)
    try:
        with pytest.raises(RuntimeError, match="failed"):
            serve.run(app, name=name, route_prefix=None)
        status = serve.status().applications[name]
        assert status.status == "DEPLOY_FAILED"
        embedder = status.deployments["Embedder"]
        assert embedder.status == "DEPLOY_FAILED"
        # The replica's reason, as Serve reports the deployment: the model, the cause
        # and the fixes.
        assert f"cannot load model {model_id!r}: {cause}" in embedder.message
        for fix in ("local directory", "HF_HOME", "HF_HUB_OFFLINE=1"):
            assert fix in embedder.message
    finally:
        serve.delete(name)
