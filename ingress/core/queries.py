"""Queries made of several parts: weighted text terms ("this but not that") and example
images ("more like these, less like those"), turned into the one vector a store searches
with.

Text: the query vector is the normalised weighted sum of the terms' embeddings, so a
result's score stays a cosine similarity, to that combined direction. Examples: Qdrant's
average-vector strategy, avg(positive) + (avg(positive) - avg(negative)), normalised.

Rules are checked here, whoever calls (the HTTP schema states the same bounds for its
documentation): a broken query is an InvalidRequest, an unknown example a NotFound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ingress.core.errors import InvalidRequest, NotFound

# Each term costs a text embedding: a handful is a query, more is a batch job.
MAX_TERMS = 10
# Weights are relative; beyond this ratio the lighter term no longer changes anything.
MAX_WEIGHT = 10.0
# Each example costs a stored-vector read.
MAX_EXAMPLES = 32
MAX_ID_CHARS = 256
# What the negative terms of the page and the CLI weigh by default.
DEFAULT_NEGATIVE_WEIGHT = 0.5
# A combined vector this much shorter than its weights say has cancelled out: its
# direction is rounding noise, not a query.
_CANCELLED = 1e-4


@dataclass(frozen=True)
class Term:
    """One part of a text query: words and how much they count (negative: away from)."""

    text: str
    weight: float = 1.0


def text_terms(query: str | Sequence[Term], max_chars: int) -> tuple[Term, ...]:
    """The query as checked terms: a plain string is one term of weight 1."""
    if isinstance(query, str):
        _check_text(query, "query", max_chars)
        return (Term(query),)
    terms = tuple(query)
    if not terms:
        raise InvalidRequest("query: give at least one term")
    if len(terms) > MAX_TERMS:
        raise InvalidRequest(f"query: at most {MAX_TERMS} terms")
    for index, term in enumerate(terms):
        _check_text(term.text, f"query[{index}].text", max_chars)
        weight = term.weight
        if not math.isfinite(weight) or not -MAX_WEIGHT <= weight <= MAX_WEIGHT:
            raise InvalidRequest(
                f"query[{index}].weight must be between {-MAX_WEIGHT:g} and {MAX_WEIGHT:g}"
            )
        if weight == 0:
            raise InvalidRequest(f"query[{index}].weight must not be 0 (leave the term out)")
    if not any(term.weight > 0 for term in terms):
        raise InvalidRequest("query: at least one term needs a positive weight")
    return terms


def _check_text(text: str, name: str, max_chars: int) -> None:
    if not text.strip():
        raise InvalidRequest(f"{name} is empty")
    if len(text) > max_chars:
        raise InvalidRequest(f"{name} longer than {max_chars} characters")


def keyword_text(terms: Sequence[Term]) -> str:
    """What a keyword search looks for: the positive terms' words only (a caption that
    holds a negative word is not a better match for it)."""
    return " ".join(term.text for term in terms if term.weight > 0)


def weighted_sum(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum(w_i * v_i), L2-normalised (float32)."""
    if len(vectors) != len(weights) or not vectors:
        raise ValueError("one weight per vector, and at least one")
    stacked = np.stack([np.asarray(v, dtype=np.float32) for v in vectors])
    combined = np.asarray(weights, dtype=np.float32) @ stacked
    return _normalised(combined, scale=float(sum(abs(w) for w in weights)), what="the terms")


@dataclass(frozen=True)
class Examples:
    """Indexed images to search like (positive) and away from (negative)."""

    positive: tuple[str, ...]
    negative: tuple[str, ...] = ()

    @property
    def excluded(self) -> frozenset[str]:
        """Never among the results: the user has them already."""
        return frozenset(self.positive) | frozenset(self.negative)


def examples(ids: Sequence[str], negative_ids: Sequence[str] = ()) -> Examples:
    """The checked example ids, each once, in the order given."""
    positive = _unique_ids(ids, "ids")
    negative = _unique_ids(negative_ids, "negative_ids")
    if not positive:
        raise InvalidRequest("give the id of at least one indexed image (id or ids)")
    both = [image_id for image_id in positive if image_id in set(negative)]
    if both:
        raise InvalidRequest(f"{both[0]!r} is in both ids and negative_ids")
    return Examples(positive, negative)


def _unique_ids(ids: Sequence[str], name: str) -> tuple[str, ...]:
    unique = tuple(dict.fromkeys(ids))
    if len(unique) > MAX_EXAMPLES:
        raise InvalidRequest(f"{name}: at most {MAX_EXAMPLES} images")
    for image_id in unique:
        if not image_id or len(image_id) > MAX_ID_CHARS:
            raise InvalidRequest(f"{name}: an id is 1 to {MAX_ID_CHARS} characters")
    return unique


def stored_vectors(ids: Sequence[str], found: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    """The vectors read for `ids`, or NotFound naming the first id without one."""
    missing = next((image_id for image_id, v in zip(ids, found, strict=True) if v is None), None)
    if missing is not None:
        raise NotFound(missing)
    return [v for v in found if v is not None]


def average_vector(
    positive: Sequence[np.ndarray], negative: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """avg(positive), or with negatives avg(positive) + (avg(positive) - avg(negative)):
    as far past the positives as the negatives lie behind them. L2-normalised."""
    if not positive:
        raise ValueError("at least one positive vector")
    mean = np.mean(np.stack([np.asarray(v, dtype=np.float32) for v in positive]), axis=0)
    if not negative:
        return _normalised(mean, scale=1.0, what="the examples")
    away = np.mean(np.stack([np.asarray(v, dtype=np.float32) for v in negative]), axis=0)
    return _normalised(2 * mean - away, scale=3.0, what="the examples")


def _normalised(vector: np.ndarray, *, scale: float, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm <= _CANCELLED * scale:
        raise InvalidRequest(f"{what} cancel each other out: nothing is left to search for")
    return (vector / norm).astype(np.float32)
