"""dtype `auto` and the process-wide settings on CUDA, with the device faked where the
machine has none (only torch's capability query is replaced)."""

from __future__ import annotations

import pytest
import torch

from deployments import model_loading
from deployments.model_loading import Placement, cuda_half_dtype, prepare_device


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16), ((7, 5), torch.float16)],
)
def test_auto_on_cuda_is_bf16_from_ampere_on_and_fp16_before(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: torch.dtype
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert cuda_half_dtype(torch.device("cuda")) == expected


def test_auto_on_a_cuda_device_uses_the_half_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(model_loading, "cuda_half_dtype", lambda device: torch.float16)
    assert model_loading.resolve_placement("cuda", "auto") == Placement(
        torch.device("cuda"), torch.float16
    )


def test_tf32_only_for_cuda_placements() -> None:
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        prepare_device(Placement(torch.device("cpu"), torch.float32))
        assert torch.get_float32_matmul_precision() == "highest"
        prepare_device(Placement(torch.device("cuda"), torch.float32))
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
