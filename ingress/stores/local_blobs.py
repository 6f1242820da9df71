"""BlobStore on a local directory, shared by several replica processes.

Each blob is two files: ``<root>/<key>`` (the bytes) and ``<root>/<key>.meta.json``
(its content type). Both are written to a temp file in the same directory and renamed
into place, sidecar first, so a reader that finds the data also finds its sidecar and
never sees a partial file. Several processes writing one key at once is fine: the keys
are content-addressed, and the last rename wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from ingress.stores.base import Blob, BlobInfo, BlobNotFound, BlobStream, StoreError

SIDECAR_SUFFIX = ".meta.json"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_TEMP_PREFIX = ".tmp-"
# Blobs that list_blobs gathers per trip to the worker thread.
_LIST_BATCH = 1000


class LocalBlobStore:
    """Blobs as files under one root directory."""

    def __init__(self, root: str | Path) -> None:
        # Resolved once so that the escape check below compares real paths.
        self.root = Path(root).resolve()

    def _paths(self, key: str) -> tuple[Path, Path]:
        """Data and sidecar paths for key; ValueError for keys that could leave root."""
        if not isinstance(key, str) or "\\" in key or "\x00" in key:
            raise ValueError(f"invalid blob key {key!r}")
        # Split by hand: pathlib would quietly drop "." and "//" and so accept more
        # spellings than the one canonical key. An empty part means a leading "/"
        # (absolute), "//" or a trailing "/"; a part starting with "." covers "..", "."
        # and our own temp files. The sidecar suffix is reserved so that no key can
        # overwrite another key's metadata.
        parts = key.split("/")
        if any(not part or part.startswith(".") for part in parts) or key.endswith(SIDECAR_SUFFIX):
            raise ValueError(f"invalid blob key {key!r}")
        data = self.root.joinpath(*parts)
        return data, data.with_name(data.name + SIDECAR_SUFFIX)

    def _inside(self, path: Path) -> Path:
        # Catches a symlink inside root that points outside it. Touches the disk, so it
        # runs in the worker thread with the IO it guards.
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"blob path {path} escapes the store root")
        return path

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        path, sidecar = self._paths(key)
        meta = json.dumps({"content_type": content_type}).encode()
        try:
            await asyncio.to_thread(self._put_sync, path, sidecar, data, meta)
        except OSError as e:
            raise StoreError(f"could not write blob {key!r}: {e}") from e

    async def get(self, key: str) -> Blob:
        path, sidecar = self._paths(key)
        try:
            return await asyncio.to_thread(self._get_sync, path, sidecar)
        except FileNotFoundError as e:
            raise BlobNotFound(key) from e
        except OSError as e:
            raise StoreError(f"could not read blob {key!r}: {e}") from e

    async def stream(self, key: str, chunk_size: int = 256 * 1024) -> BlobStream:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        path, sidecar = self._paths(key)
        try:
            f, size, content_type = await asyncio.to_thread(self._open_sync, path, sidecar)
        except FileNotFoundError as e:
            raise BlobNotFound(key) from e
        except OSError as e:
            raise StoreError(f"could not read blob {key!r}: {e}") from e
        return BlobStream(
            content_type=content_type, size=size, chunks=_read_chunks(f, chunk_size, key)
        )

    async def delete(self, key: str) -> None:
        path, sidecar = self._paths(key)
        try:
            await asyncio.to_thread(self._delete_sync, path, sidecar)
        except OSError as e:
            raise StoreError(f"could not delete blob {key!r}: {e}") from e

    async def exists(self, key: str) -> bool:
        path, _ = self._paths(key)
        return await asyncio.to_thread(lambda: self._inside(path).is_file())

    async def stat(self, key: str) -> BlobInfo | None:
        path, _ = self._paths(key)
        try:
            return await asyncio.to_thread(self._stat_sync, key, path)
        except OSError as e:
            raise StoreError(f"could not stat blob {key!r}: {e}") from e

    async def list_blobs(self) -> AsyncIterator[BlobInfo]:
        # The walk runs in a worker thread a batch at a time, so that neither the event
        # loop nor memory holds the whole tree at once.
        found = self._walk_sync()
        while True:
            try:
                batch = await asyncio.to_thread(_take, found, _LIST_BATCH)
            except OSError as e:
                raise StoreError(f"could not list blobs under {self.root}: {e}") from e
            if not batch:
                return
            for info in batch:
                yield info

    async def close(self) -> None:
        """Nothing to release: every call opens and closes its own files."""

    def _stat_sync(self, key: str, path: Path) -> BlobInfo | None:
        try:
            st = self._inside(path).stat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return BlobInfo(key=key, modified_at=_mtime(st))

    def _walk_sync(self) -> Iterator[BlobInfo]:
        """Data files under root, as BlobInfo. Skips what no key can name: sidecars,
        temp files and anything else whose name starts with ".", symlinks, and names
        that are not valid key parts. A file deleted during the walk is skipped."""
        pending: list[tuple[Path, str]] = [(self.root, "")]
        while pending:
            directory, prefix = pending.pop()
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue  # no root yet, or a directory removed meanwhile
            for entry in sorted(entries, key=lambda e: e.name):
                name = entry.name
                if name.startswith(".") or "\\" in name:
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append((Path(entry.path), f"{prefix}{name}/"))
                        continue
                    if name.endswith(SIDECAR_SUFFIX) or not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield BlobInfo(key=prefix + name, modified_at=_mtime(st))

    def _put_sync(self, path: Path, sidecar: Path, data: bytes, meta: bytes) -> None:
        _write_atomic(self._inside(sidecar), meta)
        _write_atomic(self._inside(path), data)

    def _get_sync(self, path: Path, sidecar: Path) -> Blob:
        # Sidecar first: put renames it before the data and delete removes it after, so
        # once the data is readable the sidecar read here belongs to a complete put.
        content_type = self._content_type_sync(sidecar)
        data = self._inside(path).read_bytes()
        return Blob(data=data, content_type=content_type)

    def _open_sync(self, path: Path, sidecar: Path) -> tuple[BinaryIO, int, str]:
        # Same order as _get_sync. The open handle pins the file: put and delete only
        # rename over or unlink the name, so on POSIX the bytes behind the handle stay
        # whole and unchanged however long the caller takes to read them.
        content_type = self._content_type_sync(sidecar)
        f = self._inside(path).open("rb")
        try:
            size = os.fstat(f.fileno()).st_size
        except BaseException:
            f.close()
            raise
        return f, size, content_type

    def _content_type_sync(self, sidecar: Path) -> str:
        try:
            content_type = json.loads(self._inside(sidecar).read_bytes())["content_type"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            # Missing or unreadable metadata should not make the bytes unreachable.
            content_type = None
        return (
            content_type if isinstance(content_type, str) and content_type else DEFAULT_CONTENT_TYPE
        )

    def _delete_sync(self, path: Path, sidecar: Path) -> None:
        # Data first, so that no reader finds data without its sidecar.
        self._inside(path).unlink(missing_ok=True)
        self._inside(sidecar).unlink(missing_ok=True)


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, timezone.utc)


def _take(items: Iterator[BlobInfo], n: int) -> list[BlobInfo]:
    return list(itertools.islice(items, n))


async def _read_chunks(f: BinaryIO, chunk_size: int, key: str) -> AsyncIterator[bytes]:
    try:
        while True:
            try:
                chunk = await asyncio.to_thread(f.read, chunk_size)
            except OSError as e:
                raise StoreError(f"could not read blob {key!r}: {e}") from e
            if not chunk:
                return
            yield chunk
    finally:
        f.close()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target: os.replace is only atomic within one filesystem.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            # Without fsync a crash after the rename can leave an empty file in place.
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; blobs should be as readable as any written file.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
