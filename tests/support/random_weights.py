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


def _config(
    config_cls: Any, size: Size, vocab_size: int, text_positions: int, token_ids: dict[str, Any]
) -> tuple[Any, int]:
    """The model config and its image side: tiny towers, or the class's defaults (which
    are the architectures of the default models)."""
    if size == "base":
        config = config_cls(text_config=token_ids)
        return config, int(config.vision_config.image_size)
    config = config_cls(
        text_config=_tiny_tower(
            vocab_size=vocab_size, max_position_embeddings=text_positions, **token_ids
        ),
        vision_config=_tiny_tower(image_size=_TINY_SIDE, patch_size=8),
        projection_dim=TINY_DIM,
    )
    return config, _TINY_SIDE


def _save(directory: Path, model_cls: Any, config: Any, processor: Any, seed: int) -> Path:
    torch.manual_seed(seed)
    model_cls(config).eval().save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def save_random_blip(directory: Path, size: Size = "tiny", seed: int = 0) -> Path:
    tokenizer = _bert_tokenizer()
    token_ids: dict[str, Any] = dict(
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    config, side = _config(BlipConfig, size, len(tokenizer), 64, token_ids)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": side, "width": side}),
        tokenizer=tokenizer,
    )
    return _save(directory, BlipForConditionalGeneration, config, processor, seed)


def save_random_clip(directory: Path, size: Size = "tiny", seed: int = 0) -> Path:
    tokenizer = _clip_tokenizer()
    token_ids: dict[str, Any] = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    config, side = _config(CLIPConfig, size, len(tokenizer), 32, token_ids)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        ),
        tokenizer=tokenizer,
    )
    return _save(directory, CLIPModel, config, processor, seed)
