"""The `captions` pass: re-caption, in place, the records another captioner made."""

from __future__ import annotations

from pathlib import Path

from ingress.core.imaging import ImageLimits
from ingress.settings import AppArgs
from ingress.stores.base import BlobStore, StoreError, VectorStore
from ingress.tools.config import (
    StoresUnavailable,
    describe_storage,
    describe_vectors,
    open_recorded_stores,
    usage_error,
    without_bucket_creation,
)
from ingress.tools.reindex.models import Captioner, through_model
from ingress.tools.reindex.outcomes import failures, store_failed
from ingress.tools.reindex.state import (
    Checkpoint,
    UsageError,
    default_state_path,
    pages,
    resumed,
    vectors_name,
)


async def recaption(
    vectors: VectorStore,
    blobs: BlobStore,
    captioner: Captioner,
    limits: ImageLimits,
    state: Checkpoint,
    *,
    all_records: bool,
    batch_size: int,
    state_path: Path,
) -> None:
    """Walk the store from state's cursor; re-caption in place what needs it. State is
    saved after every page and removed at the end."""
    async for records in pages(
        vectors, state, "captions", "re-captioned", batch_size=batch_size, state_path=state_path
    ):
        todo = [r for r in records if all_records or r.caption_model != captioner.model_id]
        state.skipped += len(records) - len(todo)
        captioned = await through_model(captioner, "captioning", blobs, todo, limits, state)
        for record, caption in captioned:
            if await vectors.update_caption(record.id, caption, captioner.model_id) is None:
                state.gone += 1
            else:
                state.changed += 1
    Checkpoint.remove(state_path)


async def run_captions(
    args: AppArgs, *, all_records: bool, batch_size: int, state_path: Path | None
) -> int:
    """The `captions` command on validated args; the exit status."""
    storage = without_bucket_creation(args.storage)
    print(describe_storage(storage))
    captioner = Captioner(args.captioner)
    print(f"captioner: {captioner.model_id}" + (" (every record)" if all_records else ""))
    path = state_path or default_state_path(storage, f"captions-{vectors_name(storage)}")
    job = {
        "command": "captions",
        "vectors": describe_vectors(storage),
        "caption_model": captioner.model_id,
        "all": all_records,
    }
    try:
        async with open_recorded_stores(storage) as (vectors, blobs):
            state = resumed(path, job)
            await recaption(
                vectors,
                blobs,
                captioner,
                ImageLimits.of(args.intake),
                state,
                all_records=all_records,
                batch_size=batch_size,
                state_path=path,
            )
    except (StoresUnavailable, UsageError) as e:
        return usage_error(str(e))
    except StoreError as e:
        return store_failed(e, path)
    print(
        f"re-captioned {state.changed} of {state.walked} records with {captioner.model_id} "
        f"({state.skipped} already current, {state.gone} deleted meanwhile)"
    )
    return failures(state)
