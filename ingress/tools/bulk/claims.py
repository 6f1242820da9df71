"""Identical files within one run: the first source to claim an id indexes it, every
later one is a duplicate of it. One small actor per run holds the claims; the lookup
stage asks it once per batch, so it is a batch of ids per call, not a call per image.
(At a billion images, ~100 bytes per claim: shard it by id prefix before then.)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray


class ClaimRegistry:
    def __init__(self) -> None:
        self._first: dict[str, str] = {}

    def claim(self, claims: Sequence[tuple[str, str]]) -> list[str | None]:
        """For each (id, source): None when this source is the first with the id, else
        the source that claimed it first."""
        answers: list[str | None] = []
        for image_id, source in claims:
            first = self._first.setdefault(image_id, source)
            answers.append(None if first == source else first)
        return answers


def start_registry() -> Any:
    """The run's registry actor; it goes with the driver that started it."""
    return ray.remote(num_cpus=0)(ClaimRegistry).remote()
