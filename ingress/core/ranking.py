"""Ranking after the stores have answered: hybrid fusion, the score cut-off,
near-duplicate collapsing and the offset window.

Pure functions over store hits, the same for every backend, so that a result list means
the same thing whichever store produced its candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from ingress.stores.records import ImageRecord, SearchHit

Part = Literal["vector", "keyword"]


@dataclass(frozen=True)
class RankedHit:
    """One result as the API returns it."""

    record: ImageRecord
    # What the results are ordered by: the cosine similarity for vector searches, the
    # fused score (0..1) for hybrid ones.
    score: float
    # Raw cosine similarity to the query vector, when known.
    vector_score: float | None
    # The min-max normalised (0..1) BM25 score, when the caption matched.
    keyword_score: float | None
    # Which candidate lists the hit came from.
    matched: tuple[Part, ...]
    vector: np.ndarray | None = None
    # Ids of the results collapsed into this one by dedup.
    near_duplicates: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.record.id


def from_vector_hits(hits: Sequence[SearchHit]) -> list[RankedHit]:
    """A plain vector search's hits, ranked as the store ranked them."""
    return [
        RankedHit(
            record=hit.record,
            score=hit.score,
            vector_score=hit.score if hit.vector_score is None else hit.vector_score,
            keyword_score=None,
            matched=("vector",),
            vector=hit.vector,
        )
        for hit in hits
    ]


def min_max(scores: Sequence[float]) -> list[float]:
    """Scores scaled to 0..1 (best 1.0, worst 0.0). A single score, or all equal, are
    1.0: each of them is the best match that list has."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high <= low:
        return [1.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]


def fuse(
    vector_hits: Sequence[SearchHit],
    keyword_hits: Sequence[SearchHit],
    alpha: float,
    query_vector: np.ndarray,
) -> list[RankedHit]:
    """Relative score fusion: each list min-max normalised to 0..1, then
    fused = alpha * vector + (1 - alpha) * keyword, a part the hit is missing from
    counting 0. Best first.

    Ties keep the order of the list that weighs more (the vector list when
    alpha >= 0.5), so alpha = 1 gives exactly the vector order and alpha = 0 exactly
    the keyword order.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be between 0 and 1")
    vector_norm = _normalised_by_id(vector_hits)
    keyword_norm = _normalised_by_id(keyword_hits)
    query = np.asarray(query_vector, dtype=np.float32)

    by_id: dict[str, SearchHit] = {}
    for hit in (*vector_hits, *keyword_hits):
        known = by_id.get(hit.record.id)
        if known is None or (known.vector is None and hit.vector is not None):
            by_id[hit.record.id] = hit
    raw_cosine = {h.record.id: h.score for h in vector_hits}

    dominant = vector_hits if alpha >= 0.5 else keyword_hits
    position = {h.record.id: i for i, h in enumerate(dominant)}
    fused: list[tuple[float, int, RankedHit]] = []
    for image_id, hit in by_id.items():
        v, k = vector_norm.get(image_id), keyword_norm.get(image_id)
        cosine = raw_cosine.get(image_id)
        if cosine is None and hit.vector is not None:
            # Vectors are L2-normalised: the dot product is the cosine similarity.
            cosine = float(np.dot(np.asarray(hit.vector, dtype=np.float32), query))
        parts: tuple[tuple[Part, float | None], ...] = (("vector", v), ("keyword", k))
        matched = tuple(part for part, part_score in parts if part_score is not None)
        score = alpha * (v or 0.0) + (1.0 - alpha) * (k or 0.0)
        ranked = RankedHit(
            record=hit.record,
            score=score,
            vector_score=cosine,
            keyword_score=k,
            matched=matched,
            vector=hit.vector,
        )
        fused.append((score, position.get(image_id, len(position)), ranked))
    fused.sort(key=lambda item: (-item[0], item[1], item[2].id))
    return [ranked for _, _, ranked in fused]


def _normalised_by_id(hits: Sequence[SearchHit]) -> dict[str, float]:
    return dict(zip((h.record.id for h in hits), min_max([h.score for h in hits]), strict=True))


def above(hits: Sequence[RankedHit], min_score: float | None) -> list[RankedHit]:
    """The hits whose score reaches min_score (all of them without one)."""
    if min_score is None:
        return list(hits)
    return [hit for hit in hits if hit.score >= min_score]


def collapse_near_duplicates(hits: Sequence[RankedHit], similarity: float) -> list[RankedHit]:
    """Greedy over the ranked hits: a hit whose cosine similarity to an already kept
    hit reaches `similarity` joins that hit's near_duplicates instead of the results.
    The best of each group is the one kept. Hits without a vector are always kept."""
    kept: list[RankedHit] = []
    collapsed: list[list[str]] = []
    kept_vectors: list[np.ndarray] = []
    kept_index: list[int] = []
    for hit in hits:
        if hit.vector is not None:
            vector = np.asarray(hit.vector, dtype=np.float32)
            norm = float(np.linalg.norm(vector))
            unit = vector / norm if norm > 0 else vector
            if kept_vectors:
                similarities = np.stack(kept_vectors) @ unit
                best = int(np.argmax(similarities))
                if float(similarities[best]) >= similarity:
                    collapsed[kept_index[best]].append(hit.id)
                    continue
            kept_vectors.append(unit)
            kept_index.append(len(kept))
        kept.append(hit)
        collapsed.append([])
    return [
        replace(hit, near_duplicates=hit.near_duplicates + tuple(extra)) if extra else hit
        for hit, extra in zip(kept, collapsed, strict=True)
    ]


def window(
    hits: Sequence[RankedHit], offset: int, limit: int, max_depth: int
) -> tuple[list[RankedHit], int | None]:
    """The page [offset, offset + limit) and the offset of the next page: None when
    nothing follows it, or when the next page would start at or past max_depth."""
    page = list(hits[offset : offset + limit])
    following = offset + limit
    more = len(hits) > following
    return page, following if more and following < max_depth else None
