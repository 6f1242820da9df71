"""Which family a checkpoint belongs to, and the family facts that the embedder tests
(tests/unit/test_model_deployments.py, run on both families) do not show directly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoProcessor

from deployments import embedder as embedder_module
from deployments.embedder import DualEncoderEmbedder
from deployments.embedder_families import CLIP, SIGLIP, family_of
from deployments.model_loading import resolve_placement
from deployments.settings import EmbedderSettings
from tests.support.tiny_models import TINY_SIGLIP_TEXT_TOKENS, build_tiny_siglip_sentencepiece

TEXTS = ["dog", "a photo of a blue car in the sky"]


def _settings(model_dir: Path) -> EmbedderSettings:
    return EmbedderSettings.model_validate(
        {"model": {"model_id": str(model_dir), "dtype": "float32"}}
    )


@pytest.mark.parametrize(
    ("model_type", "family"),
    [("clip", CLIP), ("metaclip_2", CLIP), ("siglip", SIGLIP)],
)
def test_family_by_model_type(model_type: str, family: object) -> None:
    assert family_of(model_type) is family


@pytest.mark.parametrize("model_type", ["blip", "siglip2", "bert", ""])
def test_other_model_types_are_refused_naming_the_supported_ones(model_type: str) -> None:
    with pytest.raises(ValueError, match="not a supported dual encoder") as refused:
        family_of(model_type)
    assert "clip, metaclip_2, siglip" in str(refused.value)


def test_a_captioner_directory_is_no_embedder(tiny_blip_dir: Path) -> None:
    # BLIP has get_image_features too, but its space is not a retrieval one.
    with pytest.raises(RuntimeError, match="model_type 'blip' is not a supported dual encoder"):
        DualEncoderEmbedder(_settings(tiny_blip_dir))


def test_siglip_texts_are_ids_only_padded_to_the_maximum(tiny_siglip_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_siglip_dir, local_files_only=True)
    inputs = SIGLIP.encode_texts(
        processor, TEXTS, TINY_SIGLIP_TEXT_TOKENS, resolve_placement("cpu", "float32")
    )
    assert set(inputs) == {"input_ids"}
    assert inputs["input_ids"].shape == (len(TEXTS), TINY_SIGLIP_TEXT_TOKENS)


def test_clip_texts_are_padded_to_the_longest_with_a_mask(tiny_clip_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_clip_dir, local_files_only=True)
    inputs = CLIP.encode_texts(processor, TEXTS, 32, resolve_placement("cpu", "float32"))
    assert set(inputs) == {"input_ids", "attention_mask"}
    # One token a character, plus start and end: the longer text sets the width.
    assert inputs["input_ids"].shape == (len(TEXTS), len(TEXTS[1].replace(" ", "")) + 2)
    assert inputs["attention_mask"][0].sum() == len("dog") + 2


@pytest.mark.parametrize("model_dir", ["tiny_clip_dir", "tiny_siglip_dir"])
def test_a_family_misreading_the_dimension_fails_the_start(
    request: pytest.FixtureRequest, model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = request.getfixturevalue(model_dir)
    real_family_of = embedder_module.family_of

    def misreading(model_type: str) -> object:
        return dataclasses.replace(real_family_of(model_type), dimension=lambda config: 99)

    monkeypatch.setattr(embedder_module, "family_of", misreading)
    with pytest.raises(
        RuntimeError, match=r"its config gives dim 99, its towers vectors of \[16\]"
    ):
        DualEncoderEmbedder(_settings(directory))


def test_siglip_with_its_sentencepiece_tokenizer(tmp_path: Path) -> None:
    # SigLIP 1 checkpoints, the multilingual ones included, ship this tokenizer.
    pytest.importorskip("sentencepiece", reason="SigLIP 1 tokenizers need sentencepiece")
    model = DualEncoderEmbedder(_settings(build_tiny_siglip_sentencepiece(tmp_path / "spm")))
    assert model.family is SIGLIP
    assert type(model.processor.tokenizer).__name__ == "SiglipTokenizer"
    texts = ["ein roter Hund", "une photo d'un chien rouge sur l'herbe"]
    alone = [model.embed_texts([text])[0] for text in texts]
    together = model.embed_texts(texts)
    for single, batched in zip(alone, together, strict=True):
        np.testing.assert_allclose(single, batched, atol=1e-5)
    assert float(alone[0] @ alone[1]) < 0.9999
