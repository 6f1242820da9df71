"""How tags are normalised, the same at ingest, on update and in filters."""

from __future__ import annotations

from collections.abc import Iterable

from ingress.core.errors import InvalidRequest


def normalise_tags(raw: Iterable[str], max_tags: int, max_tag_chars: int) -> list[str]:
    """Comma-separated values split, stripped and de-duplicated in order; blank ones
    dropped. InvalidRequest when a tag or the count is over its limit."""
    tags: list[str] = []
    for value in raw:
        for tag in value.split(","):
            tag = tag.strip()
            if not tag:
                continue
            if len(tag) > max_tag_chars:
                raise InvalidRequest(f"tag longer than {max_tag_chars} characters")
            if tag not in tags:
                tags.append(tag)
    if len(tags) > max_tags:
        raise InvalidRequest(f"at most {max_tags} tags")
    return tags
