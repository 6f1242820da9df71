"""Tiny random BLIP and CLIP models, saved with save_pretrained so that the real
from_pretrained path loads them. No hub is reachable from the test machines."""

from __future__ import annotations

import string
from pathlib import Path

from transformers import (
    BertTokenizerFast,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizerFast,
)

TINY_DIM = 16
_IMAGE_SIDE = 32
_WORDS = [
    "a",
    "an",
    "the",
    "photo",
    "picture",
    "of",
    "dog",
    "cat",
    "red",
    "blue",
    "green",
    "on",
    "in",
    "with",
    "sitting",
    "grass",
    "sky",
    "car",
]


def _tower(**extra: int) -> dict[str, int]:
    return dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, **extra
    )


def build_tiny_blip(directory: Path) -> Path:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    letters = list(string.ascii_lowercase)
    vocab_list = list(dict.fromkeys(specials + letters + _WORDS + ["##" + c for c in letters]))
    tokenizer = BertTokenizerFast(
        vocab={token: i for i, token in enumerate(vocab_list)}, bos_token="[DEC]"
    )
    config = BlipConfig(
        text_config=_tower(
            vocab_size=len(tokenizer),
            max_position_embeddings=64,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
        ),
        vision_config=_tower(image_size=_IMAGE_SIDE, patch_size=8),
        projection_dim=TINY_DIM,
    )
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": _IMAGE_SIDE, "width": _IMAGE_SIDE}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def build_tiny_clip(directory: Path) -> Path:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits + ".,!?'-":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizerFast(vocab=vocab, merges=[])
    config = CLIPConfig(
        text_config=_tower(
            vocab_size=len(vocab),
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=_tower(image_size=_IMAGE_SIDE, patch_size=8),
        projection_dim=TINY_DIM,
    )
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": _IMAGE_SIDE},
            crop_size={"height": _IMAGE_SIDE, "width": _IMAGE_SIDE},
        ),
        tokenizer=tokenizer,
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
