"""`imagesearch-bulk` on the session's Ray (tiny models, real LanceDB and local blobs):
a folder with good, broken and duplicate files; an S3 prefix on moto's server and a URL
list from a loopback server; a run killed mid-way and resumed; and a bulk run beside
HTTP uploads of an overlapping set into a running service, which then finds the
images by image search."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from ingress.settings import AppArgs
from ingress.stores.records import image_id_for
from ingress.tools.bulk.cli import EXIT_DONE, EXIT_FAILED, main
from tests.stores.s3_backend import DUMMY_AWS_ENV, moto_s3_endpoint, unique_bucket
from tests.support.image_server import serving
from tests.support.served_app import blob_files, served, tiny_graph_args

__all__ = ["moto_s3_endpoint"]  # the fixture, imported for this module's tests

ROOT = Path(__file__).resolve().parents[2]
# Small shares of the session's 2 CPUs: the test service's replicas take none.
SMALL = ["--cpus-per-decoder", "0.25", "--cpus-per-embedder", "0.25", "--no-progress"]


def _png(seed: int) -> bytes:
    out = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (36, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _id(data: bytes) -> str:
    import hashlib

    return image_id_for(hashlib.sha256(data).hexdigest())


def _config(path: Path, args: AppArgs) -> Path:
    """A serve config whose one application has args: what the service deploys."""
    document = {
        "applications": [
            {
                "name": "app",
                "import_path": "ingress.app:build_app",
                "args": args.model_dump(mode="json"),
            }
        ]
    }
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def args(tiny_blip_dir: Path, tiny_clip_dir: Path, tmp_path: Path) -> AppArgs:
    return tiny_graph_args(
        tiny_blip_dir,
        tiny_clip_dir,
        {"data_dir": str(tmp_path / "data")},
        # The tests' image servers are on loopback.
        url_fetch={"allow_private_addresses": True, "read_timeout_s": 120, "total_timeout_s": 150},
        intake={"max_upload_bytes": 64 * 1024},
    )


def _records(data_dir: Path) -> list[dict[str, Any]]:
    import lancedb

    table = lancedb.connect(str(data_dir / "lancedb")).open_table("images")
    return table.to_arrow().select(["id", "caption_status", "source_url"]).to_pylist()


def _bulk(capsys: pytest.CaptureFixture[str], *argv: str, **kwargs: Any) -> tuple[int, str]:
    status = main([*argv, *SMALL], **kwargs)
    return status, capsys.readouterr().out


def test_folder_with_good_broken_and_duplicate_files(
    ray_session: str, args: AppArgs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    good = {f"{i}.png": _png(i) for i in range(5)}
    for name, data in good.items():
        (folder / ("sub" if name == "4.png" else "") / name).write_bytes(data)
    (folder / "copy-of-0.png").write_bytes(good["0.png"])
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.gif").write_bytes(b"plain text with an image name")
    (folder / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(70 * 1024))
    config, report = _config(tmp_path / "config.yaml", args), tmp_path / "report.json"

    status, out = _bulk(capsys, str(folder), "--config", str(config), "--report", str(report))

    assert status == EXIT_FAILED, out
    summary = json.loads(report.read_text())
    assert (summary["indexed"], summary["already_there"], summary["failed"]) == (5, 1, 3)
    reasons = {Path(f["source"]).name: f["reason"] for f in summary["failures"]}
    assert set(reasons) == {"broken.jpg", "notes.gif", "huge.png"}
    assert "corrupt" in reasons["broken.jpg"] or "cannot be read" in reasons["broken.jpg"]
    assert "not an accepted image format" in reasons["notes.gif"]
    assert "limit" in reasons["huge.png"]
    (duplicate,) = summary["duplicates"]
    assert {Path(duplicate["source"]).name, Path(duplicate["reason"].split()[-1]).name} == {
        "0.png",
        "copy-of-0.png",
    }
    records = _records(args.storage.data_dir)
    assert sorted(r["id"] for r in records) == sorted(_id(d) for d in good.values())
    # Background captions: the service's caption worker fills them in.
    assert {r["caption_status"] for r in records} == {"pending"}
    assert len(blob_files(args.storage.data_dir)) == 2 * len(good)  # bytes + metadata each

    status, out = _bulk(capsys, str(folder), "--config", str(config), "--report", str(report))
    summary = json.loads(report.read_text())
    assert status == EXIT_FAILED
    assert (summary["indexed"], summary["already_there"], summary["failed"]) == (0, 6, 3)
    assert len(_records(args.storage.data_dir)) == len(good)


def test_s3_prefix_and_url_list_captioned_inline(
    ray_session: str,
    moto_s3_endpoint: str,
    args: AppArgs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = unique_bucket("bulk")
    s3 = boto3.client("s3", endpoint_url=moto_s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    objects = {f"batch/{i}.png": _png(100 + i) for i in range(3)}
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    s3.put_object(Bucket=bucket, Key="elsewhere/9.png", Body=_png(109))
    served_files = {f"/{i}.png": (_png(200 + i), "image/png") for i in range(2)}
    config, report = _config(tmp_path / "config.yaml", args), tmp_path / "report.json"
    with serving(served_files) as base:
        urls = tmp_path / "urls.txt"
        urls.write_text(
            "# two images and a missing one\n"
            + "".join(f"{base}{path}\n" for path in served_files)
            + f"{base}/gone.png\nftp://example.com/x.png\n"
        )
        status, out = _bulk(
            capsys,
            f"s3://{bucket}/batch/",
            str(urls),
            "--config",
            str(config),
            "--s3-endpoint-url",
            moto_s3_endpoint,
            "--report",
            str(report),
            "--captions",
            "inline",
            # The session's Ray workers started before moto's dummy credentials were set.
            worker_env=dict(DUMMY_AWS_ENV),
        )
    summary = json.loads(report.read_text())
    assert status == EXIT_FAILED, out
    assert (summary["indexed"], summary["failed"]) == (5, 2)
    reasons = {f["source"]: f["reason"] for f in summary["failures"]}
    assert "404" in reasons[f"{base}/gone.png"] or "fetch" in reasons[f"{base}/gone.png"]
    assert any("not an http(s) URL" in why for why in reasons.values())
    records = {r["id"]: r for r in _records(args.storage.data_dir)}
    expected = [*objects.values(), *(data for data, _ in served_files.values())]
    assert set(records) == {_id(d) for d in expected}
    for path, (data, _) in served_files.items():
        assert records[_id(data)]["source_url"] == f"{base}{path}"
    # Captioned in the job, by its captioner actor.
    assert {r["caption_status"] for r in records.values()} == {"done"}


@contextmanager
def _held_image(data: bytes) -> Iterator[tuple[str, threading.Event]]:
    """A loopback server whose one image is answered only once the event is set."""
    release = threading.Event()

    class Held(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            release.wait(120)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Held)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/held.png", release
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_a_run_killed_mid_way_resumes_with_what_is_missing(
    ray_session: str, args: AppArgs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    folder = tmp_path / "photos"
    folder.mkdir()
    files = [_png(300 + i) for i in range(4)]
    for i, data in enumerate(files):
        (folder / f"{i}.png").write_bytes(data)
    held = _png(399)
    config, report = _config(tmp_path / "config.yaml", args), tmp_path / "report.json"
    with _held_image(held) as (url, release):
        (tmp_path / "urls.txt").write_text(url + "\n")
        named = [str(folder), str(tmp_path / "urls.txt"), "--config", str(config)]
        # One source per block and per batch: the held URL holds up no file.
        argv = [*named, *SMALL, "--sources-per-block", "1", "--embed-batch-size", "1"]
        argv += ["--write-batch-size", "1"]
        argv += ["--report", str(report)]
        env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
        job = subprocess.Popen(
            [sys.executable, "-m", "ingress.tools.bulk", *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and job.poll() is None:
                if (args.storage.data_dir / "lancedb").exists():
                    try:
                        if len(_records(args.storage.data_dir)) == len(files):
                            break
                    except (OSError, ValueError):
                        pass  # the table is being created
                time.sleep(0.5)
            assert job.poll() is None, "the job ended before it could be killed"
            assert len(_records(args.storage.data_dir)) == len(files)
        finally:
            if job.poll() is None:
                os.kill(job.pid, signal.SIGKILL)
            job.wait(30)
        assert not report.exists()  # killed: no report, no summary
        release.set()
        status, out = _bulk(capsys, *named, "--report", str(report))
    summary = json.loads(report.read_text())
    assert status == EXIT_DONE, out
    assert (summary["indexed"], summary["already_there"], summary["failed"]) == (1, 4, 0)
    assert sorted(r["id"] for r in _records(args.storage.data_dir)) == sorted(
        _id(d) for d in [*files, held]
    )


def test_bulk_beside_http_uploads_then_search_by_image(
    ray_session: str, args: AppArgs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uploaded = [_png(400 + i) for i in range(6)]  # A and B
    bulk_only = [_png(500 + i) for i in range(3)]  # C
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, data in enumerate([*uploaded[3:], *bulk_only]):  # B and C
        (folder / f"{i}.png").write_bytes(data)
    config, report = _config(tmp_path / "config.yaml", args), tmp_path / "report.json"
    with served(ray_session, args, "bulk", "/bulk") as app:
        statuses: list[int] = []

        def upload() -> None:
            with httpx.Client(base_url=f"{ray_session}/bulk", timeout=120) as client:
                for i, data in enumerate(uploaded):
                    files = {"file": (f"{i}.png", data, "image/png")}
                    statuses.append(client.post("/images", files=files).status_code)

        uploads = threading.Thread(target=upload)
        uploads.start()
        status, out = _bulk(capsys, str(folder), "--config", str(config), "--report", str(report))
        uploads.join(300)
        assert status == EXIT_DONE, out
        assert set(statuses) <= {200, 201} and len(statuses) == len(uploaded)

        listed = app.client.get("/images", params={"limit": 100}).json()
        ids = [image["id"] for image in listed["images"]]
        everything = {_id(d) for d in [*uploaded, *bulk_only]}
        assert len(ids) == len(set(ids)) == listed["total"] == len(everything)
        assert set(ids) == everything
        assert len(blob_files(args.storage.data_dir)) == 2 * len(everything)

        # The running service finds what the job indexed, by the image itself.
        target = bulk_only[1]
        found = app.client.post(
            "/search/image", files={"file": ("q.png", target, "image/png")}, data={"limit": "3"}
        )
        assert found.status_code == 200, found.text
        best = found.json()["results"][0]
        assert best["image"]["id"] == _id(target)
        assert best["score"] == pytest.approx(1.0, abs=1e-3)
