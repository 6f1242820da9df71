"""The list() cursor that every vector store hands out: opaque text naming the last id
of a page, and the page that carries it.

A cursor is the URL-safe base64 (unpadded) of a backend prefix followed by that id. The
prefix tells one backend's cursors from another's, so that a cursor moved to another
store is refused rather than misread.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ingress.stores.records import ImageRecord, Page


def _non_empty(last_id: str) -> bool:
    return bool(last_id)


@dataclass(frozen=True)
class CursorCodec:
    """Cursors of one backend: ``prefix`` marks them, ``accepts`` says which ids the
    backend can page after (every non-empty one unless told)."""

    prefix: str
    accepts: Callable[[str], bool] = _non_empty

    def encode(self, last_id: str) -> str:
        return base64.urlsafe_b64encode((self.prefix + last_id).encode()).decode().rstrip("=")

    def decode(self, cursor: str) -> str:
        """The id a cursor points after; ValueError for anything this codec did not make."""
        try:
            text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError) as e:
            raise ValueError("malformed cursor") from e
        last_id = text.removeprefix(self.prefix)
        # The round-trip check also rejects non-canonical encodings (characters the
        # decoder silently drops), so that one position has exactly one cursor.
        if (
            not text.startswith(self.prefix)
            or not self.accepts(last_id)
            or self.encode(last_id) != cursor
        ):
            raise ValueError("malformed cursor")
        return last_id

    def after(self, cursor: str | None) -> str | None:
        """The id to list after: None (from the start) without a cursor."""
        return None if cursor is None else self.decode(cursor)

    def page(self, records: Sequence[ImageRecord], limit: int) -> Page:
        """The page for ``records`` fetched with one more than ``limit`` asked for: that
        extra one tells whether another page exists, so the last page comes back with
        next_cursor None instead of leaving an empty page to fetch."""
        shown = list(records[:limit])
        next_cursor = self.encode(shown[-1].id) if len(records) > limit else None
        return Page(records=shown, next_cursor=next_cursor)
