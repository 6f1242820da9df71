"""What `imagesearch index` was asked to index: folders, globs, files, URL lists and
S3 prefixes, expanded into a list of sources.

A source knows how to read its bytes (None for a URL: the service fetches it) and
its identity for the resume journal: where it is, its size and a version (mtime or
ETag), so that a changed file is never mistaken for one already done.
"""

from __future__ import annotations

import asyncio
import glob
import mimetypes
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# What the service accepts (JPEG, PNG, WebP, GIF, BMP, TIFF), by file name.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)
URL_LIST_SUFFIX = ".txt"
_GLOB_CHARS = frozenset("*?[")


class UsageError(Exception):
    """A source the command line named cannot be used at all (exit status 2)."""


class Source(Protocol):
    @property
    def label(self) -> str:
        """How the user knows it: a path, a URL, s3://bucket/key."""

    def identity(self) -> dict[str, Any]:
        """`source`, `size` and `version` for the journal (size/version may be None)."""

    async def read(self) -> bytes | None:
        """The bytes to upload; None when the service is to fetch `label` itself."""

    @property
    def filename(self) -> str: ...


def content_type_for(name: str) -> str:
    # The service sniffs the bytes whatever is declared; this is only a courtesy.
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


@dataclass(frozen=True)
class FileSource:
    path: Path  # absolute: what the journal remembers
    size: int
    mtime_ns: int
    shown: str = ""  # the path as the user named it, for reports

    @property
    def label(self) -> str:
        return self.shown or str(self.path)

    @property
    def filename(self) -> str:
        return self.path.name

    def identity(self) -> dict[str, Any]:
        return {"source": str(self.path), "size": self.size, "version": str(self.mtime_ns)}

    async def read(self) -> bytes:
        return await asyncio.to_thread(self.path.read_bytes)


@dataclass(frozen=True)
class UrlSource:
    url: str

    @property
    def label(self) -> str:
        return self.url

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1] or "image"

    def identity(self) -> dict[str, Any]:
        return {"source": self.url, "size": None, "version": None}

    async def read(self) -> None:
        return None


@dataclass(frozen=True)
class S3Source:
    bucket: str
    key: str
    size: int
    etag: str
    client: Any = field(compare=False, repr=False)

    @property
    def label(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def filename(self) -> str:
        return self.key.rsplit("/", 1)[-1] or "image"

    def identity(self) -> dict[str, Any]:
        return {"source": self.label, "size": self.size, "version": self.etag}

    async def read(self) -> bytes:
        def get() -> bytes:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
            return bytes(answer["Body"].read())

        # boto3 is synchronous; a thread keeps the other uploads moving meanwhile.
        return await asyncio.to_thread(get)


@dataclass(frozen=True)
class Problem:
    """What could not be indexed, and why: a line or entry that names no usable source
    (found here), or a source the service refused (found by the index run)."""

    label: str
    reason: str


@dataclass
class Expansion:
    sources: list[Source] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _file_source(path: Path) -> FileSource:
    stat = path.stat()
    return FileSource(path.resolve(), stat.st_size, stat.st_mtime_ns, str(path))


def _walk(folder: Path, all_files: bool) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        # Hidden folders (.git, .cache, ...) hold no photos anyone means to index.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if all_files or is_image_name(name):
                yield Path(root) / name


def read_url_list(path: Path) -> Expansion:
    """One URL per line; blank lines and `#` comments are ignored."""
    found = Expansion()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the URL list {path}: {exc}") from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith(("http://", "https://")):
            found.sources.append(UrlSource(line))
        else:
            found.problems.append(Problem(f"{path}:{number}", f"not an http(s) URL: {line[:80]}"))
    return found


def split_s3_url(url: str) -> tuple[str, str]:
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UsageError(f"{url}: name a bucket, as in s3://bucket/prefix")
    return bucket, prefix


def list_s3(url: str, client: Any, all_files: bool) -> list[Source]:
    """Every object under s3://bucket/prefix (images only unless all_files)."""
    bucket, prefix = split_s3_url(url)
    found: list[Source] = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                key = str(item["Key"])
                if key.endswith("/") or not (all_files or is_image_name(key)):
                    continue
                etag = str(item.get("ETag", "")).strip('"')
                found.append(S3Source(bucket, key, int(item["Size"]), etag, client))
    except Exception as exc:  # botocore's errors: no credentials, no bucket, no access
        raise UsageError(f"cannot list {url}: {type(exc).__name__}: {exc}") from None
    return found


def s3_client(endpoint_url: str | None) -> Any:
    """A boto3 S3 client on the standard credential chain (env, profile, role)."""
    import boto3  # only when an s3:// source is named: it is slow to import

    try:
        return boto3.client("s3", endpoint_url=endpoint_url)
    except Exception as exc:  # a malformed endpoint URL, an unknown region, ...
        raise UsageError(f"cannot use S3: {type(exc).__name__}: {exc}") from None


def expand(
    arguments: Iterable[str], *, all_files: bool = False, s3_endpoint_url: str | None = None
) -> Expansion:
    """Every source the arguments name, each once, in a stable order."""
    found = Expansion()
    seen: set[str] = set()
    s3: Any = None

    def add(source: Source) -> None:
        key = str(source.identity()["source"])  # one file named two ways is one source
        if key not in seen:
            seen.add(key)
            found.sources.append(source)

    def add_path(path: Path, named: bool) -> None:
        if path.is_dir():
            for file in _walk(path, all_files):
                add(_file_source(file))
        elif path.suffix.lower() == URL_LIST_SUFFIX and named:
            listed = read_url_list(path)
            for source in listed.sources:
                add(source)
            found.problems.extend(listed.problems)
        elif path.is_file():
            add(_file_source(path))

    for argument in arguments:
        if argument.startswith("s3://"):
            if s3 is None:
                s3 = s3_client(s3_endpoint_url)
            for source in list_s3(argument, s3, all_files):
                add(source)
            continue
        path = Path(argument).expanduser()
        if path.exists():
            add_path(path, named=True)
        elif _GLOB_CHARS.intersection(argument):
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                raise UsageError(f"{argument}: no file matches")
            for match in matches:
                add_path(Path(match), named=True)
        else:
            raise UsageError(f"{argument}: no such file or folder")
    return found
