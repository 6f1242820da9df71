"""Images to model input as torch tensors, on the replica's device.

The deployments receive compact uint8 HxWx3 arrays. Hugging Face's image processors
turn them into `pixel_values` one image at a time on the CPU, through PIL when
torchvision is absent (as here): ~2.7 ms per image for CLIP on one core (370 images/s),
~8% of a CPU embedding (benchmarks/RESULTS.md), and a cap of a few hundred images/s
per core on a GPU replica. This module does the same steps with
torch, reading every number from the model directory's image processor (so CLIP,
BLIP, SigLIP and their relatives each get their own size, crop, interpolation, mean
and std):

- resize: to `shortest_edge` keeping the aspect ratio (CLIP), or to `height` x `width`
  (BLIP, SigLIP), with the processor's interpolation, antialiased as PIL is;
- centre crop where the processor does it;
- rescale and normalise, fused into one multiply-add.

Images of one size are resized in one call. On the CPU the resize runs on uint8
(torch's uint8 kernels are Pillow-SIMD's, rounding as PIL does); on CUDA the uint8
batch goes through pinned host memory with non-blocking copies and is resized on the
GPU in float32, clamped and rounded to whole levels as PIL's uint8 output is.

Processors asking for anything else (padding, longest_edge, other filters) keep the
Hugging Face path: `preprocess: auto` falls back to it, `tensor` refuses to load.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from deployments.model_loading import Placement
from deployments.settings import PreprocessChoice

logger = logging.getLogger(__name__)

# PIL's resampling filters (PIL.Image.Resampling) that torch computes alike.
_INTERPOLATIONS = {2: "bilinear", 3: "bicubic"}


class UnsupportedProcessor(ValueError):
    """An image processor setting the tensor path does not reproduce."""


@dataclass(frozen=True)
class PixelRecipe:
    """What an image processor does to one image, as numbers."""

    interpolation: str
    # Exactly one of the two: the shorter side's length, or the output (height, width).
    shortest_edge: int | None
    resize_to: tuple[int, int] | None
    crop: tuple[int, int] | None
    scale: tuple[float, float, float]
    shift: tuple[float, float, float]

    @classmethod
    def of(cls, image_processor: Any) -> PixelRecipe:
        """Read from a Hugging Face image processor (PIL or torchvision backend alike);
        UnsupportedProcessor for anything it would compute differently."""
        get = _reader(image_processor)
        if not get("do_resize", True):
            raise UnsupportedProcessor("do_resize is off: images of many sizes cannot stack")
        if get("do_pad", False):
            raise UnsupportedProcessor("padding is not reproduced")
        resample = get("resample", 2)
        interpolation = _INTERPOLATIONS.get(int(resample) if resample is not None else 2)
        if interpolation is None:
            raise UnsupportedProcessor(f"resample filter {resample!r} is not reproduced")
        size = get("size", None)
        shortest = _size_field(size, "shortest_edge")
        height, width = _size_field(size, "height"), _size_field(size, "width")
        if _size_field(size, "longest_edge") or _size_field(size, "max_height"):
            raise UnsupportedProcessor(f"size {size!r} is not reproduced")
        resize_to = (height, width) if height and width else None
        if resize_to is None and not shortest:
            raise UnsupportedProcessor(f"size {size!r} names no output size")
        if resize_to is None and not get("do_center_crop", False):
            raise UnsupportedProcessor("shortest_edge without a crop: sizes differ")
        crop: tuple[int, int] | None = None
        if get("do_center_crop", False):
            crop_size = get("crop_size", None)
            crop_h, crop_w = _size_field(crop_size, "height"), _size_field(crop_size, "width")
            if not (crop_h and crop_w):
                raise UnsupportedProcessor(f"crop_size {crop_size!r} is not height x width")
            smallest = min(resize_to) if resize_to else shortest
            if smallest is None or max(crop_h, crop_w) > smallest:
                # The processor would pad a crop larger than the resized image.
                raise UnsupportedProcessor("crop larger than the resized image")
            crop = (crop_h, crop_w)
        rescale = float(get("rescale_factor", 1 / 255)) if get("do_rescale", True) else 1.0
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if get("do_normalize", True):
            mean, std = _triple(get("image_mean", None)), _triple(get("image_std", None))
        # (x * rescale - mean) / std == x * scale + shift
        scale = tuple(rescale / s for s in std)
        shift = tuple(-m / s for m, s in zip(mean, std, strict=True))
        return cls(
            interpolation=interpolation,
            shortest_edge=None if resize_to else shortest,
            resize_to=resize_to,
            crop=crop,
            scale=(scale[0], scale[1], scale[2]),
            shift=(shift[0], shift[1], shift[2]),
        )

    @property
    def input_side(self) -> int:
        """The shorter side an image needs for the resize never to enlarge it."""
        if self.resize_to is not None:
            return max(self.resize_to)
        assert self.shortest_edge is not None
        return self.shortest_edge

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) after the resize, as transformers computes it."""
        if self.resize_to is not None:
            return self.resize_to
        assert self.shortest_edge is not None
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.shortest_edge * long / short)
        if width <= height:
            return new_long, self.shortest_edge
        return self.shortest_edge, new_long


class PixelPipeline(Protocol):
    """Compact uint8 HxWx3 images -> `pixel_values` on the model's device and dtype."""

    kind: str

    def __call__(self, images: Sequence[np.ndarray]) -> torch.Tensor: ...


class TensorPreprocessor:
    """The recipe with torch ops, batched by input size."""

    kind = "tensor"

    def __init__(self, recipe: PixelRecipe, placement: Placement) -> None:
        self.recipe = recipe
        self.device = placement.device
        self.dtype = placement.dtype
        self._cuda = placement.device.type == "cuda"
        # torch's uint8 resize kernels exist on the CPU only.
        self.float_resize = placement.device.type != "cpu"
        shape = (1, 3, 1, 1)
        self._scale = torch.tensor(recipe.scale, device=self.device).view(shape)
        self._shift = torch.tensor(recipe.shift, device=self.device).view(shape)

    def __call__(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        if not images:
            raise ValueError("no images")
        groups = [(indices, self._resize(stacked)) for indices, stacked in self._by_size(images)]
        if len(groups) == 1:
            pixels = groups[0][1]  # one size: already in the callers' order
        else:
            rows: dict[int, torch.Tensor] = {}
            for indices, resized in groups:
                rows.update(zip(indices, resized, strict=True))
            pixels = torch.stack([rows[i] for i in range(len(images))])
        # One fused multiply-add in float32, then the model's dtype.
        pixels = torch.addcmul(self._shift, pixels.float(), self._scale)
        return pixels.to(self.dtype)

    def _by_size(self, images: Sequence[np.ndarray]) -> list[tuple[list[int], torch.Tensor]]:
        """Images grouped by (height, width), each group an N x 3 x H x W uint8 tensor on
        the device: one copy of the arrays, NHWC in memory as they are."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault((image.shape[0], image.shape[1]), []).append(i)
        out: list[tuple[list[int], torch.Tensor]] = []
        for indices in groups.values():
            first = images[indices[0]]
            # Pinned on CUDA, so the copy is a DMA the host need not wait for; torch's
            # caching host allocator reuses the pinned block across batches.
            host = torch.empty(
                (len(indices), *first.shape), dtype=torch.uint8, pin_memory=self._cuda
            )
            for row, i in enumerate(indices):
                host[row] = torch.from_numpy(images[i])
            if self._cuda:
                host = host.to(self.device, non_blocking=True)
            out.append((indices, host.permute(0, 3, 1, 2)))
        return out

    def _resize(self, stacked: torch.Tensor) -> torch.Tensor:
        recipe = self.recipe
        height, width = recipe.resized_size(stacked.shape[2], stacked.shape[3])
        if (height, width) == tuple(stacked.shape[2:]):
            # A query the ingress already sized for the model (ImageLimits.for_query): the
            # resize would be an exact copy (both filters are 1 at 0 and 0 at every other
            # whole pixel), so skip it.
            resized = stacked.float() if self.float_resize else stacked
        elif self.float_resize:
            # Round to whole levels, as PIL's uint8 output is.
            resized = torch.nn.functional.interpolate(
                stacked.float(), (height, width), mode=recipe.interpolation, antialias=True
            )
            resized = resized.clamp_(0, 255).round_()
        else:
            resized = torch.nn.functional.interpolate(
                stacked, (height, width), mode=recipe.interpolation, antialias=True
            )
        if recipe.crop is not None:
            crop_h, crop_w = recipe.crop
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
            resized = resized[..., top : top + crop_h, left : left + crop_w]
        # Plain NCHW (the resize keeps the input's NHWC strides, and a crop is a view):
        # every later pass then runs over contiguous memory.
        return resized.contiguous()


class ProcessorPreprocessor:
    """The Hugging Face image processor itself, moved to the device afterwards."""

    kind = "processor"

    def __init__(self, image_processor: Any, placement: Placement) -> None:
        self.image_processor = image_processor
        self.placement = placement

    def __call__(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pixels.to(self.placement.device, self.placement.dtype)


def pixel_pipeline(
    processor: Any, placement: Placement, choice: PreprocessChoice = "auto"
) -> PixelPipeline:
    """The preprocessing a model class runs on its images. `processor` is the loaded
    processor (or image processor); `auto` is the tensor path wherever the image
    processor's settings allow it (it is the faster one on CPU and CUDA: see the
    module docstring and benchmarks/RESULTS.md)."""
    image_processor = getattr(processor, "image_processor", processor)
    if choice == "processor":
        return ProcessorPreprocessor(image_processor, placement)
    try:
        recipe = PixelRecipe.of(image_processor)
    except UnsupportedProcessor as exc:
        if choice == "tensor":
            raise
        logger.info("image preprocessing through the processor: %s", exc)
        return ProcessorPreprocessor(image_processor, placement)
    logger.info("image preprocessing as tensors on %s: %s", placement.device, recipe)
    return TensorPreprocessor(recipe, placement)


def image_input_side(processor: Any) -> int | None:
    """The shorter side an image needs for this processor (EmbedderInfo.input_side);
    None where its settings are beyond what PixelRecipe reads."""
    try:
        return PixelRecipe.of(getattr(processor, "image_processor", processor)).input_side
    except UnsupportedProcessor:
        return None


def _reader(image_processor: Any) -> Any:
    def get(name: str, default: Any) -> Any:
        value = getattr(image_processor, name, default)
        return default if value is None else value

    return get


def _size_field(size: Any, key: str) -> int | None:
    """A field of a size setting: a SizeDict (attributes) or a plain dict."""
    if size is None or isinstance(size, int):
        return None  # transformers turns a bare int into a size dict; none here
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def _triple(values: Any) -> tuple[float, float, float]:
    if values is None:
        raise UnsupportedProcessor("normalisation without image_mean / image_std")
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    listed = [float(v) for v in values]
    if len(listed) != 3:
        raise UnsupportedProcessor(f"expected 3 channel values, got {listed}")
    return listed[0], listed[1], listed[2]
