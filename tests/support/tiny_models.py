"""Tiny random BLIP, CLIP and SigLIP checkpoints for the tests (see
tests.support.random_weights)."""

from __future__ import annotations

import io
import string
from pathlib import Path
from typing import Any

from transformers import (
    GemmaTokenizer,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
    SiglipTokenizer,
)

from tests.support.random_weights import (
    _TINY_SIDE,
    TINY_DIM,
    _save,
    save_random_blip,
    save_random_clip,
)

__all__ = ["TINY_DIM", "TINY_SIGLIP_TEXT_TOKENS", "build_tiny_blip", "build_tiny_clip"]
__all__ += ["build_tiny_siglip", "build_tiny_siglip_sentencepiece"]

# SigLIP pads every text to this many tokens (64 in the real checkpoints).
TINY_SIGLIP_TEXT_TOKENS = 16


def build_tiny_blip(directory: Path) -> Path:
    return save_random_blip(directory, "tiny")


def build_tiny_clip(directory: Path) -> Path:
    return save_random_clip(directory, "tiny")


def build_tiny_siglip(directory: Path, seed: int = 0) -> Path:
    """A SigLIP as SigLIP 2 at a fixed resolution ships: SiglipModel with a Gemma
    tokenizer (tokenizers-backed, so no sentencepiece is needed) and a
    SiglipImageProcessor. Its towers are TINY_DIM wide, since SigLIP's image tower
    pools to its hidden size, which the text head projects to."""
    return _save_tiny_siglip(directory, _siglip_tokenizer(), seed)


def build_tiny_siglip_sentencepiece(directory: Path, seed: int = 0) -> Path:
    """The same with the tokenizer SigLIP 1 and its multilingual checkpoints ship: a
    SiglipTokenizer over a sentencepiece model, trained here on a few lines in four
    languages. Needs the sentencepiece package."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_MULTILINGUAL_LINES * 20),
        model_writer=model,
        vocab_size=80,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
    )
    directory.mkdir(parents=True, exist_ok=True)
    trained = directory / "trained.spm"
    trained.write_bytes(model.getvalue())
    tokenizer = SiglipTokenizer(str(trained), model_max_length=TINY_SIGLIP_TEXT_TOKENS)
    saved = _save_tiny_siglip(directory, tokenizer, seed)
    trained.unlink()  # saved as spiece.model
    return saved


_MULTILINGUAL_LINES = [
    "a photo of a red dog on the grass",
    "ein Foto von einem roten Hund im Gras",
    "une photo d'un chien rouge sur l'herbe",
    "una foto de un perro rojo en la hierba",
]


def _save_tiny_siglip(directory: Path, tokenizer: Any, seed: int) -> Path:
    tower = dict(hidden_size=TINY_DIM, intermediate_size=37, num_hidden_layers=2)
    config = SiglipConfig(
        text_config=dict(
            **tower,
            num_attention_heads=4,
            vocab_size=len(tokenizer),
            max_position_embeddings=TINY_SIGLIP_TEXT_TOKENS,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(**tower, num_attention_heads=4, image_size=_TINY_SIDE, patch_size=8),
    )
    processor = SiglipProcessor(
        image_processor=SiglipImageProcessor(size={"height": _TINY_SIDE, "width": _TINY_SIDE}),
        tokenizer=tokenizer,
    )
    return _save(directory, SiglipModel, config, processor, seed)


def _siglip_tokenizer() -> GemmaTokenizer:
    # One token a character, as the CLIP one; SigLIP's ends every text with an EOS and
    # pads on the right.
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "\u2581": 5}
    for char in string.ascii_lowercase + string.digits + ".,!?'-":
        vocab[char] = len(vocab)
    return GemmaTokenizer(
        vocab=vocab,
        merges=[],
        add_bos_token=False,
        add_eos_token=True,
        padding_side="right",
        model_max_length=TINY_SIGLIP_TEXT_TOKENS,
    )
