"""`imagesearch index --wait-captions`: wait until the run's images are captioned.

In background mode the service acknowledges an upload before its caption exists; the
record's caption_status says when the caption worker has written it ("done") or given
up ("failed", with caption_error).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from imagesearch_cli.client import ApiClient


@dataclass
class CaptionWait:
    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    # Still pending when the wait gave up.
    pending: list[str] = field(default_factory=list)


async def wait_for_captions(
    api: ApiClient,
    ids: Sequence[str],
    *,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
) -> CaptionWait:
    """Poll each image until it is no longer pending, or until `timeout_s`."""
    outcome = CaptionWait()
    waiting = list(dict.fromkeys(ids))
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        still: list[str] = []
        for image_id in waiting:
            record = await api.get_image(image_id)
            if record is None:
                continue  # deleted meanwhile: nothing to wait for
            status = record.get("caption_status", "done")
            if status == "done":
                outcome.done += 1
            elif status == "failed":
                outcome.failed.append((image_id, str(record.get("caption_error") or "failed")))
            else:
                still.append(image_id)
        waiting = still
        if not waiting or (deadline is not None and time.monotonic() >= deadline):
            outcome.pending = waiting
            return outcome
        await asyncio.sleep(poll_s)
