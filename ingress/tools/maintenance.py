"""Store maintenance that needs no models: finding and removing orphans.

The ingest and delete ordering (blob first, record last; record deleted before its
blob; a failed ingest removes its blob) means a record never points at a missing blob.
What it cannot rule out is a blob that no record points at: the blob store failing
during a failed ingest's clean-up, or a crash between a delete's two steps, leaves one
behind. ``find_orphans`` finds them, ``remove_orphan_blobs`` removes them, and the
``orphans`` command runs both from a serve config::

    python -m ingress.tools.maintenance orphans --config serve_config.yaml [--app imagesearch]
        [--delete] [--min-age-s 3600]

Exit status: 0 when nothing was found or everything found was removed, 1 when orphans
remain (so that cron or CI can alert), 2 on usage or configuration errors (the stores
named by the config could not be opened included), 3 when a store failed during the
check.

Only blobs older than ``min_age_s`` are orphans: an ingest in flight has written its
blob and not yet its record, and must not lose it. Records whose blob is missing are
reported, never deleted: that is an operator's decision.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from ingress.settings import StorageArgs
from ingress.stores.base import BlobStore, StoreError, VectorStore
from ingress.stores.records import blob_key_for, image_id_for
from ingress.tools.config import EXIT_STORE_FAILED as EXIT_STORE_FAILED
from ingress.tools.config import EXIT_USAGE as EXIT_USAGE
from ingress.tools.config import (
    ConfigError,
    StoresUnavailable,
    add_config_arguments,
    describe_storage,
    load_app_args,
    open_recorded_stores,
    print_keys,
    run_command,
    usage_error,
    without_bucket_creation,
)
from ingress.tools.walk import record_pages

logger = logging.getLogger("ingress.tools.maintenance")

DEFAULT_MIN_AGE_S = 3600.0
# Records per list() call while walking the vector store.
_PAGE_SIZE = 500

EXIT_CLEAN = 0
EXIT_ORPHANS_REMAIN = 1
# EXIT_USAGE (2) and EXIT_STORE_FAILED (3): ingress.tools.config's, shared with reindex.

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


# -- finding and removing orphans ---------------------------------------------------


@dataclass
class OrphanReport:
    # Blob keys that no record references, older than min_age_s.
    blobs_without_record: list[str]
    # Ids of records whose blob is missing. Never deleted automatically.
    records_without_blob: list[str]
    min_age_s: float = DEFAULT_MIN_AGE_S
    records_seen: int = 0
    blobs_seen: int = 0
    # Unreferenced but younger than min_age_s: ingests in flight, left alone.
    recent_unreferenced: list[str] = field(default_factory=list)
    # Keys this service never writes (not <2 hex>/<sha256>): reported, never deleted.
    unrecognised_blobs: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.blobs_without_record and not self.records_without_blob


def sha256_of_blob_key(key: str) -> str | None:
    """The sha256 a content-addressed blob key was made from; None for any other key."""
    sha = key.rpartition("/")[2]
    if _SHA256_HEX.fullmatch(sha) and blob_key_for(sha) == key:
        return sha
    return None


async def find_orphans(
    vectors: VectorStore, blobs: BlobStore, *, min_age_s: float = DEFAULT_MIN_AGE_S
) -> OrphanReport:
    """Walk every record and every blob; report blobs without a record (only those
    older than min_age_s) and records without a blob. Changes nothing.

    Records are walked first, then blobs are streamed against them, so memory grows
    with the number of records only. Every candidate is checked again at the end, so
    that a record written or deleted while the walk ran is not reported.
    """
    if min_age_s < 0:
        raise ValueError(f"min_age_s must not be negative, not {min_age_s}")
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=min_age_s)

    # blob key -> ids of the records that reference it (one, unless ids were made some
    # other way than from the bytes' hash).
    referenced: dict[str, list[str]] = {}
    records_seen = 0
    async for page in record_pages(vectors, _PAGE_SIZE):
        for record in page.records:
            referenced.setdefault(record.blob_key, []).append(record.id)
        records_seen += len(page.records)
    logger.info("walked %d records", records_seen)

    report = OrphanReport([], [], min_age_s=min_age_s, records_seen=records_seen)
    found: set[str] = set()
    candidates: list[str] = []
    async for info in blobs.list_blobs():
        report.blobs_seen += 1
        if info.key in referenced:
            found.add(info.key)
        elif sha256_of_blob_key(info.key) is None:
            report.unrecognised_blobs.append(info.key)
        elif info.modified_at > cutoff:
            report.recent_unreferenced.append(info.key)
        else:
            candidates.append(info.key)
    logger.info("walked %d blobs", report.blobs_seen)

    for key in sorted(candidates):
        # A record written after the walk passed its place (the same bytes uploaded
        # again) makes the blob referenced after all.
        if not await _has_record(vectors, key):
            report.blobs_without_record.append(key)
    for key in sorted(referenced.keys() - found):
        for image_id in referenced[key]:
            # Deleted with its blob while the walk ran, or its blob written after the
            # blob walk passed: not broken.
            if await vectors.get(image_id) is not None and not await blobs.exists(key):
                report.records_without_blob.append(image_id)
    report.recent_unreferenced.sort()
    report.unrecognised_blobs.sort()
    return report


async def _has_record(vectors: VectorStore, key: str) -> bool:
    sha = sha256_of_blob_key(key)
    if sha is None:
        raise ValueError(f"{key!r} is not a content-addressed blob key")
    return await vectors.get(image_id_for(sha)) is not None


@dataclass
class Removal:
    """What remove_orphans did with each blob of a report."""

    removed: list[str] = field(default_factory=list)
    # Checked again right before deleting and kept: a record references it now, ...
    now_referenced: list[str] = field(default_factory=list)
    # ... or it was written again within min_age_s (an ingest of the same bytes), ...
    rewritten: list[str] = field(default_factory=list)
    # ... or it was gone already.
    gone: list[str] = field(default_factory=list)
    # The store failed; the blob may still be there.
    failed: list[str] = field(default_factory=list)
    # Ids of records written while their blob was being removed (see remove_orphans).
    raced: list[str] = field(default_factory=list)


async def remove_orphans(report: OrphanReport, vectors: VectorStore, blobs: BlobStore) -> Removal:
    """Delete the report's blobs without a record, each checked again right before.

    The record is checked first, then the blob's age: an ingest of the same bytes
    rewrites the blob (which makes it young again) before it writes its record. What is
    left is an ingest that rewrites the blob in the moment between the age check and
    the delete. The record is checked once more afterwards and one found is logged and
    returned in ``raced``; one written later still (after the ingest's model calls) is
    reported by the next find_orphans as a record without a blob. A store failure on
    one blob is logged and the rest go on.
    """
    outcome = Removal()
    for key in report.blobs_without_record:
        sha = sha256_of_blob_key(key)
        if sha is None:
            raise ValueError(f"{key!r} is not a content-addressed blob key")
        image_id = image_id_for(sha)
        try:
            if await vectors.get(image_id) is not None:
                outcome.now_referenced.append(key)
                continue
            info = await blobs.stat(key)
            if info is None:
                outcome.gone.append(key)
                continue
            cutoff = datetime.now(timezone.utc) - timedelta(seconds=report.min_age_s)
            if info.modified_at > cutoff:
                outcome.rewritten.append(key)
                continue
            await blobs.delete(key)
        except StoreError:
            logger.exception("could not remove orphan blob %s", key)
            outcome.failed.append(key)
            continue
        outcome.removed.append(key)
        logger.info("removed orphan blob %s", key)
        try:
            raced = await vectors.get(image_id) is not None
        except StoreError:
            logger.exception("could not check record %s after removing its blob", image_id)
            continue
        if raced:
            logger.error(
                "record %s was written while its blob %s was being removed; it now has "
                "no blob: delete it and upload the image again",
                image_id,
                key,
            )
            outcome.raced.append(image_id)
    return outcome


async def remove_orphan_blobs(report: OrphanReport, vectors: VectorStore, blobs: BlobStore) -> int:
    """Delete the report's blobs without a record (see remove_orphans); how many were
    deleted."""
    return len((await remove_orphans(report, vectors, blobs)).removed)


# -- the command ----------------------------------------------------------------------


def print_report(report: OrphanReport) -> None:
    age = f"{report.min_age_s:g} s"
    print(f"records: {report.records_seen}, blobs: {report.blobs_seen}")
    print_keys(f"blobs without a record (older than {age})", report.blobs_without_record)
    print_keys("records without a blob", report.records_without_blob)
    if report.recent_unreferenced:
        print(
            f"unreferenced blobs younger than {age}, left alone (ingests in flight): "
            f"{len(report.recent_unreferenced)}"
        )
    if report.unrecognised_blobs:
        print_keys("keys this service does not write, never deleted", report.unrecognised_blobs)


async def run_orphans(storage: StorageArgs, *, delete: bool, min_age_s: float) -> int:
    """The `orphans` command on already validated storage args; the exit status."""
    storage = without_bucket_creation(storage)
    print(describe_storage(storage))
    try:
        async with open_recorded_stores(storage) as (vectors, blobs):
            return await _check(vectors, blobs, delete=delete, min_age_s=min_age_s)
    except StoresUnavailable as e:
        return usage_error(str(e))
    except StoreError as e:
        logger.debug("store failure", exc_info=True)
        print(f"error: a store failed during the check: {e}", file=sys.stderr)
        return EXIT_STORE_FAILED


async def _check(vectors: VectorStore, blobs: BlobStore, *, delete: bool, min_age_s: float) -> int:
    report = await find_orphans(vectors, blobs, min_age_s=min_age_s)
    print_report(report)
    broken = list(report.records_without_blob)
    remaining = len(report.blobs_without_record)
    if delete and report.blobs_without_record:
        outcome = await remove_orphans(report, vectors, blobs)
        print(f"removed {len(outcome.removed)} of {remaining} blobs without a record")
        if outcome.now_referenced or outcome.rewritten:
            print(
                f"kept {len(outcome.now_referenced) + len(outcome.rewritten)} that an "
                "ingest referenced or rewrote meanwhile"
            )
        if outcome.failed:
            print_keys("could not remove (the store failed; run again)", outcome.failed)
        if outcome.raced:
            print_keys("records written while their blob was removed", outcome.raced)
        remaining = len(outcome.failed)
        broken += outcome.raced
    elif report.blobs_without_record:
        print("dry run: nothing deleted; run again with --delete to remove them")
    if broken:
        print(
            "a record without its blob cannot be served, and is never deleted here: "
            "DELETE /images/<id> for each such id, then upload the image again"
        )
    return EXIT_CLEAN if remaining == 0 and not broken else EXIT_ORPHANS_REMAIN


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ingress.tools.maintenance",
        description="Store maintenance; loads no models.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    orphans = commands.add_parser(
        "orphans",
        help="find (and with --delete remove) blobs without a record",
        description=(
            "Report blobs that no record references (older than --min-age-s) and records "
            "whose blob is missing. Exit 0: none found or all removed; 1: orphans remain; "
            "2: usage or configuration error; 3: a store failed during the check."
        ),
    )
    add_config_arguments(orphans)
    orphans.add_argument(
        "--delete", action="store_true", help="remove the blobs without a record found"
    )
    orphans.add_argument(
        "--min-age-s",
        type=float,
        default=DEFAULT_MIN_AGE_S,
        help="only blobs older than this are orphans; keep it above the longest ingest "
        f"(default {DEFAULT_MIN_AGE_S:g})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (argparse exits 2 itself on bad usage).
    Configures no logging: ``python -m ingress.tools.maintenance`` does that."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.min_age_s < 0:
        parser.error("--min-age-s must not be negative")
    try:
        app_args = load_app_args(args.config, args.app)
    except ConfigError as e:
        return usage_error(str(e))
    return asyncio.run(run_orphans(app_args.storage, delete=args.delete, min_age_s=args.min_age_s))


if __name__ == "__main__":
    run_command(main)
