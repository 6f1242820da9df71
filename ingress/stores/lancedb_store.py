"""VectorStore on an embedded LanceDB directory, shared by several replica processes.

Everything goes through LanceDB's async API (``lancedb.connect_async``); the only
blocking call left, taking the cross-process file lock that guards table creation,
runs in a worker thread.

Two LanceDB behaviours shape this module (both checked against lancedb 0.40):

- Creating a table is an Overwrite commit in Lance. Two processes that race to create
  the same table can BOTH succeed, the loser landing as version 2 and wiping whatever
  the winner had written in between. Table creation is therefore serialised with an
  ``fcntl.flock`` on a lock file beside the table (only at ensure_schema, never on the
  data path).
- ``merge_insert`` from several processes inserting the same new id at once leaves
  duplicate rows, unless the table declares ``id`` as its (unenforced) primary key;
  then Lance detects the conflict and retries. The key is declared in the schema at
  creation, so no table ever exists without it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import random
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.expr import col, lit
from lancedb.index import IvfPq
from lancedb.query import ColumnOrdering

from ingress.records import ImageRecord, IndexedImage, Page, SearchHit
from ingress.stores.base import (
    EmbeddingMismatch,
    StoreError,
    StoreTimeout,
    checked_query,
    checked_vectors,
)

T = TypeVar("T")

# Schema metadata keys: they let any process (or a later deployment) find out which
# model filled the table before it mixes in vectors of another.
META_EMBEDDING_MODEL = b"imagesearch.embedding_model"
META_DIM = b"imagesearch.dim"
META_SCHEMA_VERSION = b"imagesearch.schema_version"
SCHEMA_VERSION = b"1"

# How Lance marks the primary key on a field; see the module docstring for why it matters.
_PRIMARY_KEY_META = {"lance-schema:unenforced-primary-key:position": "1"}

VECTOR_COLUMN = "vector"
_CURSOR_PREFIX = "v1:"

# Lance already retries conflicting commits internally; these bound OUR retries on top,
# for the conflicts it gives up on (e.g. a non-rebasable concurrent transaction).
_WRITE_ATTEMPTS = 6
_BACKOFF_BASE_S = 0.05
_CONFLICT_MARKERS = ("conflict", "incompatible transaction", "too many concurrent writers")

# With an ANN index, re-rank this many times `limit` candidates on the full vectors, so
# that scores stay exact cosine similarities rather than PQ approximations.
_REFINE_FACTOR = 10

# Zero: every read checks for commits made by other replica processes, so a record one
# replica just wrote is visible to all of them. On a local disk that check is one small
# manifest lookup.
_READ_CONSISTENCY = timedelta(0)


def _arrow_schema(embedding_model: str, dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False, metadata=_PRIMARY_KEY_META),
            pa.field("caption", pa.string(), nullable=False),
            pa.field("width", pa.int64(), nullable=False),
            pa.field("height", pa.int64(), nullable=False),
            pa.field("content_type", pa.string(), nullable=False),
            pa.field("size_bytes", pa.int64(), nullable=False),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("source_url", pa.string(), nullable=True),
            pa.field("tags", pa.list_(pa.string()), nullable=False),
            pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("caption_model", pa.string(), nullable=False),
            pa.field("embedding_model", pa.string(), nullable=False),
            pa.field(VECTOR_COLUMN, pa.list_(pa.float32(), dim), nullable=False),
        ],
        metadata={
            META_EMBEDDING_MODEL: embedding_model.encode(),
            META_DIM: str(dim).encode(),
            META_SCHEMA_VERSION: SCHEMA_VERSION,
        },
    )


_RECORD_COLUMNS: tuple[str, ...] = tuple(ImageRecord.model_fields)


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + last_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The id a cursor points after; ValueError for anything this store did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        text = raw.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise ValueError("malformed cursor") from e
    last_id = text.removeprefix(_CURSOR_PREFIX)
    # The round-trip check also rejects non-canonical encodings (characters the decoder
    # silently drops), so that one position has exactly one cursor.
    if not text.startswith(_CURSOR_PREFIX) or not last_id or encode_cursor(last_id) != cursor:
        raise ValueError("malformed cursor")
    return last_id


def _utc(dt: datetime) -> datetime:
    # Naive datetimes are taken as UTC (that is what the column means); aware ones are
    # converted so that every stored instant reads back in one timezone.
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _is_conflict(exc: BaseException) -> bool:
    message = str(exc).lower()
    return any(marker in message for marker in _CONFLICT_MARKERS)


@contextmanager
def _store_errors(op: str) -> Iterator[None]:
    """Turn LanceDB / IO failures into StoreError, keeping the cause."""
    try:
        yield
    except StoreError:
        raise
    except TimeoutError as e:
        raise StoreTimeout(f"lancedb {op} timed out") from e
    except Exception as e:
        raise StoreError(f"lancedb {op} failed: {e}") from e


class _CreateLock:
    """Exclusive cross-process lock on a file (see the module docstring for why)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[bytes] | None = None

    def acquire(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self._path, "ab")  # noqa: SIM115 - held until release()
        if sys.platform != "win32":
            import fcntl

            # Blocks; callers run this in a thread. The OS drops it if the process dies.
            # (No fcntl on Windows: there creation relies on catching "already exists".)
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX)
            except BaseException:
                file.close()
                raise
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            # Closing the file drops the flock.
            self._file.close()
            self._file = None


class LanceDBVectorStore:
    """Image records with their vectors in one LanceDB table."""

    def __init__(
        self, path: str | Path, embedding_model: str, dim: int, table_name: str = "images"
    ) -> None:
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.path = Path(path)
        self.embedding_model = embedding_model
        self.dim = dim
        self.table_name = table_name
        self._schema = _arrow_schema(embedding_model, dim)
        self._db: lancedb.AsyncConnection | None = None
        self._table: lancedb.AsyncTable | None = None
        # Coroutines of one process share the connection; open it once.
        self._open_lock = asyncio.Lock()

    # -- schema ------------------------------------------------------------------

    async def ensure_schema(self) -> None:
        async with self._open_lock:
            if self._table is not None:
                return
            with _store_errors("open"):
                if self._db is None:
                    self._db = await lancedb.connect_async(
                        self.path, read_consistency_interval=_READ_CONSISTENCY
                    )
                table = await self._open_or_create(self._db)
                schema = await table.schema()
            try:
                self._check_schema(schema)
            except EmbeddingMismatch:
                table.close()
                raise
            self._table = table

    async def _open_or_create(self, db: lancedb.AsyncConnection) -> lancedb.AsyncTable:
        lock = _CreateLock(self.path / f".{self.table_name}.create.lock")
        await asyncio.to_thread(lock.acquire)
        try:
            try:
                return await db.create_table(self.table_name, schema=self._schema, mode="create")
            except Exception as create_error:
                # Usually "already exists" (another process got there first). Opening
                # is the test that matters: if that fails too, report the create error.
                try:
                    return await db.open_table(self.table_name)
                except Exception:
                    raise create_error from None
        finally:
            lock.release()

    def _check_schema(self, schema: pa.Schema) -> None:
        meta = schema.metadata or {}
        model = meta.get(META_EMBEDDING_MODEL, b"").decode()
        dim_text = meta.get(META_DIM, b"").decode()
        if model != self.embedding_model or dim_text != str(self.dim):
            raise EmbeddingMismatch(
                f"table {self.table_name!r} at {self.path} holds vectors of model "
                f"{model or '?'!r} dim {dim_text or '?'}, not {self.embedding_model!r} "
                f"dim {self.dim}"
            )
        vector_type = schema.field(VECTOR_COLUMN).type
        if not pa.types.is_fixed_size_list(vector_type) or vector_type.list_size != self.dim:
            raise EmbeddingMismatch(f"vector column is {vector_type}, expected dim {self.dim}")

    @staticmethod
    async def recorded_embedding(path: str | Path, table_name: str = "images") -> tuple[str, int]:
        """(embedding_model, dim) that an existing table was created for, read from its
        schema metadata: what a tool that must not load the models needs to open the
        store. Creates nothing; StoreError naming the path when there is no such table
        or it was not created by this store."""
        path = Path(path)
        # Checked first: connecting to a directory that is not there would create it.
        if not await asyncio.to_thread(path.is_dir):
            raise StoreError(f"no LanceDB database at {path}")
        with _store_errors("open"):
            db = await lancedb.connect_async(path)
            try:
                # list_tables pages; the one name asked for is all that matters here.
                if table_name not in await _table_names(db):
                    raise StoreError(f"no table {table_name!r} in the LanceDB database at {path}")
                table = await db.open_table(table_name)
                try:
                    schema = await table.schema()
                finally:
                    table.close()
            finally:
                db.close()
        meta = schema.metadata or {}
        model = meta.get(META_EMBEDDING_MODEL, b"").decode()
        dim_text = meta.get(META_DIM, b"").decode()
        if not model or not dim_text.isdigit() or int(dim_text) <= 0:
            raise StoreError(
                f"table {table_name!r} at {path} records no embedding model and dim; "
                "it was not created by this service"
            )
        return model, int(dim_text)

    async def _get_table(self) -> lancedb.AsyncTable:
        if self._table is None:
            await self.ensure_schema()
        assert self._table is not None
        return self._table

    # -- writes ------------------------------------------------------------------

    async def upsert(self, images: Sequence[IndexedImage]) -> None:
        if not images:
            return
        data = self._to_arrow(images)
        table = await self._get_table()

        async def merge() -> None:
            await (
                table.merge_insert("id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(data)
            )

        await self._write("upsert", merge)

    async def delete(self, image_id: str) -> bool:
        table = await self._get_table()

        async def remove() -> int:
            # An Expr literal, not SQL text: no quoting to get wrong, whatever the id holds.
            result = await table.delete(col("id") == lit(image_id))
            # The attribute exists at runtime (and in lancedb's docs) but not in its stubs.
            return int(cast(Any, result).num_deleted_rows)

        return await self._write("delete", remove) > 0

    async def _write(self, op: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run a commit, retrying optimistic-concurrency conflicts with jittered backoff."""
        for n in range(_WRITE_ATTEMPTS):
            try:
                with _store_errors(op):
                    return await attempt()
            except StoreError as e:
                if n == _WRITE_ATTEMPTS - 1 or not _is_conflict(e.__cause__ or e):
                    raise
            await asyncio.sleep(_BACKOFF_BASE_S * 2**n * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _to_arrow(self, images: Sequence[IndexedImage]) -> pa.Table:
        """Validate and convert; refuses other models' records and wrongly shaped vectors."""
        vectors = np.stack(checked_vectors(images, self.embedding_model, self.dim))
        columns: dict[str, builtins.list[Any]] = {name: [] for name in _RECORD_COLUMNS}
        for image in images:
            row = image.record.model_dump()
            row["created_at"] = _utc(row["created_at"])
            for name in _RECORD_COLUMNS:
                columns[name].append(row[name])
        arrays = {
            name: pa.array(values, type=self._schema.field(name).type)
            for name, values in columns.items()
        }
        arrays[VECTOR_COLUMN] = pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.ravel()), self.dim
        )
        # from_pydict takes the column order from the schema, not from the dict.
        return pa.Table.from_pydict(arrays, schema=self._schema)

    # -- reads -------------------------------------------------------------------

    async def get(self, image_id: str) -> ImageRecord | None:
        rows = await self._get_rows(image_id, _RECORD_COLUMNS)
        return _record_from_row(rows[0]) if rows else None

    async def get_vector(self, image_id: str) -> np.ndarray | None:
        rows = await self._get_rows(image_id, (VECTOR_COLUMN,))
        return np.asarray(rows[0][VECTOR_COLUMN], dtype=np.float32) if rows else None

    async def _get_rows(
        self, image_id: str, columns: Sequence[str]
    ) -> builtins.list[dict[str, Any]]:
        table = await self._get_table()
        with _store_errors("get"):
            result = await (
                table.query()
                .where(col("id") == lit(image_id))
                .select(builtins.list(columns))
                .limit(1)
                .to_arrow()
            )
        return result.to_pylist()

    async def count(self) -> int:
        table = await self._get_table()
        with _store_errors("count"):
            return int(await table.count_rows())

    async def list(self, limit: int, cursor: str | None = None) -> Page:
        if limit <= 0:
            raise ValueError("limit must be positive")
        after = decode_cursor(cursor) if cursor is not None else None
        table = await self._get_table()
        query = table.query().select(builtins.list(_RECORD_COLUMNS))
        if after is not None:
            query = query.where(col("id") > lit(after))
        # One row more than asked tells whether another page exists, so the last page
        # comes back with next_cursor None instead of leaving an empty page to fetch.
        query = query.order_by([ColumnOrdering(column_name="id", ascending=True)]).limit(limit + 1)
        with _store_errors("list"):
            rows = (await query.to_arrow()).to_pylist()
        records = [_record_from_row(row) for row in rows[:limit]]
        next_cursor = encode_cursor(records[-1].id) if len(rows) > limit else None
        return Page(records=records, next_cursor=next_cursor)

    async def search(self, vector: np.ndarray, limit: int) -> builtins.list[SearchHit]:
        query_vector = checked_query(vector, limit, self.dim)
        table = await self._get_table()
        # No index exists until create_ann_index_if_large builds one, so small tables get
        # an exact flat scan; refine_factor only matters once an IVF_PQ index is there.
        query = (
            table.vector_search(query_vector)
            .column(VECTOR_COLUMN)
            .distance_type("cosine")
            .refine_factor(_REFINE_FACTOR)
            .select(builtins.list(_RECORD_COLUMNS))
            .limit(limit)
        )
        with _store_errors("search"):
            rows = (await query.to_arrow()).to_pylist()
        hits = [
            SearchHit(record=_record_from_row(row), score=1.0 - float(row["_distance"]))
            for row in rows
        ]
        # Lance returns nearest first already; sorting makes "best first" independent of it.
        hits.sort(key=lambda hit: hit.score, reverse=True)
        return hits

    # -- maintenance -------------------------------------------------------------

    async def create_ann_index_if_large(self, threshold_rows: int = 50_000) -> bool:
        """Build an IVF_PQ (cosine) index once the table has threshold_rows rows.

        Returns True when an index was built. Does nothing when the table is smaller or
        already has a vector index (new rows are still found: Lance scans unindexed rows
        flat; ``optimize()`` folds them into the index). Not called automatically yet.
        """
        table = await self._get_table()
        with _store_errors("create index"):
            if await table.count_rows() < threshold_rows:
                return False
            indices = await table.list_indices()
        if any(VECTOR_COLUMN in index.columns for index in indices):
            return False

        async def build() -> None:
            await table.create_index(
                VECTOR_COLUMN, config=IvfPq(distance_type="cosine"), replace=True
            )

        await self._write("create index", build)
        return True

    async def close(self) -> None:
        # Both close() calls are synchronous and idempotent in lancedb; a later call on
        # this store reopens lazily.
        async with self._open_lock:
            if self._table is not None:
                self._table.close()
                self._table = None
            if self._db is not None:
                self._db.close()
                self._db = None


async def _table_names(db: lancedb.AsyncConnection) -> set[str]:
    names: set[str] = set()
    page_token: str | None = None
    while True:
        response = await db.list_tables(page_token=page_token)
        names.update(response.tables)
        page_token = response.page_token
        if not page_token:
            return names


def _record_from_row(row: dict[str, Any]) -> ImageRecord:
    fields = {name: row[name] for name in _RECORD_COLUMNS}
    # Arrow hands back zoneinfo UTC; normalise to datetime.timezone.utc.
    fields["created_at"] = _utc(fields["created_at"])
    fields["tags"] = builtins.list(fields["tags"] or [])
    return ImageRecord(**fields)
