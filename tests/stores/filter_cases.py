"""A record population and filters that exercise every condition of ImageFilter, shared
by the store contract suite and the Weaviate unit tests (which check the translation
of the same filters without a server)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from ingress.stores.records import ImageFilter

BASE_TIME = datetime(2024, 3, 1, 12, 0, 0, 250_000, tzinfo=timezone.utc)
# Tags with quotes, backslashes and non-ASCII: they must be matched as values, never as
# query syntax.
TAG_SETS: list[list[str]] = [
    [],
    ["cat"],
    ["dog"],
    ["cat", "sofa"],
    ["cat", "dog", "sofa"],
    ["x'y"],
    ["a\\b", "cat"],
    ["ünï", "dog"],
]
TYPES = ["image/jpeg", "image/png", "image/webp"]
SIZES = [100, 640, 1024]
URLS: list[str | None] = [
    None,
    "https://example.com/a.jpg",
    "http://WWW.Example.com:8080/b.png",
    "https://user:pw@other.org/c",
    "https://example.com./d",  # the trailing dot is dropped: example.com
]
# Every caption of the filter population holds "photo", so a keyword search for it
# admits exactly what the filter admits.
SUBJECTS = ["red car", "blue boat", "green tree", "yellow bird"]


POPULATION_SIZE = 24


def created(i: int) -> datetime:
    return BASE_TIME + timedelta(days=i)


def population_fields(i: int) -> dict[str, Any]:
    """The fields of the i-th record of the population (besides id and the defaults)."""
    return {
        "caption": f"a photo of a {SUBJECTS[i % len(SUBJECTS)]} number {i}",
        "tags": TAG_SETS[i % len(TAG_SETS)],
        "content_type": TYPES[i % 3],
        "width": SIZES[(i // 3) % 3],
        "height": SIZES[(i // 2) % 3],
        "source_url": URLS[i % len(URLS)],
        "created_at": created(i),
    }


FILTER_CASES: list[tuple[str, ImageFilter]] = [
    ("empty", ImageFilter()),
    ("tags-any-one", ImageFilter(tags_any=("cat",))),
    ("tags-any-two", ImageFilter(tags_any=("sofa", "dog"))),
    ("tags-any-quote", ImageFilter(tags_any=("x'y",))),
    ("tags-any-backslash", ImageFilter(tags_any=("a\\b",))),
    ("tags-any-unicode", ImageFilter(tags_any=("ünï",))),
    ("tags-any-unknown", ImageFilter(tags_any=("nope",))),
    ("tags-any-partial-word", ImageFilter(tags_any=("ca",))),
    ("tags-all", ImageFilter(tags_all=("cat", "sofa"))),
    ("tags-all-three", ImageFilter(tags_all=("cat", "dog", "sofa"))),
    ("tags-all-with-unknown", ImageFilter(tags_all=("cat", "nope"))),
    ("content-type", ImageFilter(content_types=("image/png",))),
    ("content-types", ImageFilter(content_types=("image/png", "image/webp"))),
    ("content-type-prefix", ImageFilter(content_types=("image",))),
    ("min-width-inclusive", ImageFilter(min_width=640)),
    ("min-width-none", ImageFilter(min_width=5000)),
    ("min-height", ImageFilter(min_height=1024)),
    ("created-after-exclusive", ImageFilter(created_after=created(10))),
    ("created-before-exclusive", ImageFilter(created_before=created(5))),
    (
        "created-before-microsecond",
        ImageFilter(created_before=created(5) + timedelta(microseconds=1)),
    ),
    (
        # The same instant as created(7), written in another timezone.
        "created-after-other-tz",
        ImageFilter(created_after=created(7).astimezone(timezone(timedelta(hours=-5)))),
    ),
    ("created-window", ImageFilter(created_after=created(3), created_before=created(12))),
    (
        "created-extremes",
        ImageFilter(
            created_after=datetime(1, 1, 1, 0, 0, 1, tzinfo=timezone.utc),
            created_before=datetime(9999, 12, 31, 23, 59, tzinfo=timezone.utc),
        ),
    ),
    ("domain", ImageFilter(source_domains=("example.com",))),
    ("domains", ImageFilter(source_domains=("www.example.com", "other.org"))),
    ("domain-unknown", ImageFilter(source_domains=("example.org",))),
    (
        "combined",
        ImageFilter(
            tags_any=("cat", "dog"),
            content_types=("image/jpeg", "image/png"),
            min_width=640,
            created_before=created(20),
        ),
    ),
    (
        "combined-all",
        ImageFilter(
            tags_any=("dog",),
            tags_all=("cat",),
            content_types=("image/webp", "image/jpeg", "image/png"),
            min_width=100,
            min_height=100,
            created_after=created(0),
            created_before=created(23),
            source_domains=("example.com", "www.example.com", "other.org"),
        ),
    ),
]

# The cases that admit every record of the population, and those that admit none (every
# other one admits some but not all).
ADMIT_ALL = ["empty", "created-extremes"]
ADMIT_NONE = [
    "tags-any-unknown",
    "tags-any-partial-word",
    "tags-all-with-unknown",
    "content-type-prefix",
    "min-width-none",
    "domain-unknown",
]
