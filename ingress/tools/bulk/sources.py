"""What the bulk job indexes, and how each source's bytes are read.

The sources are named as `imagesearch index` takes them (folders, globs, files, URL
lists, s3:// prefixes) and expanded by the same code (imagesearch_cli.sources), on the
driver. Each becomes a row (ingress.tools.bulk.rows); the bytes are read later, in
the pipeline's CPU tasks: files from the shared file system, objects with a boto3
client of the task's process, URLs through the service's SSRF-safe fetcher and its
url_fetch policy.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagesearch_cli.sources import (
    Expansion,
    FileSource,
    Problem,
    S3Source,
    UrlSource,
    UsageError,
    expand,
)
from ingress.core.errors import IntakeError, PayloadTooLarge
from ingress.core.fetch import FetchPolicy, SafeFetcher
from ingress.tools.bulk.rows import FAILED, finish, new_row

__all__ = ["Problem", "ReadSettings", "UsageError", "read_rows", "source_rows"]

# Reads in flight at once in one task (files, objects and URLs alike).
_READS_PER_TASK = 16


@dataclass(frozen=True)
class S3Endpoint:
    """Where s3:// sources are read from (credentials: the standard AWS chain)."""

    endpoint_url: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class ReadSettings:
    fetch: FetchPolicy
    s3: S3Endpoint
    max_bytes: int


def source_rows(
    arguments: Sequence[str], s3: S3Endpoint, *, all_files: bool = False
) -> tuple[list[dict[str, Any]], list[Problem]]:
    """A row per source the arguments name (each once), and the entries that name no
    usable source. UsageError when an argument cannot be used at all."""
    found: Expansion = expand(arguments, all_files=all_files, s3_endpoint_url=s3.endpoint_url)
    rows = []
    for source in found.sources:
        if isinstance(source, FileSource):
            rows.append(new_row(source.label, "file", str(source.path)))
        elif isinstance(source, UrlSource):
            rows.append(new_row(source.url, "url", source.url))
        elif isinstance(source, S3Source):
            rows.append(new_row(source.label, "s3", source.key, source.bucket))
        else:  # pragma: no cover - expand gives only these
            raise TypeError(f"unexpected source {source!r}")
    return rows, list(found.problems)


@functools.cache
def _s3_client(endpoint: S3Endpoint) -> Any:
    """One client per task process and endpoint (boto3 clients are thread-safe)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint.endpoint_url, region_name=endpoint.region)


def _read_object(endpoint: S3Endpoint, bucket: str, key: str, max_bytes: int) -> bytes:
    answer = _s3_client(endpoint).get_object(Bucket=bucket, Key=key)
    if int(answer.get("ContentLength") or 0) > max_bytes:
        answer["Body"].close()
        raise PayloadTooLarge(
            f"object is {answer['ContentLength']} bytes; the limit is {max_bytes}"
        )
    return bytes(answer["Body"].read())


def _read_file(path: str, max_bytes: int) -> bytes:
    file = Path(path)
    size = file.stat().st_size
    if size > max_bytes:
        raise PayloadTooLarge(f"image is {size} bytes; the limit is {max_bytes}")
    return file.read_bytes()


async def _read_all(rows: list[dict[str, Any]], settings: ReadSettings) -> None:
    fetcher = SafeFetcher(settings.fetch)
    gate = asyncio.Semaphore(_READS_PER_TASK)

    async def one(row: dict[str, Any]) -> None:
        async with gate:
            try:
                if row["kind"] == "url":
                    row["data"] = (await fetcher.fetch(row["location"])).data
                elif row["kind"] == "s3":
                    row["data"] = await asyncio.to_thread(
                        _read_object,
                        settings.s3,
                        row["bucket"],
                        row["location"],
                        settings.max_bytes,
                    )
                else:
                    row["data"] = await asyncio.to_thread(
                        _read_file, row["location"], settings.max_bytes
                    )
            except IntakeError as e:
                finish(row, FAILED, str(e))
            except Exception as e:  # unreadable for any reason: reported, never fatal
                finish(row, FAILED, f"cannot read: {type(e).__name__}: {e}")

    try:
        await asyncio.gather(*(one(row) for row in rows))
    finally:
        await fetcher.close()


def read_rows(rows: list[dict[str, Any]], settings: ReadSettings) -> None:
    """Fill each row's data with its source's bytes, or finish it as failed with why."""
    asyncio.run(_read_all(rows, settings))
