"""SDPA in BLIP's vision attention computes what the eager implementation computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BlipForConditionalGeneration, CLIPModel
from transformers.models.blip.modeling_blip import BlipAttention

from deployments.captioner import BlipCaptioner
from deployments.fast_attention import _sdpa_forward, use_sdpa_in_blip_vision


def _attention_layers(model: torch.nn.Module) -> list[BlipAttention]:
    return [m for m in model.modules() if isinstance(m, BlipAttention)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdpa_matches_eager(tiny_blip_dir: Path, dtype: torch.dtype) -> None:
    model = BlipForConditionalGeneration.from_pretrained(tiny_blip_dir, dtype=dtype).eval()
    layers = _attention_layers(model)
    width = model.config.vision_config.hidden_size
    hidden = torch.randn(3, 17, width, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.inference_mode():
        eager = [layer(hidden)[0] for layer in layers]
    assert use_sdpa_in_blip_vision(model) == len(layers) > 0
    with torch.inference_mode():
        fused = [layer(hidden)[0] for layer in layers]
    tolerance = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}
    for got, want in zip(fused, eager, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, **tolerance)  # type: ignore[arg-type]


def test_whole_encoder_output_is_unchanged(tiny_blip_dir: Path) -> None:
    model = BlipForConditionalGeneration.from_pretrained(tiny_blip_dir).eval()
    size = model.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        eager = model.vision_model(pixel_values=pixels).last_hidden_state
        use_sdpa_in_blip_vision(model)
        fused = model.vision_model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-5)


def test_other_models_are_left_alone(tiny_clip_dir: Path) -> None:
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    assert use_sdpa_in_blip_vision(model) == 0


def test_the_captioner_runs_with_sdpa(tiny_blip_dir: Path) -> None:
    captioner = BlipCaptioner({"model": {"model_id": str(tiny_blip_dir)}})
    layers = _attention_layers(captioner.model)
    assert layers and all(layer.forward.__func__ is _sdpa_forward for layer in layers)  # type: ignore[attr-defined]
