from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, CLIPProcessor

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


def test_loads_from_local_directory_in_requested_dtype(tiny_clip_dir: Path) -> None:
    settings = ModelSettings(model_id=str(tiny_clip_dir), dtype="bfloat16")
    model, processor, placement = load_pretrained(CLIPModel, CLIPProcessor, settings)
    assert placement.dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.bfloat16
    assert not model.training
    assert isinstance(processor, CLIPProcessor)


def test_unknown_model_fails_loudly_without_touching_the_hub(tmp_path: Path) -> None:
    # HF_HUB_OFFLINE=1 is set for the test session: the loader must not try the network.
    settings = ModelSettings(model_id="no-such-org/no-such-model")
    with pytest.raises(RuntimeError, match="could not load CLIPModel"):
        load_pretrained(CLIPModel, CLIPProcessor, settings)


def test_settings_reject_unknown_keys() -> None:
    with pytest.raises(ValueError):
        ModelSettings.model_validate({"model_id": "x", "dtyp": "float32"})
