"""Tiny random BLIP and CLIP checkpoints for the tests (see tests.support.random_weights)."""

from __future__ import annotations

from pathlib import Path

from tests.support.random_weights import TINY_DIM, save_random_blip, save_random_clip

__all__ = ["TINY_DIM", "build_tiny_blip", "build_tiny_clip"]


def build_tiny_blip(directory: Path) -> Path:
    return save_random_blip(directory, "tiny")


def build_tiny_clip(directory: Path) -> Path:
    return save_random_clip(directory, "tiny")
