"""Orphan blobs: the rules for finding and removing blobs that no record points at, shared
by the maintenance command (ingress.tools.maintenance) and the service's own background
sweep (ingress.workers).

The ingest and delete ordering (blob first, record last; record deleted before its
blob; a failed ingest removes its blob) means a record never points at a missing blob.
What it cannot rule out is a blob that no record points at: a replica killed between an
ingest's blob and its record, the blob store failing during a failed ingest's clean-up,
or a crash between a delete's two steps.

Only blobs older than ``min_age_s`` are orphans: an ingest in flight has written its
blob and not yet its record, and must not lose it. Every candidate is checked again
right before it is deleted. Records whose blob is missing are reported, never deleted:
that is an operator's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from ingress.stores.base import BlobStore, StoreError, VectorStore
from ingress.stores.records import blob_key_for, image_id_for
from ingress.stores.walk import record_pages

logger = logging.getLogger("ingress.core.orphans")

DEFAULT_MIN_AGE_S = 3600.0
# Records per list() call while walking the vector store.
_PAGE_SIZE = 500

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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


async def _referenced_keys(vectors: VectorStore) -> tuple[dict[str, list[str]], int]:
    """blob key -> ids of the records that reference it (one, unless ids were made some
    other way than from the bytes' hash), and how many records were seen."""
    referenced: dict[str, list[str]] = {}
    seen = 0
    async for page in record_pages(vectors, _PAGE_SIZE):
        for record in page.records:
            referenced.setdefault(record.blob_key, []).append(record.id)
        seen += len(page.records)
    return referenced, seen


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

    referenced, records_seen = await _referenced_keys(vectors)
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


# -- the background sweep --------------------------------------------------------------


@dataclass(frozen=True)
class SweepPolicy:
    min_age_s: float = DEFAULT_MIN_AGE_S
    # Between the end of one sweep and the start of the next.
    interval_s: float = 3600.0
    # Before the first sweep after a start: a replica restarted more often than
    # interval_s still sweeps.
    initial_delay_s: float = 60.0


class OrphanSweep:
    """Finds and removes orphan blobs now and then, by the rules above, until stopped.

    Whoever runs it makes sure only one runs per store (the caption worker's single
    replica); two at once (a rolling update) are still safe: every delete is re-checked
    and deleting a missing blob is no error.
    """

    def __init__(
        self,
        vectors: VectorStore,
        blobs: BlobStore,
        policy: SweepPolicy | None = None,
        *,
        on_swept: Callable[[OrphanReport, Removal], None] | None = None,
    ) -> None:
        self.vectors = vectors
        self.blobs = blobs
        self.policy = policy or SweepPolicy()
        self._on_swept = on_swept
        self.sweeps = 0

    async def sweep_once(self) -> tuple[OrphanReport, Removal]:
        report = await find_orphans(self.vectors, self.blobs, min_age_s=self.policy.min_age_s)
        removal = await remove_orphans(report, self.vectors, self.blobs)
        self.sweeps += 1
        if report.blobs_without_record or report.records_without_blob:
            logger.warning(
                "orphan sweep: removed %d of %d blobs without a record; %d records without "
                "a blob (never deleted here: see python -m ingress.maintenance orphans)",
                len(removal.removed),
                len(report.blobs_without_record),
                len(report.records_without_blob) + len(removal.raced),
            )
        if self._on_swept is not None:
            self._on_swept(report, removal)
        return report, removal

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep after initial_delay_s, then every interval_s, until `stop` is set; a
        failed sweep is logged and tried again at the next interval."""
        delay = self.policy.initial_delay_s
        while not await _stopped_within(stop, delay):
            try:
                await self.sweep_once()
            except Exception:
                logger.exception("orphan sweep failed; trying again in %gs", self.policy.interval_s)
            delay = self.policy.interval_s


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()
