from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoModel,
    AutoProcessor,
    CLIPModel,
    CLIPProcessor,
    SiglipModel,
    SiglipProcessor,
)

from deployments import model_loading
from deployments.model_loading import load_pretrained, resolve_placement
from deployments.settings import ModelSettings


def test_auto_placement_is_bf16_on_cpus_with_fast_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_loading, "cpu_has_fast_bf16", lambda: True)
    assert resolve_placement("cpu", "auto").dtype == torch.bfloat16
    monkeypatch.setattr(model_loading, "cpu_has_fast_bf16", lambda: False)
    assert resolve_placement("cpu", "auto").dtype == torch.float32


def test_auto_device_is_cpu_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_placement("auto", "float32").device == torch.device("cpu")


def test_explicit_choices_override_auto() -> None:
    assert resolve_placement("cpu", "float16").dtype == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_placement("cpu", "int3")


def test_cuda_requested_without_cuda_fails_loudly() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_placement("cuda", "auto")


@pytest.mark.parametrize(
    ("model_dir", "model_cls", "processor_cls"),
    [
        ("tiny_clip_dir", CLIPModel, CLIPProcessor),
        ("tiny_siglip_dir", SiglipModel, SiglipProcessor),
    ],
)
def test_loads_each_family_from_local_directory_in_requested_dtype(
    request: pytest.FixtureRequest, model_dir: str, model_cls: type[Any], processor_cls: type[Any]
) -> None:
    # Through the Auto classes, as the embedder loads: they pick the family's classes.
    settings = ModelSettings(model_id=str(request.getfixturevalue(model_dir)), dtype="bfloat16")
    model, processor, placement = load_pretrained(AutoModel, AutoProcessor, settings)
    assert placement.dtype == torch.bfloat16
    assert isinstance(model, model_cls)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert not model.training
    assert isinstance(processor, processor_cls)


def test_unknown_model_fails_loudly_without_touching_the_hub(tmp_path: Path) -> None:
    # HF_HUB_OFFLINE=1 is set for the test session: the loader must not try the network.
    settings = ModelSettings(model_id="no-such-org/no-such-model")
    with pytest.raises(RuntimeError, match="cannot load model 'no-such-org/no-such-model'"):
        load_pretrained(CLIPModel, CLIPProcessor, settings)


def test_settings_reject_unknown_keys() -> None:
    with pytest.raises(ValueError):
        ModelSettings.model_validate({"model_id": "x", "dtyp": "float32"})
