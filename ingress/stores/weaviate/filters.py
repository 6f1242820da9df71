"""ImageFilter as a Weaviate filter.

The server applies filters before the HNSW or BM25 search, so a filter never shortens a
result that admitted objects could fill.
"""

from __future__ import annotations

from weaviate.classes.query import Filter
from weaviate.collections.classes.filters import _Filters

from ingress.stores.records import ImageFilter
from ingress.stores.values import clamp_int64, utc


def weaviate_filter(filters: ImageFilter | None, after_id: str | None = None) -> _Filters | None:
    """The Weaviate filter admitting what ``filters`` admits, and only ids after
    ``after_id`` when given (objects' ``_id`` compares as its canonical UUID text, the
    order list() pages in); None when nothing is excluded.

    Text values are matched whole: content_type, source_domain and tags are tokenised as
    ``field``, so ContainsAny/ContainsAll compare complete values, not words. Integer
    bounds beyond Weaviate's 64-bit INT are clamped rather than refused.
    """
    parts: list[_Filters] = []
    if after_id is not None:
        parts.append(Filter.by_property("_id").greater_than(after_id))
    if filters is not None:
        if filters.tags_any:
            parts.append(Filter.by_property("tags").contains_any(list(filters.tags_any)))
        if filters.tags_all:
            parts.append(Filter.by_property("tags").contains_all(list(filters.tags_all)))
        if filters.content_types:
            values = list(filters.content_types)
            parts.append(Filter.by_property("content_type").contains_any(values))
        if filters.min_width is not None:
            min_width = clamp_int64(filters.min_width)
            parts.append(Filter.by_property("width").greater_or_equal(min_width))
        if filters.min_height is not None:
            min_height = clamp_int64(filters.min_height)
            parts.append(Filter.by_property("height").greater_or_equal(min_height))
        if filters.created_after is not None:
            after = utc(filters.created_after)
            parts.append(Filter.by_property("created_at").greater_than(after))
        if filters.created_before is not None:
            before = utc(filters.created_before)
            parts.append(Filter.by_property("created_at").less_than(before))
        if filters.source_domains:
            values = list(filters.source_domains)
            parts.append(Filter.by_property("source_domain").contains_any(values))
        if filters.caption_statuses:
            values = list(filters.caption_statuses)
            parts.append(Filter.by_property("caption_status").contains_any(values))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Filter.all_of(parts)
