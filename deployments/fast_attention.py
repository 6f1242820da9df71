"""Fused attention (torch SDPA) for BLIP's vision encoder.

transformers implements BLIP's vision attention only "eagerly": it materialises the
attention matrix, scales it, softmaxes it and multiplies, as separate ops over 577 x 577
scores per head at 384 px. `torch.nn.functional.scaled_dot_product_attention` computes
the same softmax(Q K^T * scale) V in one fused kernel (flash attention on CPU and CUDA).
The vision encoder is most of a caption's cost at the batch sizes served, so this is
the captioner's largest free speed-up after bf16. The math is unchanged; the
difference to eager is rounding (tests/test_fast_attention.py compares them).

Patched per module instance, never on the transformers class: other models in the same
process keep their own attention.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _sdpa_forward(self: Any, hidden_states: torch.Tensor, **_: Any) -> tuple[torch.Tensor, None]:
    batch, tokens, width = hidden_states.size()
    qkv = (
        self.qkv(hidden_states)
        .reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        .permute(2, 0, 3, 1, 4)
    )
    dropout = self.dropout.p if self.training else 0.0
    context = nn.functional.scaled_dot_product_attention(
        qkv[0], qkv[1], qkv[2], dropout_p=dropout, scale=self.scale
    )
    context = context.transpose(1, 2).reshape(batch, tokens, width)
    # No attention probabilities: the fused kernel never forms them (nothing here asks
    # for output_attentions).
    return self.projection(context), None


def use_sdpa_in_blip_vision(model: nn.Module) -> int:
    """Switch every BLIP vision attention module inside `model` to SDPA; returns how
    many were switched (0 for a model without them, which is left as it was)."""
    from transformers.models.blip.modeling_blip import BlipAttention

    switched = 0
    for module in model.modules():
        if isinstance(module, BlipAttention) and hasattr(module, "qkv"):
            module.forward = types.MethodType(_sdpa_forward, module)  # type: ignore[method-assign]
            switched += 1
    logger.debug("SDPA attention in %d BLIP vision layers", switched)
    return switched
