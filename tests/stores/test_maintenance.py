"""Finding and removing orphans (ingress.tools.maintenance) on the real embedded stores, with
S3 through moto's server as the second blob backend, and the command end to end."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from ingress.core.imaging import ImageLimits
from ingress.core.service import ImageService
from ingress.settings import LanceDBArgs, StorageArgs, WeaviateArgs
from ingress.stores.base import BlobStore, StoreError
from ingress.stores.lancedb import LanceDBVectorStore
from ingress.stores.local_blobs import LocalBlobStore
from ingress.stores.records import ImageRecord, IndexedImage, blob_key_for, image_id_for
from ingress.stores.s3_blobs import S3BlobStore
from ingress.stores.weaviate import WeaviateVectorStore
from ingress.tools.config import recorded_embedding
from ingress.tools.maintenance import (
    EXIT_CLEAN,
    EXIT_ORPHANS_REMAIN,
    EXIT_USAGE,
    find_orphans,
    main,
    remove_orphan_blobs,
    remove_orphans,
    sha256_of_blob_key,
)
from tests.stores.s3_backend import (
    moto_s3_endpoint,  # noqa: F401  (a fixture, for pytest)
    unique_bucket,
)
from tests.stores.test_ingest_consistency import DIM, _Failing, _image, _Models
from tests.stores.weaviate_fakes import FakeClient, FakeCollections, made_by

ROOT = Path(__file__).resolve().parents[2]
HOUR = 3600.0


@dataclass
class Stores:
    service: ImageService
    vectors: LanceDBVectorStore
    blobs: BlobStore
    backend: str

    @classmethod
    def on(cls, root: Path, blobs: BlobStore | None = None, backend: str = "local") -> Stores:
        """An ImageService over a LanceDB under root and blobs (default: a local directory
        under root)."""
        models = _Models()
        vectors = LanceDBVectorStore(root / "lancedb", models.embedding_model, DIM)
        blobs = blobs or LocalBlobStore(root / "blobs")
        return cls(ImageService(models, vectors, blobs, ImageLimits()), vectors, blobs, backend)

    @property
    def local(self) -> bool:
        return self.backend == "local"

    # moto sets LastModified itself, so an S3 blob cannot be made old: its tests find
    # orphans with a minimum age of zero instead.
    @property
    def min_age_for_old(self) -> float:
        return HOUR if self.local else 0.0

    async def put_orphan(self, seed: int, *, old: bool = True) -> str:
        """The blob of an image that has no record, as a failed clean-up leaves it."""
        image = _image(seed)
        key = blob_key_for(image.sha256)
        await self.blobs.put(key, image.data, image.content_type)
        if old and self.local:
            assert isinstance(self.blobs, LocalBlobStore)
            age_local_blob(self.blobs, key)
        return key


def age_local_blob(blobs: LocalBlobStore, key: str, seconds: float = 2 * HOUR) -> None:
    then = time.time() - seconds
    os.utime(blobs.root / key, (then, then))


@pytest.fixture(params=["local", "s3"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    blobs: BlobStore | None = None
    if request.param == "s3":
        endpoint = request.getfixturevalue("moto_s3_endpoint")
        s3 = S3BlobStore(unique_bucket("maintenance"), endpoint_url=endpoint, create_bucket=True)
        await s3.ensure_bucket()
        blobs = s3
    stores = Stores.on(tmp_path, blobs, request.param)
    try:
        yield stores
    finally:
        await stores.vectors.close()
        await stores.blobs.close()


async def add_images(stores: Stores, *seeds: int) -> list[str]:
    return [(await stores.service.add(_image(seed), tags=[])).record.id for seed in seeds]


async def assert_every_record_has_its_blob(stores: Stores) -> None:
    page = await stores.vectors.list(1000)
    for record in page.records:
        assert await stores.blobs.exists(record.blob_key), record.id


# -- find_orphans / remove_orphan_blobs ----------------------------------------------


async def test_nothing_to_find_in_consistent_stores(stores: Stores) -> None:
    await add_images(stores, 1, 2, 3)
    report = await find_orphans(stores.vectors, stores.blobs, min_age_s=0)
    assert report.clean
    assert (report.records_seen, report.blobs_seen) == (3, 3)
    assert report.recent_unreferenced == [] and report.unrecognised_blobs == []


async def test_an_old_unreferenced_blob_is_found_and_removed(stores: Stores) -> None:
    await add_images(stores, 1, 2, 3)
    orphan = await stores.put_orphan(10)

    report = await find_orphans(stores.vectors, stores.blobs, min_age_s=stores.min_age_for_old)
    assert report.blobs_without_record == [orphan]
    assert report.records_without_blob == []
    assert (report.records_seen, report.blobs_seen) == (3, 4)

    assert await remove_orphan_blobs(report, stores.vectors, stores.blobs) == 1
    assert not await stores.blobs.exists(orphan)
    assert await stores.vectors.count() == 3
    await assert_every_record_has_its_blob(stores)
    after = await find_orphans(stores.vectors, stores.blobs, min_age_s=stores.min_age_for_old)
    assert after.clean and after.blobs_seen == 3


async def test_a_fresh_unreferenced_blob_is_left_alone(stores: Stores) -> None:
    """An ingest in flight has written its blob and not yet its record."""
    await add_images(stores, 1)
    in_flight = await stores.put_orphan(11, old=False)

    report = await find_orphans(stores.vectors, stores.blobs)

    assert report.clean
    assert report.recent_unreferenced == [in_flight]
    assert await remove_orphan_blobs(report, stores.vectors, stores.blobs) == 0
    assert await stores.blobs.exists(in_flight)


async def test_old_and_fresh_orphans_side_by_side(tmp_path: Path) -> None:
    stores = Stores.on(tmp_path)
    vectors, blobs = stores.vectors, stores.blobs
    try:
        await add_images(stores, 1, 2)
        old = await stores.put_orphan(10)
        fresh = await stores.put_orphan(11, old=False)

        report = await find_orphans(vectors, blobs)  # the default minimum age: an hour
        assert report.blobs_without_record == [old]
        assert report.recent_unreferenced == [fresh]
        assert await remove_orphan_blobs(report, vectors, blobs) == 1
        assert not await blobs.exists(old)
        assert await blobs.exists(fresh)
    finally:
        await vectors.close()


async def test_a_record_whose_blob_vanished_is_reported_not_deleted(stores: Stores) -> None:
    kept, broken = await add_images(stores, 1, 2)
    record = await stores.vectors.get(broken)
    assert record is not None
    await stores.blobs.delete(record.blob_key)  # behind the service's back

    report = await find_orphans(stores.vectors, stores.blobs, min_age_s=0)

    assert report.records_without_blob == [broken]
    assert report.blobs_without_record == []
    assert await remove_orphan_blobs(report, stores.vectors, stores.blobs) == 0
    assert await stores.vectors.get(broken) is not None
    assert await stores.vectors.get(kept) is not None


async def test_a_blob_referenced_before_removal_is_kept(stores: Stores) -> None:
    orphan = await stores.put_orphan(12)
    report = await find_orphans(stores.vectors, stores.blobs, min_age_s=stores.min_age_for_old)
    assert report.blobs_without_record == [orphan]

    # A concurrent add of the same bytes writes its record between find and remove
    # (written directly here: the service would also rewrite the blob).
    image = _image(12)
    assert sha256_of_blob_key(orphan) == image.sha256
    models = stores.service.models
    caption, vector = await stores.service.describe(image)
    record = ImageRecord(
        id=image_id_for(image.sha256),
        caption=caption,
        width=image.width,
        height=image.height,
        content_type=image.content_type,
        size_bytes=image.size_bytes,
        sha256=image.sha256,
        created_at=datetime.now(timezone.utc),
        caption_model=models.caption_model,
        embedding_model=models.embedding_model,
    )
    await stores.vectors.upsert([IndexedImage(record, vector)])

    outcome = await remove_orphans(report, stores.vectors, stores.blobs)

    assert outcome.removed == [] and outcome.now_referenced == [orphan]
    assert await stores.blobs.exists(orphan)


async def test_a_blob_rewritten_before_removal_is_kept(tmp_path: Path) -> None:
    """An ingest of the same bytes rewrites the blob before it writes its record."""
    blobs = LocalBlobStore(tmp_path / "blobs")
    vectors = LanceDBVectorStore(tmp_path / "lancedb", _Models.embedding_model, DIM)
    try:
        image = _image(13)
        key = blob_key_for(image.sha256)
        await blobs.put(key, image.data, image.content_type)
        age_local_blob(blobs, key)
        report = await find_orphans(vectors, blobs)
        assert report.blobs_without_record == [key]

        await blobs.put(key, image.data, image.content_type)
        outcome = await remove_orphans(report, vectors, blobs)

        assert outcome.removed == [] and outcome.rewritten == [key]
        assert await blobs.exists(key)
    finally:
        await vectors.close()


async def test_the_blob_store_failing_during_removal_is_reported(stores: Stores) -> None:
    orphan = await stores.put_orphan(14)
    report = await find_orphans(stores.vectors, stores.blobs, min_age_s=stores.min_age_for_old)
    failing = _Failing(stores.blobs)
    failing.fail_on = {"delete"}

    outcome = await remove_orphans(report, stores.vectors, failing)

    assert outcome.failed == [orphan] and outcome.removed == []
    assert await stores.blobs.exists(orphan)


async def test_keys_the_service_never_writes_are_reported_not_deleted(stores: Stores) -> None:
    await stores.blobs.put("notes/readme", b"not an image", "text/plain")
    if stores.local:
        assert isinstance(stores.blobs, LocalBlobStore)
        age_local_blob(stores.blobs, "notes/readme")

    report = await find_orphans(stores.vectors, stores.blobs, min_age_s=stores.min_age_for_old)

    assert report.clean
    assert report.unrecognised_blobs == ["notes/readme"]
    assert await stores.blobs.exists("notes/readme")


async def test_the_issue_scenario_failed_ingest_with_a_failing_blob_store(stores: Stores) -> None:
    """The record write fails, and so does the blob store during the clean-up: the
    ordering keeps records whole, and the cleanup command finds what is left."""
    vectors, blobs = _Failing(stores.vectors), _Failing(stores.blobs)
    service = ImageService(stores.service.models, vectors, blobs, ImageLimits())
    await add_images(stores, 1)
    vectors.fail_on, blobs.fail_on = {"upsert"}, {"delete"}
    image = _image(2)
    with pytest.raises(StoreError):
        await service.add(image, tags=[])
    left = blob_key_for(image.sha256)
    assert await stores.blobs.exists(left)
    if stores.local:
        assert isinstance(stores.blobs, LocalBlobStore)
        age_local_blob(stores.blobs, left)

    report = await find_orphans(stores.vectors, stores.blobs, min_age_s=stores.min_age_for_old)
    assert report.blobs_without_record == [left]
    assert await remove_orphan_blobs(report, stores.vectors, stores.blobs) == 1
    assert (await find_orphans(stores.vectors, stores.blobs, min_age_s=0)).clean


async def test_negative_min_age_is_refused(stores: Stores) -> None:
    with pytest.raises(ValueError):
        await find_orphans(stores.vectors, stores.blobs, min_age_s=-1)


def test_sha256_of_blob_key() -> None:
    sha = "ab" * 32
    assert sha256_of_blob_key(blob_key_for(sha)) == sha
    for key in ("notes/readme", sha, f"cd/{sha}", f"ab/{sha}/x", f"ab/{sha.upper()}"):
        assert sha256_of_blob_key(key) is None


# -- reading the recorded model without loading it ---------------------------------------


async def test_recorded_embedding_of_lancedb(tmp_path: Path) -> None:
    await filled_data_dir(tmp_path)
    storage = StorageArgs(data_dir=tmp_path)
    assert await recorded_embedding(storage) == (_Models.embedding_model, DIM)
    other_table = StorageArgs(data_dir=tmp_path, vectors=LanceDBArgs(table="other"))
    with pytest.raises(StoreError, match="no table 'other'"):
        await recorded_embedding(other_table)


async def test_recorded_embedding_creates_no_database(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no LanceDB database"):
        await recorded_embedding(StorageArgs(data_dir=tmp_path / "nothing-here"))
    assert not (tmp_path / "nothing-here").exists()


def weaviate_storage() -> StorageArgs:
    return StorageArgs(
        vectors=WeaviateArgs(kind="weaviate", url="http://127.0.0.1:8080", collection="Image")
    )


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (made_by("some/model", 512), ("some/model", 512)),
        (None, "no collection 'Image'"),
        (SimpleNamespace(**{**vars(made_by()), "description": "someone else's"}), "not created"),
    ],
    ids=["recorded", "missing", "foreign"],
)
async def test_recorded_embedding_of_weaviate(
    monkeypatch: pytest.MonkeyPatch, existing: Any, expected: Any
) -> None:
    collections = FakeCollections(existing, None)
    client = FakeClient(collections)
    monkeypatch.setattr(WeaviateVectorStore, "_new_client", lambda self: client)
    if isinstance(expected, tuple):
        assert await recorded_embedding(weaviate_storage()) == expected
    else:
        with pytest.raises(StoreError, match=expected):
            await recorded_embedding(weaviate_storage())
    assert collections.created == []  # reading creates nothing
    assert client.closed


# -- the command ----------------------------------------------------------------------


def write_config(path: Path, args: dict[str, Any], name: str = "imagesearch") -> Path:
    document = {
        "applications": [{"name": name, "import_path": "ingress.app:build_app", "args": args}]
    }
    path.write_text(yaml.safe_dump(document))
    return path


async def filled_data_dir(data_dir: Path) -> tuple[str, str]:
    """Two images through the service, an old orphan and a fresh one; their keys."""
    stores = Stores.on(data_dir)
    try:
        await add_images(stores, 1, 2)
        return await stores.put_orphan(10), await stores.put_orphan(11, old=False)
    finally:
        await stores.vectors.close()


def run_command(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "ingress.tools.maintenance", "orphans", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def test_command_end_to_end(tmp_path: Path) -> None:
    old, fresh = await filled_data_dir(tmp_path / "data")
    # Relative, as in serve_config.yaml: resolved against the directory it runs in.
    config = write_config(tmp_path / "serve.yaml", {"storage": {"data_dir": "./data"}})
    bad = write_config(tmp_path / "bad.yaml", {"storage": {"data_dri": "./data"}})

    dry, broken_config = await asyncio.gather(
        asyncio.to_thread(run_command, tmp_path, "--config", str(config)),
        asyncio.to_thread(run_command, tmp_path, "--config", str(bad)),
    )
    assert dry.returncode == EXIT_ORPHANS_REMAIN, dry.stdout + dry.stderr
    assert old in dry.stdout and "dry run" in dry.stdout
    assert fresh not in dry.stdout  # young: only counted
    assert (tmp_path / "data" / "blobs" / old).exists()
    assert broken_config.returncode == EXIT_USAGE, broken_config.stdout + broken_config.stderr
    assert "data_dri" in broken_config.stderr

    deleted = await asyncio.to_thread(run_command, tmp_path, "--config", "serve.yaml", "--delete")
    assert deleted.returncode == EXIT_CLEAN, deleted.stdout + deleted.stderr
    assert "removed 1 of 1" in deleted.stdout
    assert not (tmp_path / "data" / "blobs" / old).exists()
    assert (tmp_path / "data" / "blobs" / fresh).exists()


def run_main(*argv: str) -> int:
    # main() runs its own event loop; from a thread, since the test has one already.
    return main(["orphans", *argv])


async def test_command_exit_codes_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old, _ = await filled_data_dir(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "serve.yaml", {"storage": {"data_dir": "data"}})

    assert await asyncio.to_thread(run_main, "--config", str(config), "--app", "imagesearch") == 1
    # Zero: even the fresh orphan is old enough; both go.
    assert (
        await asyncio.to_thread(run_main, "--config", str(config), "--min-age-s", "0", "--delete")
        == 0
    )
    assert await asyncio.to_thread(run_main, "--config", str(config), "--min-age-s", "0") == 0
    out = capsys.readouterr().out
    assert old in out and "removed 2 of 2" in out

    # A record whose blob went missing: reported, kept, and the status says so.
    vectors = LanceDBVectorStore(tmp_path / "data" / "lancedb", _Models.embedding_model, DIM)
    record = (await vectors.list(1)).records[0]
    await vectors.close()
    (tmp_path / "data" / "blobs" / record.blob_key).unlink()
    assert await asyncio.to_thread(run_main, "--config", str(config), "--delete") == 1
    out = capsys.readouterr().out
    assert record.id in out and "DELETE /images/<id>" in out


async def test_command_on_s3_blobs(
    tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = request.getfixturevalue("moto_s3_endpoint")
    bucket = unique_bucket("command")
    blobs = S3BlobStore(bucket, prefix="images", endpoint_url=endpoint, create_bucket=True)
    stores = Stores.on(tmp_path, blobs, "s3")
    try:
        await blobs.ensure_bucket()
        await add_images(stores, 1)
        orphan = await stores.put_orphan(10)
    finally:
        await stores.vectors.close()
        await blobs.close()
    s3_args = {"kind": "s3", "prefix": "images", "endpoint_url": endpoint}
    config = write_config(
        tmp_path / "serve.yaml",
        {"storage": {"data_dir": str(tmp_path), "blobs": {**s3_args, "bucket": bucket}}},
    )

    assert await asyncio.to_thread(run_main, "--config", str(config), "--min-age-s", "0") == 1
    assert orphan in capsys.readouterr().out
    argv = ("--config", str(config), "--min-age-s", "0", "--delete")
    assert await asyncio.to_thread(run_main, *argv) == 0
    assert "removed 1 of 1" in capsys.readouterr().out

    # The command creates nothing, whatever create_bucket says for the service.
    missing = unique_bucket("missing")
    blobs_args = {**s3_args, "bucket": missing, "create_bucket": True}
    storage = {"data_dir": str(tmp_path), "blobs": blobs_args}
    other = write_config(tmp_path / "other.yaml", {"storage": storage})
    assert await asyncio.to_thread(run_main, "--config", str(other)) == EXIT_USAGE
    assert "cannot open the blob store" in capsys.readouterr().err
    probe = S3BlobStore(missing, endpoint_url=endpoint)
    try:
        with pytest.raises(StoreError, match="does not exist"):
            await probe.ensure_bucket()
    finally:
        await probe.close()


@pytest.mark.parametrize(
    ("content", "argv", "message"),
    [
        (None, (), "cannot read"),
        ("applications: [", (), "not valid YAML"),
        ("proxy_location: HeadOnly\n", (), "no list of `applications`"),
        ("applications: [{name: a}, {name: b}]\n", (), "choose one with --app"),
        ("applications: [{name: a}]\n", ("--app", "b"), "no application 'b'"),
        ("applications: [{name: a, args: {storage: {vectors: {kind: x}}}}]\n", (), "invalid args"),
        ("applications: [{name: a, args: {storage: {data_dir: nowhere}}}]\n", (), "no LanceDB"),
    ],
    ids=["missing", "yaml", "no-apps", "ambiguous", "unknown-app", "invalid", "no-data"],
)
def test_command_usage_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    argv: tuple[str, ...],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "serve.yaml"
    if content is not None:
        config.write_text(content)
    assert run_main("--config", str(config), *argv) == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_command_refuses_a_negative_min_age(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_main("--config", str(tmp_path / "x.yaml"), "--min-age-s", "-5")
    assert exit_info.value.code == EXIT_USAGE
