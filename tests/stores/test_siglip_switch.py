"""Switching the embedder from CLIP to SigLIP, as the README's "Models" section says: a
store filled with CLIP vectors refuses the SigLIP embedder (even at the same width), and
`python -m ingress.reindex vectors` copies it into a new table of SigLIP vectors, which
the SigLIP embedder then opens. On real LanceDB and a local blob directory, with the
tiny random models."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from ingress.settings import StorageArgs
from ingress.stores.base import EmbeddingMismatch
from ingress.stores.factory import open_vector_store
from ingress.stores.lancedb import LanceDBVectorStore
from ingress.tools.reindex import EXIT_DONE, main
from tests.stores.test_reindex import embedder, expected_vector, ingest, snapshot, write_config
from tests.support.tiny_models import TINY_DIM


async def _open_and_close(storage: StorageArgs, model_id: str, dim: int) -> None:
    """What the ingress does with its embedder's model and dim at start."""
    store = await open_vector_store(storage, model_id, dim)
    await store.close()


def test_a_clip_store_refuses_the_siglip_embedder(
    tmp_path: Path, tiny_blip_dir: Path, tiny_clip_dir: Path, tiny_siglip_dir: Path
) -> None:
    data = tmp_path / "data"
    ingest(data, tiny_blip_dir, tiny_clip_dir, range(2))
    siglip = embedder(tiny_siglip_dir)
    # The same width: only the recorded model tells the two apart.
    assert siglip.dim == embedder(tiny_clip_dir).dim == TINY_DIM
    with pytest.raises(EmbeddingMismatch, match="holds vectors of model") as refused:
        asyncio.run(_open_and_close(StorageArgs(data_dir=data), siglip.model_id, siglip.dim))
    assert str(tiny_clip_dir.resolve()) in str(refused.value)
    assert siglip.model_id in str(refused.value)


def test_reembed_from_clip_into_a_siglip_table(
    tmp_path: Path,
    tiny_blip_dir: Path,
    tiny_clip_dir: Path,
    tiny_siglip_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    ids = ingest(data, tiny_blip_dir, tiny_clip_dir, range(3))
    config = write_config(tmp_path / "new.yaml", data, tiny_blip_dir, tiny_siglip_dir, "siglip")

    assert main(["vectors", "--config", str(config), "--from-table", "images"]) == EXIT_DONE
    assert "embedded 3 of 3" in capsys.readouterr().out
    siglip_id = str(tiny_siglip_dir.resolve())
    recorded = asyncio.run(LanceDBVectorStore.recorded_embedding(data / "lancedb", "siglip"))
    assert recorded == (siglip_id, TINY_DIM)
    target = snapshot(data, tiny_siglip_dir, "siglip")
    for seed, image_id in ids.items():
        record, vector = target[image_id]
        assert record.embedding_model == siglip_id
        np.testing.assert_allclose(vector, expected_vector(tiny_siglip_dir, seed), atol=1e-5)
        # Not the CLIP vector copied over.
        assert not np.allclose(vector, expected_vector(tiny_clip_dir, seed), atol=1e-3)
    # The new config's store is what the SigLIP service opens.
    storage = StorageArgs.model_validate(
        {"data_dir": str(data), "vectors": {"kind": "lancedb", "table": "siglip"}}
    )
    asyncio.run(_open_and_close(storage, siglip_id, TINY_DIM))
