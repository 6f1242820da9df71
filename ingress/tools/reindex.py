"""Re-captioning and re-embedding the stored images after a model change.

Two commands, both reading the stores and the models from a serve config::

    python -m ingress.tools.reindex captions --config serve_config.yaml [--all]
    python -m ingress.tools.reindex vectors --config NEW.yaml --from-table OLD   # LanceDB
    python -m ingress.tools.reindex vectors --config NEW.yaml --from-collection Old  # Weaviate

``captions`` walks the vector store in id order and re-captions, in place, every record
whose ``caption_model`` is not the configured captioner (every record with ``--all``).
Vectors are not touched, so search stays online and correct throughout.

``vectors`` serves an embedder change. A vector store holds the vectors of one model
only, so the new vectors go into a NEW table (collection): the config names the new
embedder and the new table, ``--from-table`` the old one, which the running service
keeps serving until the new config is deployed. Every record is copied with all its
fields but ``embedding_model`` and a vector made by the new embedder from its stored
image. Ids already in the target are skipped, so running it again (right before the
switch, and after it) copies only what was added meanwhile.

Both decode the stored blobs exactly as ingest does (ingress.core.imaging with the configured
intake limits) and run the models in-process, in batches. Progress is checkpointed in a
small JSON state file after every page, so an interrupted run continues where it
stopped; the file is removed when a run completes. A per-image failure (blob missing,
undecodable, the model failed on it) is reported by id and does not stop the run.

Exit status: 0 everything done, 1 some images failed (run again to retry them), 2 usage
or configuration error (stores or models that cannot be opened included), 3 a store
failed during the run (run again: it resumes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ingress.app import image_limits
from ingress.core.errors import IntakeError
from ingress.core.imaging import ImageLimits, decode_image
from ingress.settings import AppArgs, LanceDBArgs, StorageArgs
from ingress.stores.base import (
    BlobNotFound,
    BlobStore,
    EmbeddingMismatch,
    StoreError,
    VectorStore,
)
from ingress.stores.factory import open_blob_store, open_vector_store
from ingress.stores.records import ImageRecord, IndexedImage
from ingress.tools.config import (
    ConfigError,
    StoresUnavailable,
    describe_storage,
    describe_vectors,
    load_app_args,
    open_recorded_stores,
    print_keys,
    recorded_embedding,
    run_command,
    without_bucket_creation,
)

if TYPE_CHECKING:
    from deployments.settings import CaptionerSettings, EmbedderSettings

logger = logging.getLogger("ingress.tools.reindex")

_Store = TypeVar("_Store", VectorStore, BlobStore)

EXIT_DONE = 0
EXIT_IMAGES_FAILED = 1
EXIT_USAGE = 2
EXIT_STORE_FAILED = 3

DEFAULT_BATCH_SIZE = 16
# Target ids per list() call in the merge walk of `vectors`; records only, no vectors.
_TARGET_PAGE = 500
# Blobs read and decoded at once.
_BLOB_CONCURRENCY = 8
# Failed ids kept in the state file across resumed runs; the count is always exact.
_FAILURES_KEPT = 1000
STATE_VERSION = 1


class UsageError(Exception):
    """The command cannot run as asked; the message says why (exit status 2)."""


# -- checkpoints ------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """Where a run is: written after every page, read back by the next run of the same
    job (the same stores and models); another job's file is ignored."""

    job: dict[str, Any]
    # The page to continue from and the last id finished (None: from the start).
    cursor: str | None = None
    last_id: str | None = None
    walked: int = 0
    changed: int = 0
    skipped: int = 0
    # Records deleted between the listing and their update.
    gone: int = 0
    failed: int = 0
    # id -> why, the first _FAILURES_KEPT of them.
    failures: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, job: dict[str, Any]) -> Checkpoint | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read the state file {path}: {e}") from e
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise UsageError(f"{path} is not a state file of this command; remove it or --state")
        if data.get("job") != job:
            print(
                f"note: {path} belongs to another run ({data.get('job')}); starting afresh",
                file=sys.stderr,
            )
            return None
        counts = {name: data[name] for name in cls._count_names() if name in data}
        return cls(job=job, **counts)

    def save(self, path: Path) -> None:
        # Written beside and renamed over: an interruption never leaves half a file.
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": STATE_VERSION, "job": self.job, **self._counts()}
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(data, indent=1))
        os.replace(partial, path)

    @staticmethod
    def remove(path: Path) -> None:
        """A completed run leaves no state: the next one starts from the beginning."""
        path.unlink(missing_ok=True)

    @classmethod
    def _count_names(cls) -> list[str]:
        """The fields the state file holds beside version and job, in declaration order."""
        return [f.name for f in fields(cls) if f.name != "job"]

    def _counts(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._count_names()}

    def fail(self, image_id: str, why: str) -> None:
        self.failed += 1
        if len(self.failures) < _FAILURES_KEPT:
            self.failures[image_id] = why
        logger.warning("%s failed: %s", image_id, why)


class Progress:
    """One line on stderr per page: done/total, rate and ETA."""

    def __init__(self, what: str, verb: str, total: int, state: Checkpoint) -> None:
        self.what = what
        self.verb = verb
        self.total = total
        self.state = state
        self._started = time.monotonic()
        self._walked_at_start = state.walked

    def report(self) -> None:
        state = self.state
        total = max(self.total, state.walked)
        share = f" ({100 * state.walked / total:.0f}%)" if total else ""
        walked_now = state.walked - self._walked_at_start
        elapsed = time.monotonic() - self._started
        rate = walked_now / elapsed if elapsed > 0 else 0.0
        eta = _duration((total - state.walked) / rate) if rate > 0 else "?"
        print(
            f"{self.what}: {state.walked}/{total} records{share}, {state.changed} {self.verb}, "
            f"{state.skipped} skipped, {state.failed} failed; {rate:.1f} records/s, ETA {eta}",
            file=sys.stderr,
            flush=True,
        )


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def default_state_path(storage: StorageArgs, name: str) -> Path:
    return storage.data_dir / "reindex" / f"{name}.json"


# -- images from their blobs --------------------------------------------------------------


async def load_pixels(
    blobs: BlobStore, records: Sequence[ImageRecord], limits: ImageLimits, state: Checkpoint
) -> list[tuple[ImageRecord, np.ndarray]]:
    """The compact RGB copy of each record's stored image, decoded as ingest decodes it;
    the records whose image cannot be had are recorded as failures in state."""
    gate = asyncio.Semaphore(_BLOB_CONCURRENCY)

    async def one(record: ImageRecord) -> np.ndarray | str:
        async with gate:
            try:
                blob = await blobs.get(record.blob_key)
            except BlobNotFound:
                return f"blob {record.blob_key} is missing"
            except StoreError as e:
                return f"blob store failed: {e}"
            try:
                image = await asyncio.to_thread(decode_image, blob.data, limits, blob.content_type)
            except IntakeError as e:
                return f"stored image cannot be decoded: {e}"
        if image.sha256 != record.sha256:
            return f"blob {record.blob_key} does not hold the bytes the record was made from"
        return image.pixels

    outcomes = await asyncio.gather(*(one(record) for record in records))
    loaded: list[tuple[ImageRecord, np.ndarray]] = []
    for record, outcome in zip(records, outcomes, strict=True):
        if isinstance(outcome, str):
            state.fail(record.id, outcome)
        else:
            loaded.append((record, outcome))
    return loaded


# -- the models, in-process ---------------------------------------------------------------


class Captioner:
    """The configured captioner, loaded on first use (a run with nothing to re-caption
    loads no model)."""

    def __init__(self, settings: CaptionerSettings) -> None:
        self.settings = settings
        self.model_id = settings.model.model_id
        self._model: Any = None

    async def load(self) -> None:
        if self._model is None:
            from deployments.captioner import BlipCaptioner

            try:
                self._model = await asyncio.to_thread(BlipCaptioner, self.settings)
            except RuntimeError as e:
                # What load_pretrained raises for a model that cannot be loaded.
                raise UsageError(f"cannot load the captioner: {e}") from e

    async def __call__(self, images: list[np.ndarray]) -> list[str | Exception]:
        from deployments.batching import run_isolated

        await self.load()
        # The unbatched generate of the deployment, on the model's own warmed thread (see
        # deployments.batching.ModelThread); run_isolated retries a failed batch item by
        # item, so one bad image fails alone.
        return await self._model._thread.run(run_isolated, self._model._generate, images)


class Embedder:
    """The configured embedder; loaded up front, since the target needs its dimension."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.model_id: str = model.model_id
        self.dim: int = model.dim

    @classmethod
    async def load(cls, settings: EmbedderSettings) -> Embedder:
        from deployments.embedder import ClipEmbedder

        try:
            return cls(await asyncio.to_thread(ClipEmbedder, settings))
        except RuntimeError as e:
            raise UsageError(f"cannot load the embedder: {e}") from e

    async def __call__(self, images: list[np.ndarray]) -> list[np.ndarray | Exception]:
        from deployments.batching import run_isolated

        # On the model's own warmed thread, as Captioner.__call__.
        return await self._model._thread.run(run_isolated, self._model._image_vectors, images)


# -- walking the source ---------------------------------------------------------------------


async def pages(
    store: VectorStore,
    state: Checkpoint,
    what: str,
    verb: str,
    *,
    batch_size: int,
    state_path: Path,
) -> AsyncIterator[Sequence[ImageRecord]]:
    """The store's records, a page at a time in id order, from state's cursor. Once the
    caller is done with a page it is counted into state, progress is reported and (but
    for the last page) state is saved with the next cursor. The caller removes the state
    file when the whole run is done."""
    progress = Progress(what, verb, await store.count(), state)
    while True:
        page = await store.list(batch_size, state.cursor)
        yield page.records
        state.walked += len(page.records)
        if page.records:
            state.last_id = page.records[-1].id
        progress.report()
        if page.next_cursor is None:
            return
        state.cursor = page.next_cursor
        state.save(state_path)


# -- captions -------------------------------------------------------------------------------


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
        loaded = await load_pixels(blobs, todo, limits, state) if todo else []
        if loaded:
            captions = await captioner([pixels for _, pixels in loaded])
            for (record, _), caption in zip(loaded, captions, strict=True):
                if isinstance(caption, Exception):
                    state.fail(record.id, f"captioning failed: {caption}")
                elif await vectors.update_caption(record.id, caption, captioner.model_id) is None:
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
    path = state_path or default_state_path(storage, f"captions-{_vectors_name(storage)}")
    job = {
        "command": "captions",
        "vectors": describe_vectors(storage),
        "caption_model": captioner.model_id,
        "all": all_records,
    }
    try:
        async with open_recorded_stores(storage) as (vectors, blobs):
            state = _resumed(path, job)
            await recaption(
                vectors,
                blobs,
                captioner,
                image_limits(args.intake),
                state,
                all_records=all_records,
                batch_size=batch_size,
                state_path=path,
            )
    except (StoresUnavailable, UsageError) as e:
        return _usage(str(e))
    except StoreError as e:
        return _store_failed(e, path)
    print(
        f"re-captioned {state.changed} of {state.walked} records with {captioner.model_id} "
        f"({state.skipped} already current, {state.gone} deleted meanwhile)"
    )
    return _failures(state)


# -- vectors --------------------------------------------------------------------------------


class TargetIds:
    """The target's ids, walked once in id order beside the source's pages (both stores
    list by id), so that knowing which ids the target has costs one list page per
    _TARGET_PAGE records rather than a lookup per record."""

    def __init__(self, target: VectorStore, after: str | None) -> None:
        self._target = target
        # Ids up to `after` belong to pages an earlier run finished.
        self._after = after
        self._buffer: list[str] = []
        self._cursor: str | None = None
        self._exhausted = False
        # Target ids no source page holds: deleted from the source after they were
        # copied, or added through the new table already.
        self.only_in_target = 0

    async def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ids (one source page, ascending) the target holds. An id is only ever
        reported present when the target listed it, so an order the stores did not
        agree on could only cost extra work, never a record left out."""
        if not ids:
            return set()
        upper = max(ids)
        while not self._exhausted and (not self._buffer or self._buffer[-1] < upper):
            page = await self._target.list(_TARGET_PAGE, self._cursor)
            self._buffer.extend(
                r.id for r in page.records if self._after is None or r.id > self._after
            )
            self._cursor = page.next_cursor
            self._exhausted = page.next_cursor is None
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
            page = await self._target.list(_TARGET_PAGE, self._cursor)
            self.only_in_target += len(page.records)
            self._cursor = page.next_cursor
            self._exhausted = page.next_cursor is None
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
        loaded = await load_pixels(blobs, todo, limits, state) if todo else []
        if loaded:
            vectors = await embedder([pixels for _, pixels in loaded])
            copies: list[IndexedImage] = []
            for (record, _), vector in zip(loaded, vectors, strict=True):
                if isinstance(vector, Exception):
                    state.fail(record.id, f"embedding failed: {vector}")
                else:
                    copy = record.model_copy(update={"embedding_model": embedder.model_id})
                    copies.append(IndexedImage(copy, vector))
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
        return _usage(str(e))
    print(f"from: {describe_vectors(old)}")
    print(f"to: {describe_storage(storage)}")
    new_model = args.embedder.model.model_id
    try:
        old_model, old_dim = await recorded_embedding(old)
    except (StoreError, ValueError) as e:
        return _usage(f"cannot open the source: {e}")
    print(f"embedder: {old_model} (dim {old_dim}) -> {new_model}")
    target_model = await _recorded_or_none(storage)
    if target_model is not None and target_model[0] != new_model:
        return _usage(
            f"the target {describe_vectors(storage)} already holds vectors of "
            f"{target_model[0]!r}, not of the configured embedder {new_model!r}: "
            "name a new table (collection) in the config"
        )
    try:
        embedder = await Embedder.load(args.embedder)
    except UsageError as e:
        return _usage(str(e))
    name = f"vectors-{_vectors_name(old)}-to-{_vectors_name(storage)}"
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
            state = _resumed(path, job)
            only_in_target = await reembed(
                source,
                target,
                blobs,
                embedder,
                image_limits(args.intake),
                state,
                batch_size=batch_size,
                state_path=path,
            )
    except UsageError as e:
        return _usage(str(e))
    except StoreError as e:
        return _store_failed(e, path)
    print(
        f"embedded {state.changed} of {state.walked} records with {embedder.model_id} "
        f"(dim {embedder.dim}); {state.skipped} were in the target already"
    )
    if only_in_target:
        print(
            f"{only_in_target} records are in the target but not in the source (deleted from "
            "the old table after they were copied, or added through the new one); left alone"
        )
    return _failures(state)


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


# -- shared by both ---------------------------------------------------------------------


def _vectors_name(storage: StorageArgs) -> str:
    vectors = storage.vectors
    return vectors.table if isinstance(vectors, LanceDBArgs) else vectors.collection


def _resumed(path: Path, job: dict[str, Any]) -> Checkpoint:
    state = Checkpoint.load(path, job)
    if state is None:
        return Checkpoint(job)
    print(
        f"resuming from {path}: {state.walked} records done before "
        f"({state.changed} changed, {state.failed} failed)",
        file=sys.stderr,
    )
    return state


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _store_failed(error: StoreError, state_path: Path) -> int:
    logger.debug("store failure", exc_info=True)
    print(
        f"error: a store failed: {error}\nprogress is saved in {state_path}; "
        "run the same command again to continue",
        file=sys.stderr,
    )
    return EXIT_STORE_FAILED


def _failures(state: Checkpoint) -> int:
    if not state.failed:
        return EXIT_DONE
    shown = [f"{image_id}: {why}" for image_id, why in state.failures.items()]
    print_keys("failed", shown)
    if state.failed > len(shown):
        print(f"  ({state.failed - len(shown)} more not kept)")
    print("run the command again to retry them; they are left as they were")
    return EXIT_IMAGES_FAILED


def _batch_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 512:
        raise argparse.ArgumentTypeError("must be between 1 and 512")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ingress.tools.reindex",
        description=(
            "Re-caption or re-embed the stored images with the configured models. "
            "Exit 0: all done; 1: some images failed; 2: usage or configuration error; "
            "3: a store failed (run again to continue)."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", type=Path, required=True, help="a serve config YAML")
        sub.add_argument(
            "--app", help="application name in the config (default: its only application)"
        )
        sub.add_argument(
            "--batch-size",
            type=_batch_size,
            default=DEFAULT_BATCH_SIZE,
            help=f"records per page and model batch (default {DEFAULT_BATCH_SIZE})",
        )
        sub.add_argument(
            "--state",
            type=Path,
            help="progress file to resume from (default: <data_dir>/reindex/<job>.json)",
        )

    captions = commands.add_parser(
        "captions",
        help="re-caption, in place, records made by another captioner",
        description=(
            "Re-caption every record whose caption_model is not the configured captioner "
            "(--all: every record). Vectors are untouched; search stays online."
        ),
    )
    common(captions)
    captions.add_argument("--all", action="store_true", help="re-caption every record")

    vectors = commands.add_parser(
        "vectors",
        help="embed every image again into a new table for a new embedder",
        description=(
            "Copy every record of the old table (collection) into the one the config "
            "names, with a vector of the configured embedder. Ids already there are "
            "skipped: run it again to copy what was added meanwhile."
        ),
    )
    common(vectors)
    source = vectors.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-table", help="the old LanceDB table")
    source.add_argument("--from-collection", help="the old Weaviate collection")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (argparse exits 2 itself on bad usage).
    Configures no logging: ``python -m ingress.tools.reindex`` does that."""
    args = _parser().parse_args(argv)
    try:
        app_args = load_app_args(args.config, args.app)
    except ConfigError as e:
        return _usage(str(e))
    if args.command == "captions":
        return asyncio.run(
            run_captions(
                app_args, all_records=args.all, batch_size=args.batch_size, state_path=args.state
            )
        )
    return asyncio.run(
        run_vectors(
            app_args,
            from_table=args.from_table,
            from_collection=args.from_collection,
            batch_size=args.batch_size,
            state_path=args.state,
        )
    )


if __name__ == "__main__":
    run_command(main)
