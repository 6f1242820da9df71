"""Walking every record of a vector store, a page at a time in id order: the one loop
that the orphan rules (ingress.core.orphans) and the tools (reindex's passes and its
walk of the target) page with."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from ingress.stores.base import VectorStore
from ingress.stores.records import ImageFilter, Page


async def record_pages(
    store: VectorStore,
    page_size: int,
    filters: ImageFilter | None = None,
    cursor: str | None = None,
) -> AsyncGenerator[Page, None]:
    """The store's records (those `filters` admits) from cursor (None: the first) to the
    last, as the pages `store.list` gives; an empty store gives one empty page. The next page is listed
    only when it is asked for, so a caller can save `page.next_cursor` in between and
    continue from it later."""
    while True:
        page = await store.list(page_size, cursor, filters)
        yield page
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
