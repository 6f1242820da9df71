"""The `requeue` command: hand records back to the service's caption worker.

Re-captioning as a change of status: a requeued record is "pending" again (its old
caption stays until the new one is written), and the running service's CaptionWorker
captions it with the deployed captioner, batched on the Captioner's replicas. Nothing
is loaded here, and an interrupted run is simply run again.
"""

from __future__ import annotations

from ingress.settings import AppArgs
from ingress.stores.base import StoreError
from ingress.stores.records import ImageFilter
from ingress.stores.walk import record_pages
from ingress.tools.config import (
    EXIT_STORE_FAILED,
    StoresUnavailable,
    describe_storage,
    open_recorded_stores,
    usage_error,
    without_bucket_creation,
)

FAILED = ImageFilter(caption_statuses=("failed",))


async def run_requeue(args: AppArgs, *, all_records: bool, batch_size: int) -> int:
    """Mark failed records (all_records: every record) pending; the exit status."""
    storage = without_bucket_creation(args.storage)
    print(describe_storage(storage))
    requeued = gone = 0
    try:
        async with open_recorded_stores(storage) as (vectors, _):
            # Paged by id: a requeued record leaving the "failed" filter moves no page.
            async for page in record_pages(vectors, batch_size, None if all_records else FAILED):
                for record in page.records:
                    if await vectors.requeue_caption(record.id) is None:
                        gone += 1
                    else:
                        requeued += 1
    except StoresUnavailable as e:
        return usage_error(str(e))
    except StoreError as e:
        print(f"error: a store failed: {e}; run the same command again")
        return EXIT_STORE_FAILED
    which = "records" if all_records else "failed records"
    print(
        f"requeued {requeued} {which} for the caption worker ({gone} deleted meanwhile); "
        "`imagesearch status` shows the backlog"
    )
    return 0
