"""BLIP and CLIP checkpoints with random weights, saved like real ones.

Where no model hub is reachable (tests, CI, benchmarks on an offline machine) these give
the real `from_pretrained` path something to load: "tiny" for tests, "base" for the
full-size architectures of the default models (same FLOPs, meaningless outputs). The
tokenizers have small vocabularies; their ids stay inside the models' embedding tables.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
)

Size = Literal["tiny", "base"]

TINY_DIM = 16
_TINY_SIDE = 32
_WORDS = ["a", "an", "the", "photo", "picture", "of", "dog", "cat", "red", "blue", "green"]
_WORDS += ["on", "in", "with", "sitting", "grass", "sky", "car", "beach", "street", "man"]


def _tiny_tower(**extra: int) -> dict[str, int]:
    return dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, **extra
    )


def _bert_tokenizer() -> BertTokenizer:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    letters = list(string.ascii_lowercase)
    vocab = list(dict.fromkeys(specials + letters + _WORDS + ["##" + c for c in letters]))
    return BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, bos_token="[DEC]")


def _clip_tokenizer() -> CLIPTokenizer:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits + ".,!?'-":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def save_random_blip(directory: Path, size: Size = "tiny", seed: int = 0) -> Path:
    tokenizer = _bert_tokenizer()
    token_ids: dict[str, Any] = dict(
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    if size == "tiny":
        config = BlipConfig(
            text_config=_tiny_tower(
                vocab_size=len(tokenizer), max_position_embeddings=64, **token_ids
            ),
            vision_config=_tiny_tower(image_size=_TINY_SIDE, patch_size=8),
            projection_dim=TINY_DIM,
        )
        side = _TINY_SIDE
    else:
        # BlipConfig's defaults are the blip-image-captioning-base architecture.
        config = BlipConfig(text_config=token_ids)
        side = int(config.vision_config.image_size)  # type: ignore[union-attr]
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": side, "width": side}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def save_random_clip(directory: Path, size: Size = "tiny", seed: int = 0) -> Path:
    tokenizer = _clip_tokenizer()
    token_ids = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    if size == "tiny":
        config = CLIPConfig(
            text_config=_tiny_tower(
                vocab_size=len(tokenizer), max_position_embeddings=32, **token_ids
            ),
            vision_config=_tiny_tower(image_size=_TINY_SIDE, patch_size=8),
            projection_dim=TINY_DIM,
        )
        side = _TINY_SIDE
    else:
        # CLIPConfig's defaults are the clip-vit-base-patch32 architecture.
        config = CLIPConfig(text_config=token_ids)
        side = int(config.vision_config.image_size)  # type: ignore[union-attr,arg-type]
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        ),
        tokenizer=tokenizer,
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
