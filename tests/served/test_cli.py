"""The `imagesearch` command line against a real local service (real Ray, HTTP, LanceDB
and local blobs, tiny models), with API keys on: indexing folders with broken files,
interrupting and resuming, URL lists, an S3 prefix (moto's server), and the search,
list, delete and status commands."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
from PIL import Image
from ray import serve

from imagesearch_cli import client as cli_client
from imagesearch_cli import journal as cli_journal
from imagesearch_cli.main import main
from tests.conftest import free_port
from tests.stores.s3_backend import moto_s3_endpoint, unique_bucket
from tests.support.image_server import serving
from tests.support.served_app import deploy_graph, tiny_graph_args

__all__ = ["moto_s3_endpoint"]  # the fixture, imported for this module's tests

WRITER = "cli-writer-key-0123456789abcdef"
READER = "cli-reader-key-0123456789abcdef"
KEYS = f"cli-bot:read+write:{WRITER}\ncli-viewer:read:{READER}\n"


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    pixels = np.clip(base + rng.integers(-40, 40, (48, 64, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def _png(seed: int) -> bytes:
    out = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def service(
    ray_session: str,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    args = tiny_graph_args(
        tiny_blip_dir,
        tiny_clip_dir,
        {"data_dir": str(tmp_path_factory.mktemp("cli-data"))},
        intake={"max_upload_bytes": 1024 * 1024},
        auth={"enabled": True, "keys_env": "TEST_CLI_KEYS"},
        # The test's image server is on loopback.
        url_fetch={"allow_private_addresses": True},
    )
    deploy_graph(args, "cli", "/cli", ingress_env={"TEST_CLI_KEYS": KEYS})
    yield f"{ray_session}/cli"
    serve.delete("cli")


@pytest.fixture
def api(service: str) -> Iterator[httpx.Client]:
    """Direct HTTP, to check what the commands did."""
    with httpx.Client(base_url=service, timeout=60, headers={"X-API-Key": WRITER}) as client:
        yield client


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("IMAGESEARCH_API_KEY", raising=False)
    monkeypatch.delenv("IMAGESEARCH_URL", raising=False)
    # The default journal lands in the current folder.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def uploads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The file names of every upload the client sends (retries included)."""
    sent: list[str] = []
    original = cli_client.ApiClient.add_file

    async def counting(self: Any, data: bytes, filename: str, *args: Any) -> Any:
        sent.append(filename)
        return await original(self, data, filename, *args)

    monkeypatch.setattr(cli_client.ApiClient, "add_file", counting)
    return sent


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _summary(out: str) -> str:
    return out.splitlines()[0]


def _failures(out: str) -> dict[str, str]:
    lines = out.split("failures:\n", 1)[1].splitlines() if "failures:\n" in out else []
    return dict(line.strip().split(": ", 1) for line in lines)


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "imagesearch"
    found = str(script) if script.exists() else shutil.which("imagesearch")
    assert found, "the imagesearch console script is not installed: pip install -e ."
    result = subprocess.run([found, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    for command in ("index", "search", "list", "delete", "status"):
        assert command in result.stdout
    usage = subprocess.run([found, "index"], capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "PATH_OR_GLOB" in usage.stderr


def test_index_folder_with_broken_files(
    service: str,
    api: httpx.Client,
    uploads: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "photos"
    (folder / "2024" / "may").mkdir(parents=True)
    good = {
        folder / "a.jpg": _jpeg(1),
        folder / "b.png": _png(2),
        folder / "2024" / "c.jpg": _jpeg(3),
        folder / "2024" / "may" / "d.jpeg": _jpeg(4),
    }
    broken = {
        folder / "truncated.jpg": _jpeg(5)[:400],
        folder / "2024" / "notes.png": b"shopping list: milk, eggs\n",
        folder / "empty.jpg": b"",
    }
    for path, data in {**good, **broken}.items():
        path.write_bytes(data)
    (folder / "readme.md").write_text("not an image name: never sent")
    before = api.get("/images").json()["total"]

    monkeypatch.setenv("IMAGESEARCH_API_KEY", WRITER)
    status, out, _ = run(
        capsys, "--url", service, "index", str(folder), "--tags", "trip, 2024", "--concurrency", "2"
    )
    assert status == 1, out
    assert _summary(out) == "indexed 4, already there 0, skipped 0, failed 3 (of 7)"
    failures = _failures(out)
    assert set(failures) == {str(path) for path in broken}
    assert failures[str(folder / "truncated.jpg")].startswith("400 invalid_image: ")
    assert failures[str(folder / "2024" / "notes.png")].startswith("415 unsupported_media_type: ")
    assert failures[str(folder / "empty.jpg")].startswith("400 invalid_image: image is empty")
    assert sorted(uploads) == sorted(p.name for p in {**good, **broken})
    assert api.get("/images").json()["total"] == before + 4
    record = api.get("/images", params={"limit": 500}).json()["images"]
    tagged = [r for r in record if r["tags"] == ["trip", "2024"]]
    assert len(tagged) == 4

    # Again: the journal says the good ones are done; the broken ones are tried again.
    uploads.clear()
    status, out, _ = run(capsys, "--url", service, "index", str(folder))
    assert status == 1
    assert _summary(out) == "indexed 0, already there 0, skipped 4, failed 3 (of 7)"
    assert sorted(uploads) == sorted(p.name for p in broken)

    # Without the journal, the service says which are there: checked, never uploaded.
    uploads.clear()
    status, out, _ = run(capsys, "index", "--no-journal", str(folder / "*.jpg"), "--url", service)
    assert status == 1
    assert _summary(out) == "indexed 0, already there 1, skipped 0, failed 2 (of 3)"
    assert sorted(uploads) == ["empty.jpg", "truncated.jpg"]
    assert api.get("/images").json()["total"] == before + 4

    # Only the good ones: everything is indexed, exit status 0.
    status, out, _ = run(capsys, "--url", service, "index", *map(str, good))
    assert status == 0, out
    assert _summary(out) == "indexed 0, already there 0, skipped 4, failed 0 (of 4)"


def test_interrupt_and_resume(
    service: str,
    api: httpx.Client,
    uploads: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for n in range(8):
        (folder / f"img{n}.jpg").write_bytes(_jpeg(100 + n))
    journal = tmp_path / "state" / "index.jsonl"

    # Ctrl-C after the third image is done: the real signal, through asyncio's handler.
    finished = 0
    original = cli_journal.Journal.record

    def record_then_interrupt(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal finished
        original(self, *args, **kwargs)
        finished += 1
        if finished == 3:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(cli_journal.Journal, "record", record_then_interrupt)
    argv = ["index", str(folder), "--journal", str(journal), "--concurrency", "1"]
    status, out, err = run(capsys, "--url", service, "--api-key", WRITER, *argv)
    assert status == 130, out + err
    assert "interrupted: run the same command again to resume" in err
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    done = len(entries)
    assert 3 <= done < 8, out
    assert {e["outcome"] for e in entries} == {"indexed"}
    assert _summary(out) == f"indexed {done}, already there 0, skipped 0, failed 0 (of 8)"
    assert f"not done: {8 - done}" in out
    first = {e["id"]: api.get(f"/images/{e['id']}").json()["created_at"] for e in entries}

    monkeypatch.setattr(cli_journal.Journal, "record", original)
    uploads.clear()
    status, out, _ = run(capsys, "--url", service, "--api-key", WRITER, *argv)
    assert status == 0, out
    assert _summary(out) == f"indexed {8 - done}, already there 0, skipped {done}, failed 0 (of 8)"
    assert len(uploads) == 8 - done
    assert {e["source"] for e in entries}.isdisjoint(str(folder / name) for name in uploads)
    for image_id, created_at in first.items():
        assert api.get(f"/images/{image_id}").json()["created_at"] == created_at

    uploads.clear()
    status, out, _ = run(capsys, "--url", service, "--api-key", WRITER, *argv)
    assert (status, uploads) == (0, [])
    assert _summary(out) == "indexed 0, already there 0, skipped 8, failed 0 (of 8)"


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    files = {
        "/one.jpg": (_jpeg(201), "image/jpeg"),
        "/two.png": (_png(202), "image/png"),
        "/page.html": (b"<html><body>not an image</body></html>", "text/html"),
    }
    with serving(files) as base_url:
        yield base_url


def test_index_url_list(
    service: str,
    api: httpx.Client,
    image_server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    listing = tmp_path / "urls.txt"
    listing.write_text(
        "# from the web\n"
        f"{image_server}/one.jpg\n"
        f"{image_server}/two.png\n"
        f"{image_server}/page.html\n"
        "file:///etc/passwd\n"
    )
    monkeypatch.setenv("IMAGESEARCH_API_KEY", WRITER)
    status, out, _ = run(capsys, "--url", service, "index", str(listing), "--tags", "web")
    assert status == 1
    assert _summary(out) == "indexed 2, already there 0, skipped 0, failed 2 (of 4)"
    failures = _failures(out)
    assert failures[f"{image_server}/page.html"].startswith("415 unsupported_media_type: ")
    assert failures[f"{listing}:5"] == "not an http(s) URL: file:///etc/passwd"
    listed = api.get("/images", params={"limit": 500}).json()["images"]
    by_url = {r["source_url"]: r for r in listed if r["source_url"]}
    assert by_url[f"{image_server}/one.jpg"]["tags"] == ["web"]
    assert f"{image_server}/two.png" in by_url

    status, out, _ = run(capsys, "--url", service, "index", str(listing))
    assert _summary(out) == "indexed 0, already there 0, skipped 2, failed 2 (of 4)"
    # Without the journal the service recognises the bytes it fetched.
    status, out, _ = run(capsys, "--url", service, "index", str(listing), "--no-journal")
    assert _summary(out) == "indexed 0, already there 2, skipped 0, failed 2 (of 4)"


def test_index_s3_prefix(
    service: str,
    api: httpx.Client,
    moto_s3_endpoint: str,
    uploads: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = unique_bucket("cli-e2e")
    s3 = boto3.client("s3", endpoint_url=moto_s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    objects = {"shots/x.jpg": _jpeg(301), "shots/deep/y.png": _png(302), "shots/z.csv": b"a,b"}
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    argv = [
        "index",
        f"s3://{bucket}/shots/",
        "--s3-endpoint-url",
        moto_s3_endpoint,
        "--api-key",
        WRITER,
        "--url",
        service,
    ]
    status, out, err = run(capsys, *argv, "--progress")
    assert status == 0, out
    assert _summary(out) == "indexed 2, already there 0, skipped 0, failed 0 (of 2)"
    # The bar is drawn in place on stderr, even though that is not a terminal here.
    assert err.startswith("\r[") and "100%  2/2" in err and "ETA" in err
    assert sorted(uploads) == ["x.jpg", "y.png"]
    journal = Path(cli_journal.DEFAULT_JOURNAL).read_text()
    assert f"s3://{bucket}/shots/x.jpg" in journal
    status, out, _ = run(capsys, *argv)
    assert (status, _summary(out)) == (0, "indexed 0, already there 0, skipped 2, failed 0 (of 2)")


def test_api_keys_from_flag_env_or_missing(
    service: str,
    api: httpx.Client,
    uploads: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    photo = tmp_path / "keyed.jpg"
    photo.write_bytes(_jpeg(401))
    # No key: the run stops at the first refusal instead of failing every file.
    status, out, err = run(capsys, "--url", service, "index", str(photo))
    assert status == 1
    assert "stopped: 401 unauthorized" in err and uploads == []
    status, _, err = run(capsys, "--url", service, "list")
    assert status == 1 and "401 unauthorized" in err and "IMAGESEARCH_API_KEY" in err
    # A read-only key may look, not add.
    status, out, err = run(capsys, "--url", service, "--api-key", READER, "index", str(photo))
    assert status == 1 and "stopped: 403 forbidden" in err
    # The flag wins over the environment.
    monkeypatch.setenv("IMAGESEARCH_API_KEY", READER)
    monkeypatch.setenv("IMAGESEARCH_URL", service)
    status, out, _ = run(capsys, "index", str(photo), "--api-key", WRITER)
    assert (status, _summary(out)) == (0, "indexed 1, already there 0, skipped 0, failed 0 (of 1)")
    assert run(capsys, "list", "--limit", "1")[0] == 0


def test_search_list_delete_status(
    service: str,
    api: httpx.Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("IMAGESEARCH_URL", service)
    monkeypatch.setenv("IMAGESEARCH_API_KEY", WRITER)
    folder = tmp_path / "search"
    folder.mkdir()
    for n in range(3):
        (folder / f"s{n}.jpg").write_bytes(_jpeg(500 + n))
    assert run(capsys, "index", str(folder), "--tags", "searchable")[0] == 0
    ids = {r["id"] for r in api.get("/images", params={"limit": 500}).json()["images"]}
    total = len(ids)

    status, out, _ = run(capsys, "search", "a photo", "--limit", "2")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["score", "id", "caption", "tags"] and len(lines) == 3
    status, out, _ = run(capsys, "search", "a photo", "--limit", "2", "--json")
    assert len(json.loads(out)["results"]) == 2

    status, out, _ = run(capsys, "search", "--image", str(folder / "s1.jpg"), "--json")
    best = json.loads(out)["results"][0]
    assert best["image"]["sha256"] == hashlib.sha256(_jpeg(501)).hexdigest()
    assert best["score"] == pytest.approx(1.0, abs=1e-3)
    status, out, _ = run(capsys, "search", "--similar", best["image"]["id"], "--json")
    assert status == 0 and best["image"]["id"] not in {
        r["image"]["id"] for r in json.loads(out)["results"]
    }

    status, out, _ = run(capsys, "list", "--limit", "2")
    assert status == 0 and f"2 of {total} images; more: imagesearch list --all" in out
    status, out, _ = run(capsys, "list", "--limit", "2", "--all", "--json")
    listed = json.loads(out)
    assert {r["id"] for r in listed["images"]} == ids and listed["total"] == total

    status, out, _ = run(capsys, "status")
    assert status == 0 and f"images      {total}" in out
    status, _, err = run(capsys, "status", "--url", f"http://127.0.0.1:{free_port()}")
    assert status == 1 and "unreachable" in err

    victim = best["image"]["id"]
    status, out, _ = run(capsys, "delete", victim, "no-such-image")
    assert status == 1
    assert out.splitlines() == [f"deleted   {victim}", "not found no-such-image"]
    assert api.get(f"/images/{victim}").status_code == 404
    status, out, _ = run(capsys, "status", "--json")
    assert json.loads(out)["images"] == total - 1

    # Usage errors: exit status 2, nothing sent.
    assert run(capsys, "search")[0] == 2
    assert run(capsys, "search", "cat", "--image", str(folder / "s0.jpg"))[0] == 2
    assert run(capsys, "search", "--image", str(folder / "s0.jpg"), "--hybrid")[0] == 2
    assert run(capsys, "search", "--image", str(tmp_path / "missing.jpg"))[0] == 2
    assert run(capsys, "index", "--concurrency", "0", str(folder))[0] == 2


def test_hybrid_search_and_tag_filters(
    service: str,
    api: httpx.Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("IMAGESEARCH_URL", service)
    monkeypatch.setenv("IMAGESEARCH_API_KEY", WRITER)
    cats, dogs = tmp_path / "cats", tmp_path / "dogs"
    cats.mkdir()
    dogs.mkdir()
    (cats / "c.jpg").write_bytes(_jpeg(601))
    (dogs / "d.jpg").write_bytes(_jpeg(602))
    assert run(capsys, "index", str(cats), "--tags", "cat,pet")[0] == 0
    assert run(capsys, "index", str(dogs), "--tags", "dog,pet")[0] == 0

    def found(*argv: str) -> list[list[str]]:
        status, out, err = run(capsys, "search", *argv, "--limit", "50", "--json")
        assert status == 0, err
        return [r["image"]["tags"] for r in json.loads(out)["results"]]

    assert found("an animal", "--tag", "cat") == [["cat", "pet"]]
    assert found("an animal", "--tag", "pet", "--tag", "dog") == [["dog", "pet"]]
    assert sorted(found("an animal", "--any-tag", "cat", "--any-tag", "dog")) == [
        ["cat", "pet"],
        ["dog", "pet"],
    ]
    assert found("--image", str(cats / "c.jpg"), "--tag", "dog") == [["dog", "pet"]]
    caption = api.get("/images", params={"tags_all": "cat", "limit": 5}).json()["images"][0][
        "caption"
    ]
    status, out, _ = run(capsys, "search", caption, "--hybrid", "--alpha", "0", "--json")
    assert status == 0
    results = json.loads(out)["results"]
    assert results and all("keyword" in r["matched"] for r in results)
    status, out, _ = run(capsys, "list", "--tag", "dog", "--json")
    assert [r["tags"] for r in json.loads(out)["images"]] == [["dog", "pet"]]


def test_search_with_not_terms_and_several_examples(
    service: str,
    api: httpx.Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("IMAGESEARCH_URL", service)
    monkeypatch.setenv("IMAGESEARCH_API_KEY", WRITER)
    sent: list[tuple[str, dict[str, Any]]] = []
    original = cli_client.ApiClient.search

    async def recording(self: Any, kind: str, body: Any) -> Any:
        sent.append((kind, dict(body)))
        return await original(self, kind, body)

    monkeypatch.setattr(cli_client.ApiClient, "search", recording)
    folder = tmp_path / "examples"
    folder.mkdir()
    for n in range(4):
        (folder / f"e{n}.jpg").write_bytes(_jpeg(700 + n))
    assert run(capsys, "index", str(folder), "--tags", "examples")[0] == 0
    listed = api.get("/images", params={"tags_all": "examples", "limit": 10}).json()["images"]
    a, b, c = (image["id"] for image in listed[:3])

    def search(*argv: str) -> list[str]:
        status, out, err = run(capsys, "search", *argv, "--limit", "50", "--json")
        assert status == 0, err
        return [r["image"]["id"] for r in json.loads(out)["results"]]

    plain = search("a photo", "--tag", "examples")
    assert sent[-1] == (
        "text",
        {"query": "a photo", "limit": 50, "filters": {"tags_all": ["examples"]}},
    )
    away = search("a photo", "--not", "people", "--not", "umbrella", "--not-weight", "2")
    assert sent[-1][1]["query"] == [
        {"text": "a photo", "weight": 1.0},
        {"text": "people", "weight": -2.0},
        {"text": "umbrella", "weight": -2.0},
    ]
    assert plain and away
    search("a photo", "--not", "people", "--hybrid")
    assert sent[-1][1]["query"][1] == {"text": "people", "weight": -0.5}
    assert sent[-1][1]["mode"] == "hybrid"

    found = search("--similar", a, "--similar", b)
    assert sent[-1] == ("similar", {"ids": [a, b], "limit": 50})
    assert found and not {a, b} & set(found)
    found = search("--similar", a, "--not-similar", c)
    assert sent[-1][1] == {"ids": [a], "negative_ids": [c], "limit": 50}
    assert not {a, c} & set(found)
    search("--similar", a)
    assert sent[-1][1] == {"id": a, "limit": 50}

    status, _, err = run(capsys, "search", "--similar", a, "--similar", "no-such-image")
    assert status == 1 and "404 not_found" in err and "no-such-image" in err
    status, _, err = run(capsys, "search", "a photo", "--not", "a photo", "--not-weight", "1")
    assert status == 1 and "422 validation_error" in err and "cancel" in err
    # Usage errors: exit status 2, nothing sent.
    before = len(sent)
    assert run(capsys, "search", "--not", "people")[0] == 2
    assert run(capsys, "search", "--image", str(folder / "e0.jpg"), "--not", "people")[0] == 2
    assert run(capsys, "search", "--not-similar", a)[0] == 2
    assert run(capsys, "search", "a photo", "--similar", a)[0] == 2
    for weight in ("0", "-1", "11", "nan", "heavy"):
        assert run(capsys, "search", "a photo", "--not", "x", "--not-weight", weight)[0] == 2
    assert len(sent) == before
