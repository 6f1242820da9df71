"""The `vectors` pass: copy every record into a new table (collection) with a vector of
the new embedder, skipping the ids the target has already."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TypeVar

from ingress.core.imaging import ImageLimits
from ingress.settings import AppArgs, LanceDBArgs, StorageArgs
from ingress.stores.base import BlobStore, EmbeddingMismatch, StoreError, VectorStore
from ingress.stores.factory import open_blob_store, open_vector_store
from ingress.stores.records import IndexedImage
from ingress.stores.walk import record_pages
from ingress.tools.config import (
    describe_storage,
    describe_vectors,
    recorded_embedding,
    usage_error,
    without_bucket_creation,
)
from ingress.tools.reindex.models import Embedder, through_model
from ingress.tools.reindex.outcomes import failures, store_failed
from ingress.tools.reindex.state import (
    Checkpoint,
    UsageError,
    default_state_path,
    pages,
    resumed,
    vectors_name,
)

_Store = TypeVar("_Store", VectorStore, BlobStore)

# Target ids per list() call in the merge walk; records only, no vectors.
_TARGET_PAGE = 500


class TargetIds:
    """The target's ids, walked once in id order beside the source's pages (both stores
    list by id), so that knowing which ids the target has costs one list page per
    _TARGET_PAGE records rather than a lookup per record."""

    def __init__(self, target: VectorStore, after: str | None) -> None:
        self._pages = record_pages(target, _TARGET_PAGE)
        # Ids up to `after` belong to pages an earlier run finished.
        self._after = after
        self._buffer: list[str] = []
        self._exhausted = False
        # Target ids no source page holds: deleted from the source after they were
        # copied, or added through the new table already.
        self.only_in_target = 0

    async def _next_page(self) -> list[str]:
        page = await anext(self._pages, None)
        if page is None:
            self._exhausted = True
            return []
        if page.next_cursor is None:
            self._exhausted = True
            await self._pages.aclose()
        return [r.id for r in page.records]

    async def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ids (one source page, ascending) the target holds. An id is only ever
        reported present when the target listed it, so an order the stores did not
        agree on could only cost extra work, never a record left out."""
        if not ids:
            return set()
        upper = max(ids)
        while not self._exhausted and (not self._buffer or self._buffer[-1] < upper):
            listed = await self._next_page()
            self._buffer.extend(i for i in listed if self._after is None or i > self._after)
        upto = [i for i in self._buffer if i <= upper]
        self._buffer = [i for i in self._buffer if i > upper]
        wanted = set(ids)
        found = wanted.intersection(upto)
        self.only_in_target += len(upto) - len(found)
        return found

    async def rest(self) -> int:
        """Count the target ids after the last source page into only_in_target."""
        self.only_in_target += len(self._buffer)
        self._buffer = []
        while not self._exhausted:
            self.only_in_target += len(await self._next_page())
        return self.only_in_target


async def reembed(
    source: VectorStore,
    target: VectorStore,
    blobs: BlobStore,
    embedder: Embedder,
    limits: ImageLimits,
    state: Checkpoint,
    *,
    batch_size: int,
    state_path: Path,
) -> int:
    """Copy every source record the target lacks, with a vector of the new embedder.
    State is saved after every page and removed at the end. Returns how many target
    records no source record has."""
    in_target = TargetIds(target, state.last_id)
    async for records in pages(
        source, state, "vectors", "embedded", batch_size=batch_size, state_path=state_path
    ):
        there = await in_target.present([r.id for r in records])
        todo = [r for r in records if r.id not in there]
        state.skipped += len(records) - len(todo)
        embedded = await through_model(embedder, "embedding", blobs, todo, limits, state)
        if embedded:
            copies = [
                IndexedImage(record.model_copy(update={"embedding_model": embedder.model_id}), v)
                for record, v in embedded
            ]
            await target.upsert(copies)
            state.changed += len(copies)
    only_in_target = await in_target.rest()
    Checkpoint.remove(state_path)
    return only_in_target


def source_storage(
    storage: StorageArgs, from_table: str | None, from_collection: str | None
) -> StorageArgs:
    """The storage args of the old table (collection): the config's, renamed. UsageError
    when the option does not fit the configured store or names the target itself."""
    vectors = storage.vectors
    if isinstance(vectors, LanceDBArgs):
        if from_table is None:
            raise UsageError(
                "the config names a LanceDB store: give the old table with --from-table"
            )
        name, current, key = from_table, vectors.table, "table"
    else:
        if from_collection is None:
            raise UsageError(
                "the config names a Weaviate store: give the old collection with --from-collection"
            )
        name, current, key = from_collection, vectors.collection, "collection"
    if name == current:
        raise UsageError(
            f"the source {key} {name!r} is the {key} the config writes to: point "
            f"`storage.vectors.{key}` at a new {key} for the new embedder"
        )
    try:
        renamed = type(vectors).model_validate({**vectors.model_dump(), key: name})
    except ValueError as e:
        raise UsageError(f"{name!r} is not a valid {key} name: {e}") from e
    return storage.model_copy(update={"vectors": renamed})


async def run_vectors(
    args: AppArgs,
    *,
    from_table: str | None,
    from_collection: str | None,
    batch_size: int,
    state_path: Path | None,
) -> int:
    """The `vectors` command on validated args; the exit status."""
    storage = without_bucket_creation(args.storage)
    try:
        old = source_storage(storage, from_table, from_collection)
    except UsageError as e:
        return usage_error(str(e))
    print(f"from: {describe_vectors(old)}")
    print(f"to: {describe_storage(storage)}")
    new_model = args.embedder.model.model_id
    try:
        old_model, old_dim = await recorded_embedding(old)
    except (StoreError, ValueError) as e:
        return usage_error(f"cannot open the source: {e}")
    print(f"embedder: {old_model} (dim {old_dim}) -> {new_model}")
    target_model = await _recorded_or_none(storage)
    if target_model is not None and target_model[0] != new_model:
        return usage_error(
            f"the target {describe_vectors(storage)} already holds vectors of "
            f"{target_model[0]!r}, not of the configured embedder {new_model!r}: "
            "name a new table (collection) in the config"
        )
    try:
        embedder = await Embedder.load(args.embedder)
    except UsageError as e:
        return usage_error(str(e))
    name = f"vectors-{vectors_name(old)}-to-{vectors_name(storage)}"
    path = state_path or default_state_path(storage, name)
    job = {
        "command": "vectors",
        "source": describe_vectors(old),
        "target": describe_vectors(storage),
        "embedding_model": embedder.model_id,
    }
    try:
        async with AsyncExitStack() as opened:
            source = await _opened(opened, "the source", open_vector_store(old, old_model, old_dim))
            try:
                target = await open_vector_store(storage, embedder.model_id, embedder.dim)
            except EmbeddingMismatch as e:
                raise UsageError(
                    f"the target holds vectors of another model or dimension: {e}"
                ) from e
            except (StoreError, ValueError) as e:
                raise UsageError(f"cannot open the target: {e}") from e
            opened.push_async_callback(target.close)
            blobs = await _opened(opened, "the blob store", open_blob_store(storage))
            state = resumed(path, job)
            only_in_target = await reembed(
                source,
                target,
                blobs,
                embedder,
                ImageLimits.of(args.intake),
                state,
                batch_size=batch_size,
                state_path=path,
            )
    except UsageError as e:
        return usage_error(str(e))
    except StoreError as e:
        return store_failed(e, path)
    print(
        f"embedded {state.changed} of {state.walked} records with {embedder.model_id} "
        f"(dim {embedder.dim}); {state.skipped} were in the target already"
    )
    if only_in_target:
        print(
            f"{only_in_target} records are in the target but not in the source (deleted from "
            "the old table after they were copied, or added through the new one); left alone"
        )
    return failures(state)


async def _recorded_or_none(storage: StorageArgs) -> tuple[str, int] | None:
    try:
        return await recorded_embedding(storage)
    except StoreError:
        # No such table yet (it is created) or not reachable (opening it says so).
        return None


async def _opened(opened: AsyncExitStack, what: str, opening: Awaitable[_Store]) -> _Store:
    """The store opening gives, closed when opened is; UsageError when it cannot be
    opened."""
    try:
        store = await opening
    except (StoreError, ValueError) as e:
        raise UsageError(f"cannot open {what}: {e}") from e
    opened.push_async_callback(store.close)
    return store
