"""The tensor preprocessing against the Hugging Face image processors it stands in for.

Tolerance, in normalised units (what the model sees): every value within 3 uint8
levels of the processor's (3 / 255 / the smallest std, ~0.045 for CLIP's std), and the
mean absolute difference below 0.005. Both paths resize to uint8 levels; they differ
by a level where PIL's and torch's fixed-point filter weights round differently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    BlipImageProcessor,
    CLIPImageProcessor,
    SiglipImageProcessor,
)

from deployments.captioner import BlipCaptioner
from deployments.embedder import ClipEmbedder
from deployments.model_loading import Placement
from deployments.preprocessing import (
    PixelRecipe,
    ProcessorPreprocessor,
    TensorPreprocessor,
    UnsupportedProcessor,
    pixel_pipeline,
)
from tests.support.random_weights import save_random_clip

CPU = Placement(torch.device("cpu"), torch.float32)
LEVELS = 3
MEAN_TOLERANCE = 0.005


def _photo(seed: int, height: int, width: int) -> np.ndarray:
    """Smooth content plus noise, like a photo (pure noise would make every resize
    filter disagree at every pixel)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    smooth = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    noise = rng.integers(-12, 13, (height, width, 3))
    return np.clip(np.asarray(smooth, dtype=np.int16) + noise, 0, 255).astype(np.uint8)


# Landscape, portrait, square, tiny (upscaled), extreme aspect ratios, odd sides; two
# of one size, so that a batched resize group is exercised.
SIZES = [(384, 512), (384, 512), (512, 341), (224, 224), (31, 47), (1000, 40), (57, 1003)]
IMAGES = [_photo(seed, h, w) for seed, (h, w) in enumerate(SIZES)]


def _assert_close(expected: torch.Tensor, actual: torch.Tensor, std: list[float]) -> None:
    assert actual.shape == expected.shape
    difference = (expected.float() - actual.float()).abs()
    assert difference.max().item() <= LEVELS / 255 / min(std) + 1e-6
    assert difference.mean().item() < MEAN_TOLERANCE


def _compare(image_processor: Any, tensor: TensorPreprocessor | None = None) -> None:
    expected = ProcessorPreprocessor(image_processor, CPU)(IMAGES)
    actual = (tensor or pixel_pipeline(image_processor, CPU, "tensor"))(IMAGES)
    _assert_close(expected, actual, list(image_processor.image_std))


FULL_SIZE = {
    # The default models' processors: CLIP shortest side 224, bicubic, centre crop;
    # BLIP 384 x 384 bicubic; SigLIP 224 x 224 bicubic, mean and std 0.5.
    "clip": CLIPImageProcessor(),
    "blip": BlipImageProcessor(size={"height": 384, "width": 384}),
    "siglip": SiglipImageProcessor(),
}


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_processors_within_tolerance(name: str) -> None:
    _compare(FULL_SIZE[name])


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_the_float_resize_cuda_runs_is_within_tolerance_too(name: str) -> None:
    # CUDA resizes in float32 and rounds; the same code runs here on the CPU.
    tensor = pixel_pipeline(FULL_SIZE[name], CPU, "tensor")
    assert isinstance(tensor, TensorPreprocessor)
    tensor.float_resize = True
    _compare(FULL_SIZE[name], tensor)


def test_tiny_model_processors_within_tolerance(tiny_clip_dir: Path, tiny_blip_dir: Path) -> None:
    for directory in (tiny_clip_dir, tiny_blip_dir):
        _compare(AutoImageProcessor.from_pretrained(directory))


def test_recipe_reads_each_processor_s_own_numbers() -> None:
    clip = PixelRecipe.of(FULL_SIZE["clip"])
    assert (clip.shortest_edge, clip.resize_to, clip.crop) == (224, None, (224, 224))
    assert clip.interpolation == "bicubic"
    blip = PixelRecipe.of(FULL_SIZE["blip"])
    assert (blip.shortest_edge, blip.resize_to, blip.crop) == (None, (384, 384), None)
    siglip = PixelRecipe.of(FULL_SIZE["siglip"])
    # mean = std = 0.5: x / 255 / 0.5 - 1
    assert siglip.scale == pytest.approx((2 / 255,) * 3)
    assert siglip.shift == pytest.approx((-1.0,) * 3)
    bilinear = PixelRecipe.of(CLIPImageProcessor(resample=2))
    assert bilinear.interpolation == "bilinear"
    _compare(CLIPImageProcessor(resample=2))


@pytest.mark.parametrize(
    "processor",
    [
        CLIPImageProcessor(resample=1),  # LANCZOS
        CLIPImageProcessor(do_center_crop=False),  # outputs of many sizes
        CLIPImageProcessor(crop_size={"height": 256, "width": 256}),  # the processor pads
        BlipImageProcessor(do_resize=False),
    ],
)
def test_what_it_cannot_reproduce_keeps_the_processor(processor: Any) -> None:
    with pytest.raises(UnsupportedProcessor):
        pixel_pipeline(processor, CPU, "tensor")
    assert isinstance(pixel_pipeline(processor, CPU, "auto"), ProcessorPreprocessor)


def test_output_is_in_the_placement_dtype() -> None:
    pixels = pixel_pipeline(FULL_SIZE["clip"], Placement(torch.device("cpu"), torch.bfloat16))(
        IMAGES[:2]
    )
    assert pixels.dtype == torch.bfloat16
    assert pixels.is_contiguous()


def _ranking(embedder: ClipEmbedder) -> tuple[np.ndarray, np.ndarray]:
    vectors = np.stack(embedder.embed_images(IMAGES))
    return vectors, np.argsort(-(vectors @ vectors[0]))


def _same_ranking(model_dir: Path) -> None:
    by_path = {
        choice: ClipEmbedder({"model": {"model_id": str(model_dir), "preprocess": choice}})
        for choice in ("tensor", "processor")
    }
    assert {name: e._pixels.kind for name, e in by_path.items()} == {
        "tensor": "tensor",
        "processor": "processor",
    }
    (tensor_vectors, tensor_order), (hf_vectors, hf_order) = (
        _ranking(by_path["tensor"]),
        _ranking(by_path["processor"]),
    )
    assert tensor_order.tolist() == hf_order.tolist()
    cosines = (tensor_vectors * hf_vectors).sum(axis=1)
    assert cosines.min() > 0.999


def test_same_ranking_as_the_processor_on_the_tiny_model(tiny_clip_dir: Path) -> None:
    _same_ranking(tiny_clip_dir)


def test_same_ranking_as_the_processor_on_the_full_size_model(tmp_path: Path) -> None:
    _same_ranking(save_random_clip(tmp_path / "clip-base", "base"))


def test_auto_uses_the_tensor_path_in_both_model_classes(
    tiny_clip_dir: Path, tiny_blip_dir: Path
) -> None:
    embedder = ClipEmbedder({"model": {"model_id": str(tiny_clip_dir)}})
    captioner = BlipCaptioner({"model": {"model_id": str(tiny_blip_dir)}, "max_new_tokens": 3})
    assert embedder._pixels.kind == captioner._pixels.kind == "tensor"
    tensor_captions = captioner.caption_many(IMAGES[:3])
    captioner._pixels = pixel_pipeline(captioner.processor, captioner.placement, "processor")
    assert captioner.caption_many(IMAGES[:3]) == tensor_captions
