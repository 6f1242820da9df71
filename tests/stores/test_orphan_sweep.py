"""The service's background orphan sweep (ingress.core.orphans.OrphanSweep, as the
CaptionWorker runs it) on the real embedded stores: it removes the blobs a killed ingest
left once they are old enough, keeps everything a record points at and everything young,
reports what it did, and keeps going after a store failure."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ingress.core.orphans import OrphanReport, OrphanSweep, Removal, SweepPolicy
from tests.stores.test_ingest_consistency import _Failing
from tests.stores.test_maintenance import (
    HOUR,
    Stores,
    add_images,
    assert_every_record_has_its_blob,
)


async def test_a_sweep_removes_what_killed_ingests_left(tmp_path: Path) -> None:
    stores = Stores.on(tmp_path)
    swept: list[tuple[OrphanReport, Removal]] = []
    try:
        await add_images(stores, 1, 2, 3)
        # Two ingests killed between their blob and their record, an hour ago; one
        # in flight right now.
        left = sorted([await stores.put_orphan(10), await stores.put_orphan(11)])
        in_flight = await stores.put_orphan(12, old=False)
        sweep = OrphanSweep(
            stores.vectors,
            stores.blobs,
            SweepPolicy(min_age_s=HOUR),
            on_swept=lambda report, removal: swept.append((report, removal)),
        )

        report, removal = await sweep.sweep_once()

        assert report.blobs_without_record == left and removal.removed == left
        assert report.recent_unreferenced == [in_flight]
        for key in left:
            assert not await stores.blobs.exists(key)
        assert await stores.blobs.exists(in_flight)
        await assert_every_record_has_its_blob(stores)
        assert swept == [(report, removal)]

        # Nothing left for the next one.
        again, removed_again = await sweep.sweep_once()
        assert again.blobs_without_record == [] and removed_again.removed == []
        assert sweep.sweeps == 2
    finally:
        await stores.vectors.close()


async def test_the_loop_sweeps_until_stopped_and_survives_a_failing_store(
    tmp_path: Path,
) -> None:
    stores = Stores.on(tmp_path)
    try:
        await add_images(stores, 1)
        orphan = await stores.put_orphan(10)
        vectors = _Failing(stores.vectors)
        vectors.fail_on = {"list"}
        sweeps: list[Removal] = []
        stop = asyncio.Event()

        def swept(report: OrphanReport, removal: Removal) -> None:
            sweeps.append(removal)
            stop.set()

        sweep = OrphanSweep(
            vectors,
            stores.blobs,
            SweepPolicy(min_age_s=HOUR, interval_s=0.05, initial_delay_s=0),
            on_swept=swept,
        )
        loop = asyncio.create_task(sweep.run(stop))
        # The first passes fail (the vector store cannot list); the loop goes on.
        await asyncio.sleep(0.2)
        assert not loop.done() and sweeps == []
        assert await stores.blobs.exists(orphan)
        vectors.fail_on = set()

        await asyncio.wait_for(loop, timeout=30)

        assert [removal.removed for removal in sweeps] == [[orphan]]
        assert not await stores.blobs.exists(orphan)
        await assert_every_record_has_its_blob(stores)
    finally:
        await stores.vectors.close()
