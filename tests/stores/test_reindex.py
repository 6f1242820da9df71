"""The re-caption / re-embed command on real stores (LanceDB, a local blob directory, S3
through moto's server) with the tiny random models: a second tiny BLIP and a second
tiny CLIP of another dimension stand for the model change."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from transformers import BlipForConditionalGeneration, CLIPConfig, CLIPModel

from deployments.captioner import BlipCaptioner
from deployments.embedder import ClipEmbedder
from deployments.settings import CaptionerSettings, EmbedderSettings
from ingress.core.imaging import DecodedImage, ImageLimits, decode_image
from ingress.core.service import ImageService
from ingress.stores.base import BlobStore, StoreError
from ingress.stores.lancedb import LanceDBVectorStore
from ingress.stores.local_blobs import LocalBlobStore
from ingress.stores.records import ImageRecord
from ingress.stores.s3_blobs import S3BlobStore
from ingress.tools.reindex import (
    EXIT_DONE,
    EXIT_IMAGES_FAILED,
    EXIT_STORE_FAILED,
    EXIT_USAGE,
    main,
)
from tests.stores.s3_backend import (
    moto_s3_endpoint,  # noqa: F401  (a fixture, for pytest)
    unique_bucket,
)
from tests.support.random_weights import TINY_DIM, save_random_blip, save_random_clip

ROOT = Path(__file__).resolve().parents[2]
OTHER_DIM = 24
MAX_NEW_TOKENS = 8


# -- models ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Other weights, another directory: another caption_model.
    return save_random_blip(tmp_path_factory.mktemp("other-blip"), "tiny", seed=1)


@pytest.fixture(scope="module")
def other_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP of another projection dimension: its vectors cannot share a table
    with the first one's."""
    directory = save_random_clip(tmp_path_factory.mktemp("other-clip"), "tiny", seed=1)
    config = CLIPConfig.from_pretrained(directory)
    config.projection_dim = OTHER_DIM
    torch.manual_seed(1)
    CLIPModel(config).eval().save_pretrained(directory)
    return directory


def caption_settings(model_dir: Path) -> dict[str, Any]:
    return {
        "model": {"model_id": str(model_dir.resolve()), "dtype": "float32"},
        "max_new_tokens": MAX_NEW_TOKENS,
    }


def embed_settings(model_dir: Path) -> dict[str, Any]:
    return {"model": {"model_id": str(model_dir.resolve()), "dtype": "float32"}}


_loaded: dict[tuple[str, Path], Any] = {}


def captioner(model_dir: Path) -> BlipCaptioner:
    key = ("blip", model_dir)
    if key not in _loaded:
        _loaded[key] = BlipCaptioner(CaptionerSettings.model_validate(caption_settings(model_dir)))
    return _loaded[key]


def embedder(model_dir: Path) -> ClipEmbedder:
    key = ("clip", model_dir)
    if key not in _loaded:
        _loaded[key] = ClipEmbedder(EmbedderSettings.model_validate(embed_settings(model_dir)))
    return _loaded[key]


class InProcessModels:
    """The service's Models over the plain model classes: records as ingest writes them."""

    def __init__(self, blip: Path, clip: Path) -> None:
        self.captioner = captioner(blip)
        self.embedder = embedder(clip)
        self.caption_model = self.captioner.model_id
        self.embedding_model = self.embedder.model_id

    async def caption(self, pixels: np.ndarray) -> str:
        return self.captioner.caption_many([pixels])[0]

    async def embed_image(self, pixels: np.ndarray) -> np.ndarray:
        return self.embedder.embed_images([pixels])[0]

    async def embed_text(self, text: str) -> np.ndarray:
        return self.embedder.embed_texts([text])[0]


# -- stores and data ------------------------------------------------------------------------


def image(seed: int) -> DecodedImage:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (24 + seed, 40 - seed, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return decode_image(out.getvalue(), ImageLimits())


def expected_caption(blip: Path, seed: int) -> str:
    return captioner(blip).caption_many([image(seed).pixels])[0]


def expected_vector(clip: Path, seed: int) -> np.ndarray:
    return embedder(clip).embed_images([image(seed).pixels])[0]


def lance(data: Path, clip: Path, table: str = "images") -> LanceDBVectorStore:
    model = embedder(clip)
    return LanceDBVectorStore(data / "lancedb", model.model_id, model.dim, table_name=table)


def ingest(
    data: Path, blip: Path, clip: Path, seeds: range, blobs: BlobStore | None = None
) -> dict[int, str]:
    """Images added through the real ingest path; seed -> id."""

    async def run() -> dict[int, str]:
        vectors = lance(data, clip)
        store = blobs or LocalBlobStore(data / "blobs")
        service = ImageService(InProcessModels(blip, clip), vectors, store, ImageLimits())
        try:
            return {
                seed: (await service.add(image(seed), [f"t{seed}"])).record.id for seed in seeds
            }
        finally:
            await vectors.close()

    return asyncio.run(run())


def snapshot(data: Path, clip: Path, table: str = "images") -> dict[str, tuple[ImageRecord, Any]]:
    """Every record of a table with its vector, by id."""

    async def run() -> dict[str, tuple[ImageRecord, Any]]:
        vectors = lance(data, clip, table)
        try:
            page = await vectors.list(1000)
            return {r.id: (r, await vectors.get_vector(r.id)) for r in page.records}
        finally:
            await vectors.close()

    return asyncio.run(run())


def write_config(
    path: Path,
    data: Path,
    blip: Path,
    clip: Path,
    table: str = "images",
    blobs: dict[str, Any] | None = None,
) -> Path:
    storage: dict[str, Any] = {
        "data_dir": str(data),
        "vectors": {"kind": "lancedb", "table": table},
    }
    if blobs is not None:
        storage["blobs"] = blobs
    args = {
        "storage": storage,
        "captioner": caption_settings(blip),
        "embedder": embed_settings(clip),
    }
    document = {"applications": [{"name": "imagesearch", "import_path": "x:y", "args": args}]}
    path.write_text(yaml.safe_dump(document))
    return path


class Calls:
    """Counts the images the tool handed a model class's public batch method, across
    every instance, and the threads the model's forward passes (`forward`, a method of
    the transformers model) ran on."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        cls: type,
        batch_api: str,
        model_cls: type,
        forward: str,
    ) -> None:
        self.images = 0
        self.threads: set[str] = set()
        real_api = getattr(cls, batch_api)

        def counted(model: Any, images: list[np.ndarray]) -> Any:
            self.images += len(images)
            return real_api(model, images)

        real_forward = getattr(model_cls, forward)

        def recorded(model: Any, *args: Any, **kwargs: Any) -> Any:
            self.threads.add(threading.current_thread().name)
            return real_forward(model, *args, **kwargs)

        monkeypatch.setattr(cls, batch_api, counted)
        monkeypatch.setattr(model_cls, forward, recorded)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


# -- captions --------------------------------------------------------------------------------


def test_recaption_after_captioner_change(
    tmp_path: Path,
    data: Path,
    tiny_blip_dir: Path,
    other_blip_dir: Path,
    tiny_clip_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = ingest(data, tiny_blip_dir, tiny_clip_dir, range(5))
    before = snapshot(data, tiny_clip_dir)
    assert {r.caption_model for r, _ in before.values()} == {str(tiny_blip_dir.resolve())}
    config = write_config(tmp_path / "new.yaml", data, other_blip_dir, tiny_clip_dir)
    calls = Calls(
        monkeypatch, BlipCaptioner, "caption_many", BlipForConditionalGeneration, "generate"
    )

    assert main(["captions", "--config", str(config), "--batch-size", "2"]) == EXIT_DONE
    assert calls.images == 5
    # On the model's own thread (deployments.batching.ModelThread), not the executor's.
    assert calls.threads and all(t.startswith("captioner") for t in calls.threads)
    out = capsys.readouterr()
    assert "re-captioned 5 of 5" in out.out
    assert "5/5 records" in out.err and "ETA" in out.err  # progress on stderr
    after = snapshot(data, tiny_clip_dir)
    new_model = str(other_blip_dir.resolve())
    for seed, image_id in ids.items():
        record, vector = after[image_id]
        old_record, old_vector = before[image_id]
        assert record.caption_model == new_model
        assert record.caption == expected_caption(other_blip_dir, seed)
        assert np.array_equal(vector, old_vector)  # vectors untouched
        assert record.model_dump(exclude={"caption", "caption_model"}) == old_record.model_dump(
            exclude={"caption", "caption_model"}
        )
    assert not (data / "reindex").exists() or not any((data / "reindex").iterdir())

    # Everything is current now: a second run walks the store and captions nothing.
    calls.images = 0
    assert main(["captions", "--config", str(config)]) == EXIT_DONE
    assert "re-captioned 0 of 5" in capsys.readouterr().out
    assert calls.images == 0


def test_recaption_resumes_where_an_interrupted_run_stopped(
    tmp_path: Path,
    data: Path,
    tiny_blip_dir: Path,
    other_blip_dir: Path,
    tiny_clip_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ingest(data, tiny_blip_dir, tiny_clip_dir, range(6))
    config = write_config(tmp_path / "new.yaml", data, other_blip_dir, tiny_clip_dir)
    state = tmp_path / "progress.json"
    argv = [
        "captions",
        "--config",
        str(config),
        "--all",
        "--batch-size",
        "2",
        "--state",
        str(state),
    ]
    calls = Calls(
        monkeypatch, BlipCaptioner, "caption_many", BlipForConditionalGeneration, "generate"
    )

    # The store goes away in the middle of the second page (of three).
    real_update = LanceDBVectorStore.update_caption
    updates = 0

    async def failing_update(self: LanceDBVectorStore, *args: Any) -> Any:
        nonlocal updates
        updates += 1
        if updates == 3:
            raise StoreError("disk gone")
        return await real_update(self, *args)

    with monkeypatch.context() as patch:
        patch.setattr(LanceDBVectorStore, "update_caption", failing_update)
        assert main(argv) == EXIT_STORE_FAILED
    err = capsys.readouterr().err
    assert "disk gone" in err and str(state) in err
    saved = json.loads(state.read_text())
    assert saved["walked"] == 2 and saved["changed"] == 2
    assert calls.images == 4  # two pages captioned, one of them not saved

    calls.images = 0
    assert main(argv) == EXIT_DONE
    out = capsys.readouterr()
    assert "resuming from" in out.err
    # --all re-captions every record, yet the first page is not done again.
    assert calls.images == 4
    assert "re-captioned 6 of 6" in out.out
    assert not state.exists()  # a completed run leaves no state
    records = [r for r, _ in snapshot(data, tiny_clip_dir).values()]
    assert {r.caption_model for r in records} == {str(other_blip_dir.resolve())}


def test_recaption_reports_images_it_cannot_read_and_goes_on(
    tmp_path: Path,
    data: Path,
    tiny_blip_dir: Path,
    other_blip_dir: Path,
    tiny_clip_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = ingest(data, tiny_blip_dir, tiny_clip_dir, range(4))
    records = {r.id: r for r, _ in snapshot(data, tiny_clip_dir).values()}
    missing, corrupt = ids[1], ids[2]
    (data / "blobs" / records[missing].blob_key).unlink()
    (data / "blobs" / records[corrupt].blob_key).write_bytes(b"not an image at all")
    config = write_config(tmp_path / "new.yaml", data, other_blip_dir, tiny_clip_dir)

    assert main(["captions", "--config", str(config), "--batch-size", "3"]) == EXIT_IMAGES_FAILED
    out = capsys.readouterr().out
    assert "re-captioned 2 of 4" in out
    assert f"{missing}: blob {records[missing].blob_key} is missing" in out
    assert f"{corrupt}: stored image cannot be decoded" in out
    after = {r.id: r for r, _ in snapshot(data, tiny_clip_dir).values()}
    old_model, new_model = str(tiny_blip_dir.resolve()), str(other_blip_dir.resolve())
    assert {i: r.caption_model for i, r in after.items()} == {
        ids[0]: new_model,
        missing: old_model,
        corrupt: old_model,
        ids[3]: new_model,
    }
    assert after[missing].caption == records[missing].caption


def test_recaption_with_blobs_on_s3(
    tmp_path: Path,
    data: Path,
    tiny_blip_dir: Path,
    other_blip_dir: Path,
    tiny_clip_dir: Path,
    moto_s3_endpoint: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = unique_bucket("reindex")
    s3 = S3BlobStore(bucket, prefix="images", endpoint_url=moto_s3_endpoint, create_bucket=True)
    asyncio.run(s3.ensure_bucket())
    ids = ingest(data, tiny_blip_dir, tiny_clip_dir, range(3), blobs=s3)
    s3_args = {"kind": "s3", "bucket": bucket, "prefix": "images", "endpoint_url": moto_s3_endpoint}
    config = write_config(tmp_path / "s3.yaml", data, other_blip_dir, tiny_clip_dir, blobs=s3_args)

    assert main(["captions", "--config", str(config)]) == EXIT_DONE
    assert "re-captioned 3 of 3" in capsys.readouterr().out
    after = {r.id: r for r, _ in snapshot(data, tiny_clip_dir).values()}
    for seed, image_id in ids.items():
        assert after[image_id].caption == expected_caption(other_blip_dir, seed)


# -- vectors ---------------------------------------------------------------------------------


def test_reembed_into_a_new_table_then_copy_what_was_added(
    tmp_path: Path,
    data: Path,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    other_clip_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = ingest(data, tiny_blip_dir, tiny_clip_dir, range(5))
    source_before = snapshot(data, tiny_clip_dir)
    config = write_config(tmp_path / "new.yaml", data, tiny_blip_dir, other_clip_dir, "images_v2")
    argv = ["vectors", "--config", str(config), "--from-table", "images", "--batch-size", "2"]
    calls = Calls(monkeypatch, ClipEmbedder, "embed_images", CLIPModel, "get_image_features")

    assert main(argv) == EXIT_DONE
    out = capsys.readouterr()
    assert "embedded 5 of 5" in out.out and "ETA" in out.err
    assert calls.threads and all(t.startswith("embedder") for t in calls.threads)
    new_model = str(other_clip_dir.resolve())
    assert asyncio.run(LanceDBVectorStore.recorded_embedding(data / "lancedb", "images_v2")) == (
        new_model,
        OTHER_DIM,
    )
    target = snapshot(data, other_clip_dir, "images_v2")
    assert target.keys() == source_before.keys()
    for seed, image_id in ids.items():
        record, vector = target[image_id]
        old_record, _ = source_before[image_id]
        assert record.embedding_model == new_model
        assert record.model_dump(exclude={"embedding_model"}) == old_record.model_dump(
            exclude={"embedding_model"}
        )
        assert vector.shape == (OTHER_DIM,)
        np.testing.assert_allclose(vector, expected_vector(other_clip_dir, seed), atol=1e-5)
    # The source (what the running service serves) is untouched.
    assert asyncio.run(LanceDBVectorStore.recorded_embedding(data / "lancedb", "images")) == (
        str(tiny_clip_dir.resolve()),
        TINY_DIM,
    )
    source_after = snapshot(data, tiny_clip_dir)
    assert source_after.keys() == source_before.keys()
    for image_id, (record, vector) in source_after.items():
        assert record == source_before[image_id][0]
        assert np.array_equal(vector, source_before[image_id][1])

    # The old service goes on ingesting and deleting; a second run copies only the new.
    added = ingest(data, tiny_blip_dir, tiny_clip_dir, range(5, 7))
    asyncio.run(_delete(lance(data, tiny_clip_dir), ids[0]))
    calls.images = 0
    assert main(argv) == EXIT_DONE
    again = capsys.readouterr().out
    assert "embedded 2 of 6" in again and "4 were in the target already" in again
    assert "1 records are in the target but not in the source" in again
    assert calls.images == 2
    target = snapshot(data, other_clip_dir, "images_v2")
    assert set(target) == set(ids.values()) | set(added.values())
    for seed, image_id in added.items():
        np.testing.assert_allclose(
            target[image_id][1], expected_vector(other_clip_dir, seed), atol=1e-5
        )


async def _delete(store: LanceDBVectorStore, image_id: str) -> None:
    try:
        assert await store.delete(image_id)
    finally:
        await store.close()


def test_reembed_reports_a_missing_blob(
    tmp_path: Path,
    data: Path,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    other_clip_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = ingest(data, tiny_blip_dir, tiny_clip_dir, range(3))
    records = {r.id: r for r, _ in snapshot(data, tiny_clip_dir).values()}
    (data / "blobs" / records[ids[1]].blob_key).unlink()
    config = write_config(tmp_path / "new.yaml", data, tiny_blip_dir, other_clip_dir, "images_v2")

    assert (
        main(["vectors", "--config", str(config), "--from-table", "images"]) == EXIT_IMAGES_FAILED
    )
    out = capsys.readouterr().out
    assert f"{ids[1]}: blob" in out and "embedded 2 of 3" in out
    assert set(snapshot(data, other_clip_dir, "images_v2")) == {ids[0], ids[2]}


@pytest.mark.parametrize(
    "case",
    [
        "same table",
        "target of another model",
        "target of another dim",
        "no source",
        "weaviate option",
    ],
)
def test_vectors_refusals(
    tmp_path: Path,
    data: Path,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    other_clip_dir: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    ingest(data, tiny_blip_dir, tiny_clip_dir, range(2))
    config = write_config(tmp_path / "new.yaml", data, tiny_blip_dir, other_clip_dir, "images_v2")
    argv = ["vectors", "--config", str(config), "--from-table", "images"]
    if case == "same table":
        config = write_config(tmp_path / "new.yaml", data, tiny_blip_dir, other_clip_dir, "images")
        expected = "is the table the config writes to"
    elif case == "target of another model":
        # images_v2 already filled by the old embedder (the config was not changed).
        asyncio.run(_create(lance(data, tiny_clip_dir, "images_v2")))
        expected = "already holds vectors of"
    elif case == "target of another dim":
        model = str(other_clip_dir.resolve())
        asyncio.run(_create(LanceDBVectorStore(data / "lancedb", model, 7, "images_v2")))
        expected = "another model or dimension"
    elif case == "no source":
        argv[-1] = "images_old"
        expected = "no table 'images_old'"
    else:
        argv[-2] = "--from-collection"
        expected = "--from-table"
    before = snapshot(data, tiny_clip_dir)

    assert main(argv) == EXIT_USAGE
    assert expected in capsys.readouterr().err
    after = snapshot(data, tiny_clip_dir)
    assert after.keys() == before.keys()
    if case in ("same table", "no source", "weaviate option"):
        assert not (data / "lancedb" / "images_v2.lance").exists()


async def _create(store: LanceDBVectorStore) -> None:
    try:
        await store.ensure_schema()
    finally:
        await store.close()


def test_usage_errors(
    tmp_path: Path,
    data: Path,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"applications": [{"name": "a", "args": {"storag": {}}}]}))
    assert main(["captions", "--config", str(bad)]) == EXIT_USAGE
    assert "storag" in capsys.readouterr().err
    # No store there yet: nothing is created.
    config = write_config(tmp_path / "c.yaml", data, tiny_blip_dir, tiny_clip_dir)
    assert main(["captions", "--config", str(config)]) == EXIT_USAGE
    assert "cannot open the vector store" in capsys.readouterr().err
    assert not data.exists()
    # A captioner that cannot be loaded.
    ingest(data, tiny_blip_dir, tiny_clip_dir, range(1))
    nowhere = write_config(tmp_path / "m.yaml", data, tmp_path / "no-model", tiny_clip_dir)
    assert main(["captions", "--config", str(nowhere)]) == EXIT_USAGE
    assert "cannot load the captioner" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["captions", "--config", str(config), "--batch-size", "0"])
    assert exited.value.code == EXIT_USAGE


def test_help_through_the_module_entry_point() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for argv in ([], ["captions"], ["vectors"]):
        result = subprocess.run(
            [sys.executable, "-m", "ingress.tools.reindex", *argv, "--help"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "usage: python -m ingress.tools.reindex" in result.stdout
    assert "--from-table" in result.stdout and "--from-collection" in result.stdout


# -- requeue -----------------------------------------------------------------------------


def test_requeue_hands_failed_records_back_to_the_worker(
    tmp_path: Path, tiny_blip_dir: Path, tiny_clip_dir: Path
) -> None:
    data = tmp_path / "data"
    ids = ingest(data, tiny_blip_dir, tiny_clip_dir, range(3))
    failed_id, done_id = ids[0], ids[1]

    async def fail_one() -> None:
        vectors = lance(data, tiny_clip_dir)
        try:
            assert await vectors.requeue_caption(failed_id) is not None
            assert await vectors.fail_caption(failed_id, "RuntimeError: no model") is not None
        finally:
            await vectors.close()

    asyncio.run(fail_one())
    config = write_config(tmp_path / "serve.yaml", data, tiny_blip_dir, tiny_clip_dir)
    assert main(["requeue", "--config", str(config)]) == EXIT_DONE
    records = {r.id: r for r, _ in snapshot(data, tiny_clip_dir).values()}
    assert records[failed_id].caption_status == "pending"
    assert records[failed_id].caption_error is None
    assert records[done_id].caption_status == "done"
    # The old caption stays until the worker writes the new one.
    assert records[failed_id].caption == expected_caption(tiny_blip_dir, 0)

    assert main(["requeue", "--config", str(config), "--all"]) == EXIT_DONE
    statuses = {r.caption_status for r, _ in snapshot(data, tiny_clip_dir).values()}
    assert statuses == {"pending"}
