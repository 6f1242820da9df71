"""Loading Hugging Face models: where they come from, which device and dtype they run in.

Kept apart from request handling so that the deployments, the benchmarks and the tests
all load models the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import torch

from deployments.model_source import resolve_model_source
from deployments.settings import ModelSettings

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype


M = TypeVar("M")
P = TypeVar("P")


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matmul (AMX or AVX512-BF16), where bf16 is several
    times faster than float32; elsewhere bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    # Not Linux: torch reports the best ISA it dispatches to.
    return torch.backends.cpu.get_cpu_capability() in {"AVX512_BF16", "AMX"}


def cuda_half_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on GPUs with bf16 tensor cores (compute capability 8.0: Ampere, Hopper
    and later), float16 on older ones (V100, T4), which emulate bf16 slowly.

    Where both are native they run at the same tensor-core speed, and bf16 keeps
    float32's exponent range: BLIP's text decoder and LayerNorms never overflow, which
    fp16 risks without loss scaling (there is none at inference). Its shorter mantissa
    costs ~1e-2 relative on a vector, which the normalisation (in float32) and cosine
    ranking tolerate; and the CPU path is bf16 too, so vectors from GPU and CPU
    replicas of one collection agree."""
    if torch.cuda.get_device_capability(device) >= (8, 0):
        return torch.bfloat16
    return torch.float16


def prepare_device(placement: Placement) -> None:
    """Process-wide CUDA settings, once a replica knows its placement: TF32 tensor cores
    for the matmuls and convolutions that still run in float32 (a `dtype: float32`
    model, the patch embedding of one), several times float32's speed for a 10-bit
    mantissa, finer than bf16's and far finer than embeddings resolve."""
    if placement.device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def resolve_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """Turn the `auto` choices into a concrete device and dtype."""
    if device == "auto":
        resolved_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        resolved_device = torch.device(device)
        if resolved_device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} was requested but CUDA is not available")
    if dtype == "auto":
        if resolved_device.type == "cuda":
            resolved_dtype = cuda_half_dtype(resolved_device)
        else:
            resolved_dtype = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    else:
        try:
            resolved_dtype = _DTYPES[dtype]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}") from None
    return Placement(resolved_device, resolved_dtype)


def load_pretrained(
    model_cls: type[M],
    processor_cls: type[P],
    settings: ModelSettings,
) -> tuple[M, P, Placement]:
    """Load a model and its processor from a hub id or a local directory, in eval mode on
    the resolved device and dtype. Fails loudly: a replica without its model is useless."""
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    placement = resolve_placement(settings.device, settings.dtype)
    prepare_device(placement)
    # Fails at once, naming the model and the fixes, when it cannot be had.
    resolved = resolve_model_source(settings.model_id, settings.revision)
    source = resolved.source
    kwargs: dict[str, Any] = {"local_files_only": resolved.local_files_only}
    if settings.revision is not None:
        kwargs["revision"] = settings.revision
    logger.info(
        "loading %s from %s on %s as %s (offline=%s)",
        model_cls.__name__,
        source,
        placement.device,
        placement.dtype,
        kwargs["local_files_only"],
    )
    try:
        processor = processor_cls.from_pretrained(source, **kwargs)  # type: ignore[attr-defined]
        model = model_cls.from_pretrained(  # type: ignore[attr-defined]
            source, dtype=placement.dtype, **kwargs
        )
    except Exception as exc:
        raise RuntimeError(
            f"could not load {model_cls.__name__} from {settings.model_id!r}: {exc}"
        ) from exc
    model.to(placement.device)
    model.eval()
    return model, processor, placement
