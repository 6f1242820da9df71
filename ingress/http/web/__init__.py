"""The search page: plain HTML, CSS and JavaScript shipped as package data.

No build step, no framework and nothing fetched from another origin, so the page
works offline and under any route prefix (every link in it is relative).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

# Only these files are served: a name from the URL never becomes a path on disk.
_MEDIA_TYPES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

# The page loads only its own files and talks only to its own API; images may also be
# object URLs (thumbnails fetched with an API key) and the data URL of a dropped file.
PAGE_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated each time (cheap with the ETag), so a new deployment shows at once.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    data: bytes = field(repr=False)
    media_type: str
    etag: str


def asset_names() -> list[str]:
    return sorted(_MEDIA_TYPES)


def load_asset(name: str) -> Asset | None:
    """One of the page's files, or None for any other name."""
    return _assets().get(name)


@cache
def _assets() -> dict[str, Asset]:
    # All of them at once, the first time one is asked for: a few KiB, and names from
    # URLs then never reach the cache or the disk.
    assets = {}
    for name, media_type in _MEDIA_TYPES.items():
        data = resources.files(__name__).joinpath(name).read_bytes()
        assets[name] = Asset(data, media_type, f'"{hashlib.sha256(data).hexdigest()[:32]}"')
    return assets
