"""Small copies of stored images for result grids, made on demand and kept in memory.

A thumbnail is a pure function of the original bytes, its size, the output format and
the quality, so the cache is keyed by the content (sha256) and never holds a stale
entry, and the HTTP layer can give it a strong ETag and let browsers keep it a year.
"""

from __future__ import annotations

import asyncio
import io
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from PIL import Image

from ingress.core.errors import InvalidRequest
from ingress.core.imaging import ImageLimits, decode_image
from ingress.settings import ThumbnailFormat
from ingress.stores.base import BlobStore
from ingress.stores.records import ImageRecord

CONTENT_TYPES: dict[str, str] = {"webp": "image/webp", "jpeg": "image/jpeg"}
_PIL_FORMATS: dict[str, str] = {"webp": "WEBP", "jpeg": "JPEG"}
# Part of every ETag: bump it when the way thumbnails are made changes, or browsers
# holding an old one (cached as immutable) would never ask for the new one.
_RECIPE = "t1"
# A thumbnail's cost in the cache beyond its bytes (key, entry, object headers).
_ENTRY_OVERHEAD = 256


@dataclass(frozen=True)
class Thumbnail:
    data: bytes = field(repr=False)
    content_type: str
    etag: str


def make_thumbnail(
    data: bytes, side: int, limits: ImageLimits, fmt: ThumbnailFormat = "webp", quality: int = 80
) -> bytes:
    """Encode original image bytes as a thumbnail whose longest side is at most `side`.

    CPU-bound: run it in a worker thread. Decoding goes through the same limits as
    ingest (pixels, frames, EXIF orientation, alpha flattened onto white); only the
    size of the compact copy differs. Never enlarges.
    """
    decoded = decode_image(data, replace(limits, model_side=side))
    out = io.BytesIO()
    Image.fromarray(decoded.pixels).save(
        out, _PIL_FORMATS[fmt], quality=quality, **({"optimize": True} if fmt == "jpeg" else {})
    )
    return out.getvalue()


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names this ETag (weak comparison, as RFC 9110
    asks for If-None-Match; `*` matches any current representation)."""
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == wanted:
            return True
    return False


class ThumbnailCache:
    """Least recently used thumbnails, bounded by their total size in bytes.

    Meant for one event loop (no locking). A thumbnail larger than the whole budget is
    not kept; a budget of 0 keeps nothing.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self._entries: OrderedDict[tuple[str, int], Thumbnail] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._entries

    @staticmethod
    def _cost(thumb: Thumbnail) -> int:
        return len(thumb.data) + _ENTRY_OVERHEAD

    def get(self, key: tuple[str, int]) -> Thumbnail | None:
        thumb = self._entries.get(key)
        if thumb is not None:
            self._entries.move_to_end(key)
        return thumb

    def put(self, key: tuple[str, int], thumb: Thumbnail) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.size_bytes -= self._cost(old)
        cost = self._cost(thumb)
        if cost > self.max_bytes:
            return
        self._entries[key] = thumb
        self.size_bytes += cost
        while self.size_bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.size_bytes -= self._cost(evicted)


class Thumbnailer:
    """Thumbnails of stored images in a few fixed sizes.

    Sizes are a short fixed list, so a client cannot make the service render (and
    cache) every size it can name. Each (image, size) is made once while it stays in the
    cache, and only once at a time: concurrent requests for it share one rendering.
    At most `max_concurrent` renderings run at once, which bounds the memory that
    decoding large originals can take.
    """

    def __init__(
        self,
        sizes: Iterable[int],
        default_size: int,
        limits: ImageLimits,
        fmt: ThumbnailFormat = "webp",
        quality: int = 80,
        cache_bytes: int = 64 * 1024 * 1024,
        max_concurrent: int = 2,
    ) -> None:
        self.sizes = tuple(sorted(set(sizes)))
        if not self.sizes or self.sizes[0] < 1:
            raise ValueError("thumbnail sizes must be positive and at least one")
        if default_size not in self.sizes:
            raise ValueError(f"default size {default_size} is not one of {list(self.sizes)}")
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.default_size = default_size
        self.limits = limits
        self.format: ThumbnailFormat = fmt
        self.quality = quality
        self.content_type = CONTENT_TYPES[fmt]
        self.cache = ThumbnailCache(cache_bytes)
        # Bound to a loop only when a caller first waits on it (Python >= 3.10).
        self._slots = asyncio.Semaphore(max_concurrent)
        self._rendering: dict[tuple[str, int], asyncio.Task[Thumbnail]] = {}

    def size_for(self, requested: int | None) -> int:
        """The size to render for a request's `size`; 422 for one not offered."""
        if requested is None:
            return self.default_size
        if requested not in self.sizes:
            offered = ", ".join(str(s) for s in self.sizes)
            raise InvalidRequest(f"size must be one of {offered}")
        return requested

    def etag(self, sha256: str, size: int) -> str:
        """Strong ETag: the same tag always means the same bytes."""
        return f'"{_RECIPE}-{sha256}-{size}-{self.format}{self.quality}"'

    async def for_record(self, record: ImageRecord, blobs: BlobStore, size: int) -> Thumbnail:
        key = (record.sha256, size)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        task = self._rendering.get(key)
        if task is None:
            # A task of its own, so that one client going away does not cancel the
            # rendering that others are waiting for.
            task = asyncio.create_task(self._render(record, blobs, size))
            self._rendering[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: tuple[str, int], task: asyncio.Task[Thumbnail]) -> None:
        self._rendering.pop(key, None)
        if not task.cancelled():
            # Retrieved here too: when every waiter has gone, nobody else would, and
            # asyncio would log the failure as never retrieved.
            task.exception()

    async def _render(self, record: ImageRecord, blobs: BlobStore, size: int) -> Thumbnail:
        async with self._slots:
            blob = await blobs.get(record.blob_key)
            data = await asyncio.to_thread(
                make_thumbnail, blob.data, size, self.limits, self.format, self.quality
            )
        thumb = Thumbnail(data, self.content_type, self.etag(record.sha256, size))
        self.cache.put((record.sha256, size), thumb)
        return thumb
