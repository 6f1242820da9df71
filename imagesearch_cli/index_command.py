"""`imagesearch index`: expand the sources, run the index, report, choose the exit status."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

from imagesearch_cli.captions import CaptionWait, wait_for_captions
from imagesearch_cli.commands import FAILED, INTERRUPTED, OK, USAGE, Connection, fail
from imagesearch_cli.indexer import IndexRun, Summary
from imagesearch_cli.journal import Journal, journal_path
from imagesearch_cli.progress import Progress
from imagesearch_cli.sources import UsageError, expand


def report(summary: Summary, out: TextIO) -> None:
    counts = summary.counts
    print(
        f"indexed {counts.indexed}, already there {counts.exists}, "
        f"skipped {counts.skipped}, failed {counts.failed} (of {summary.total})",
        file=out,
    )
    not_done = summary.total - counts.finished
    if not_done:
        print(f"not done: {not_done}", file=out)
    if summary.failures:
        print("failures:", file=out)
        for failure in sorted(summary.failures, key=lambda f: f.label):
            print(f"  {failure.label}: {failure.reason}", file=out)


def report_captions(wait: CaptionWait, out: TextIO) -> None:
    print(
        f"captioned {wait.done}, caption failed {len(wait.failed)}, "
        f"still pending {len(wait.pending)}",
        file=out,
    )
    for image_id, reason in wait.failed:
        print(f"  {image_id}: {reason}", file=out)


def index(args: argparse.Namespace, conn: Connection) -> int:
    try:
        found = expand(args.paths, all_files=args.all_files, s3_endpoint_url=args.s3_endpoint_url)
    except UsageError as exc:
        return fail(str(exc), USAGE)
    if not found.sources and not found.problems:
        return fail("nothing to index: no image files among the given paths", USAGE)
    tags = [tag.strip() for tag in (args.tags or "").split(",") if tag.strip()]
    path = journal_path(args.journal, args.no_journal)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    total = len(found.sources) + len(found.problems)
    progress = (
        Progress(total=total, stream=sys.stderr, bar=show) if args.progress is not False else None
    )
    try:
        journal = Journal.open(path, conn.url)
    except OSError as exc:
        return fail(f"cannot open the journal {path}: {exc.strerror or exc}", USAGE)
    api = conn.client(max_connections=args.concurrency)
    run = IndexRun(api, journal, tags=tags, concurrency=args.concurrency, progress=progress)

    captions: CaptionWait | None = None

    async def go() -> Summary:
        nonlocal captions
        async with api:
            summary = await run.run(found.sources, found.problems)
            if args.wait_captions and summary.stopped is None:
                captions = await wait_for_captions(
                    api, summary.ids, timeout_s=args.wait_captions_timeout
                )
            return summary

    interrupted = False
    try:
        summary = asyncio.run(go())
    except KeyboardInterrupt:
        # Sources in flight are dropped; every finished one is in the journal already.
        interrupted = True
        summary = run.summary
    finally:
        journal.close()
        if progress is not None:
            progress.close()
    report(summary, sys.stdout)
    if captions is not None:
        report_captions(captions, sys.stdout)
    if interrupted:
        where = f" (journal: {path})" if path else ""
        return fail(f"interrupted: run the same command again to resume{where}", INTERRUPTED)
    if summary.stopped:
        return fail(f"stopped: {summary.stopped}")
    captioned = captions is None or not (captions.failed or captions.pending)
    return OK if summary.complete and captioned else FAILED
