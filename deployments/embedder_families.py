"""The dual-encoder families the embedder runs, and what differs between them.

Every family loads through `AutoModel` / `AutoProcessor` (they pick the classes from
the checkpoint's config) and embeds through `get_image_features` / `get_text_features`.
What differs (how texts are padded, which inputs the text tower takes, where the
config states the vector width) is written here once per family, and a checkpoint's
family is told by the `model_type` of its config.json. Images go through the image
processor's own settings in every family (deployments/preprocessing.py).

SigLIP 2 NaFlex checkpoints ("siglip2": a variable number of patches per image, with
their own masks and shapes) are not supported; SigLIP 2 at a fixed resolution is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from deployments.model_loading import Placement


@dataclass(frozen=True)
class EmbedderFamily:
    name: str
    # The config.json `model_type`s of the family's checkpoints.
    model_types: tuple[str, ...]
    # "longest" pads a batch to its longest text: harmless where the text tower pools
    # a real token. "max_length" pads every text to max_text_tokens, for towers that
    # pool the last position, padding included, as they were trained: a text then
    # gives the same vector alone or in any batch.
    text_padding: Literal["longest", "max_length"]
    # Which tokenizer outputs the text tower is given.
    text_inputs: tuple[str, ...]
    # The width of the vectors, as the model's config states it.
    dimension: Callable[[Any], int]

    def max_text_tokens(self, config: Any) -> int:
        """The longest text the text tower takes, in tokens; longer texts are truncated."""
        return int(config.text_config.max_position_embeddings)

    def encode_texts(
        self, processor: Any, texts: list[str], max_tokens: int, placement: Placement
    ) -> dict[str, torch.Tensor]:
        """The text tower's inputs for texts, on the model's device."""
        encoded = processor(
            text=texts,
            return_tensors="pt",
            padding=self.text_padding,
            truncation=True,
            max_length=max_tokens,
        )
        return {name: encoded[name].to(placement.device) for name in self.text_inputs}


CLIP = EmbedderFamily(
    name="clip",
    # openai and laion CLIP and MetaCLIP 1 are all "clip"; MetaCLIP 2 (multilingual)
    # has the same towers under its own type.
    model_types=("clip", "metaclip_2"),
    # The text tower pools the end-of-text token behind a causal mask: padding after
    # it changes nothing.
    text_padding="longest",
    text_inputs=("input_ids", "attention_mask"),
    dimension=lambda config: int(config.projection_dim),
)

SIGLIP = EmbedderFamily(
    # SigLIP, its multilingual checkpoints and SigLIP 2 at a fixed resolution (which
    # ships as "siglip" with a Gemma tokenizer).
    name="siglip",
    model_types=("siglip",),
    text_padding="max_length",
    # Trained without a text attention mask: the padding is part of what it pools.
    text_inputs=("input_ids",),
    # The text head's width, which the image tower's pooled output shares.
    dimension=lambda config: int(config.text_config.projection_size),
)

FAMILIES: tuple[EmbedderFamily, ...] = (CLIP, SIGLIP)


def family_of(model_type: str, families: Sequence[EmbedderFamily] = FAMILIES) -> EmbedderFamily:
    """The family of a checkpoint by its config's model_type; ValueError naming the
    supported types for any other (a captioner or a text-only model, say)."""
    for family in families:
        if model_type in family.model_types:
            return family
    supported = sorted(t for f in families for t in f.model_types)
    raise ValueError(
        f"model_type {model_type!r} is not a supported dual encoder; supported: "
        + ", ".join(supported)
    )
