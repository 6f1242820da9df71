"""Store maintenance that needs no models: finding and removing orphans.

The rules (what an orphan is, the minimum age, the re-check before a delete) are
ingress.core.orphans', the same the service's background sweep applies; this is the
command that runs them from a serve config::

    python -m ingress.tools.maintenance orphans --config serve_config.yaml [--app imagesearch]
        [--delete] [--min-age-s 3600]

Exit status: 0 when nothing was found or everything found was removed, 1 when orphans
remain (so that cron or CI can alert), 2 on usage or configuration errors (the stores
named by the config could not be opened included), 3 when a store failed during the
check.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from ingress.core.orphans import DEFAULT_MIN_AGE_S as DEFAULT_MIN_AGE_S
from ingress.core.orphans import OrphanReport as OrphanReport
from ingress.core.orphans import Removal as Removal
from ingress.core.orphans import find_orphans as find_orphans
from ingress.core.orphans import remove_orphan_blobs as remove_orphan_blobs
from ingress.core.orphans import remove_orphans as remove_orphans
from ingress.core.orphans import sha256_of_blob_key as sha256_of_blob_key
from ingress.settings import StorageArgs
from ingress.stores.base import BlobStore, StoreError, VectorStore
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

logger = logging.getLogger("ingress.tools.maintenance")

EXIT_CLEAN = 0
EXIT_ORPHANS_REMAIN = 1
# EXIT_USAGE (2) and EXIT_STORE_FAILED (3): ingress.tools.config's, shared with reindex.


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
