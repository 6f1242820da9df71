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

Filters are SQL where-clauses (filter_sql) applied as pre-filters by vector and
full-text search alike. Keyword search is Lance's native BM25 over an FTS index on
``caption``, built at creation; rows written after the index was last folded in
(``optimize()``) are searched flat, so nothing waits for index maintenance to be found.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.expr import col, lit
from lancedb.index import FTS, IvfRq
from lancedb.query import ColumnOrdering

from ingress.stores.base import (
    EmbeddingMismatch,
    StoreError,
    StoreTimeout,
    checked_keyword_query,
    checked_query,
    checked_vectors,
)
from ingress.stores.file_lock import FileLock
from ingress.stores.records import (
    ImageFilter,
    ImageRecord,
    IndexedImage,
    Page,
    SearchHit,
    source_domain_of,
)

if TYPE_CHECKING:
    from ingress.stores.lancedb.index import IndexLag

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
CAPTION_COLUMN = "caption"
# Added in the schema's second revision; tables made before it get it at ensure_schema.
SOURCE_DOMAIN_COLUMN = "source_domain"
_CURSOR_PREFIX = "v1:"

# The full-text (BM25) index on captions. Tokenised like Weaviate's `word` tokenisation
# (lower-case runs of letters and digits, English stop words dropped, no stemming, no
# accent folding), so that a query matches the same captions on either backend. Lance
# searches rows added after the index was built flat and merges the two result sets, so
# new and re-captioned records are found before any optimize() folds them in.
_CAPTION_FTS = FTS(stem=False, remove_stop_words=True, ascii_folding=False, lower_case=True)
# Rows per commit when filling source_domain into a table made before the column.
_BACKFILL_CHUNK = 10_000
# Lance's SQL integers are int64; a larger bound is clamped rather than failing to parse.
_INT64_MAX = 2**63 - 1

# Lance already retries conflicting commits internally; these bound OUR retries on top,
# for the conflicts it gives up on (e.g. a non-rebasable concurrent transaction).
_WRITE_ATTEMPTS = 6
_BACKOFF_BASE_S = 0.05
_CONFLICT_MARKERS = ("conflict", "incompatible transaction", "too many concurrent writers")

# The vector index that create_ann_index_if_large builds: IVF partitions holding RaBitQ
# 1-bit codes. On 2 CPU cores it trains on 100k x 512 vectors in seconds where IVF_PQ
# takes minutes, and with the re-ranking below it finds the same top 10 (recall@10 is
# measured by benchmarks/suite.py).
_VECTOR_INDEX = IvfRq(distance_type="cosine")
# With an ANN index, re-rank this many times `limit` candidates on the full vectors, so
# that scores stay exact cosine similarities rather than quantised approximations.
_REFINE_FACTOR = 10
# Index upkeep (ingress.stores.lancedb.index): files of versions older than this are
# removed by optimize(). Every read checks for the latest version, so no reader holds
# one this old; Lance's default of 7 days would keep every compacted file a week.
_KEEP_OLD_VERSIONS = timedelta(hours=1)
# Each optimize() that folds new rows into the vector index adds an index segment;
# past this many the index is retrained from scratch (cheap with IVF_RQ), so that its
# partitions follow the table as it grows.
_MAX_VECTOR_INDEX_SEGMENTS = 8

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
            pa.field(SOURCE_DOMAIN_COLUMN, pa.string(), nullable=True),
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


def _sql_text(value: str) -> str:
    # Lance's SQL reads backslashes literally; a doubled quote is the only escape.
    return "'" + value.replace("'", "''") + "'"


def _sql_timestamp(value: datetime) -> str:
    # Always with an explicit UTC offset, so that the comparison with the tz-aware column
    # does not depend on how a naive literal would be read; isoformat keeps four-digit
    # years, which Lance parses from year 1 to 9999.
    return "TIMESTAMP " + _sql_text(_utc(value).isoformat(timespec="microseconds"))


def _sql_int(value: int) -> str:
    return str(max(-_INT64_MAX, min(int(value), _INT64_MAX)))


def filter_sql(filters: ImageFilter | None, after_id: str | None = None) -> str | None:
    """The where-clause (Lance SQL) admitting what ``filters`` admits, and only ids after
    ``after_id`` when given; None when nothing is excluded. Every value is a quoted
    literal: the Expr builder cannot express array containment, so this is SQL text."""
    clauses: builtins.list[str] = []
    if after_id is not None:
        clauses.append(f"id > {_sql_text(after_id)}")
    if filters is not None:
        if filters.tags_any:
            clauses.append(f"array_has_any(tags, [{', '.join(map(_sql_text, filters.tags_any))}])")
        if filters.tags_all:
            clauses.append(f"array_has_all(tags, [{', '.join(map(_sql_text, filters.tags_all))}])")
        if filters.content_types:
            clauses.append(f"content_type IN ({', '.join(map(_sql_text, filters.content_types))})")
        if filters.min_width is not None:
            clauses.append(f"width >= {_sql_int(filters.min_width)}")
        if filters.min_height is not None:
            clauses.append(f"height >= {_sql_int(filters.min_height)}")
        if filters.created_after is not None:
            clauses.append(f"created_at > {_sql_timestamp(filters.created_after)}")
        if filters.created_before is not None:
            clauses.append(f"created_at < {_sql_timestamp(filters.created_before)}")
        if filters.source_domains:
            domains = ", ".join(map(_sql_text, filters.source_domains))
            clauses.append(f"{SOURCE_DOMAIN_COLUMN} IN ({domains})")
    if not clauses:
        return None
    return " AND ".join(f"({clause})" for clause in clauses)


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
                self._table = await self._open_or_create(self._db)

    async def _open_or_create(self, db: lancedb.AsyncConnection) -> lancedb.AsyncTable:
        """The table, created if missing, checked, and brought up to this version's
        schema and indices; all under the create lock, so that one process at a time
        creates or upgrades it."""
        lock = FileLock(self.path / f".{self.table_name}.create.lock")
        await asyncio.to_thread(lock.acquire)
        try:
            table = await self._create_or_open(db)
            try:
                # Checked before anything is changed: never upgrade another model's table.
                self._check_schema(await table.schema())
                await self._upgrade(table)
            except BaseException:
                table.close()
                raise
            return table
        finally:
            lock.release()

    async def _create_or_open(self, db: lancedb.AsyncConnection) -> lancedb.AsyncTable:
        try:
            return await db.create_table(self.table_name, schema=self._schema, mode="create")
        except Exception as create_error:
            # Usually "already exists" (another process got there first). Opening is
            # the test that matters: if that fails too, report the create error.
            try:
                return await db.open_table(self.table_name)
            except Exception:
                raise create_error from None

    async def _upgrade(self, table: lancedb.AsyncTable) -> None:
        """What a table made by an earlier version lacks: the source_domain column
        (filled from source_url) and the caption full-text index. A no-op once done.
        Writers in other processes may be committing meanwhile; every step retries."""
        if SOURCE_DOMAIN_COLUMN not in (await table.schema()).names:
            column = self._schema.field(SOURCE_DOMAIN_COLUMN)
            await self._write("add column", lambda: table.add_columns(column))
        # Every open, not only right after adding the column: an upgrade cut short
        # between the two commits is finished by the next one. Normally finds nothing.
        await self._backfill_source_domain(table)
        indices = await table.list_indices()
        if not any(
            index.columns == [CAPTION_COLUMN] and index.index_type == "FTS" for index in indices
        ):

            async def build() -> None:
                await table.create_index(CAPTION_COLUMN, config=_CAPTION_FTS)

            await self._write("create caption index", build)

    async def _backfill_source_domain(self, table: lancedb.AsyncTable) -> None:
        rows = (
            await table.query()
            .where(f"{SOURCE_DOMAIN_COLUMN} IS NULL AND source_url IS NOT NULL")
            .select(["id", "source_url"])
            .to_arrow()
        ).to_pylist()
        found = [(row["id"], source_domain_of(row["source_url"])) for row in rows]
        pairs = [(image_id, domain) for image_id, domain in found if domain is not None]
        schema = pa.schema([self._schema.field("id"), self._schema.field(SOURCE_DOMAIN_COLUMN)])
        for start in range(0, len(pairs), _BACKFILL_CHUNK):
            chunk = pairs[start : start + _BACKFILL_CHUNK]
            data = pa.Table.from_pydict(
                {"id": [p[0] for p in chunk], SOURCE_DOMAIN_COLUMN: [p[1] for p in chunk]},
                schema=schema,
            )
            await self._update_columns("backfill source_domain", table, data)

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

    async def update_tags(self, image_id: str, tags: Sequence[str]) -> ImageRecord | None:
        return await self._update_record(image_id, {"tags": [builtins.list(tags)]})

    async def update_caption(
        self, image_id: str, caption: str, caption_model: str
    ) -> ImageRecord | None:
        return await self._update_record(
            image_id, {CAPTION_COLUMN: [caption], "caption_model": [caption_model]}
        )

    async def _update_record(
        self, image_id: str, columns: dict[str, builtins.list[Any]]
    ) -> ImageRecord | None:
        # Checked first so that an unknown id costs no commit.
        if await self.get(image_id) is None:
            return None
        schema = pa.schema([self._schema.field(name) for name in ("id", *columns)])
        data = pa.Table.from_pydict({"id": [image_id], **columns}, schema=schema)
        await self._update_columns("update", await self._get_table(), data)
        # Read back rather than patched locally: another process may have changed the
        # record's other fields meanwhile. None when it was deleted in between.
        return await self.get(image_id)

    async def _update_columns(self, op: str, table: lancedb.AsyncTable, data: pa.Table) -> None:
        """Set the columns ``data`` holds (besides id) on the rows with its ids; ids not
        in the table are skipped. Lance rewrites the changed rows, and moves them out of
        the indices of the changed columns, so a new caption is found by keyword search
        at once (flat) and the old one no longer is."""

        async def merge() -> None:
            await table.merge_insert("id").when_matched_update_all().execute(data)

        await self._write(op, merge)

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

    async def count(self, filters: ImageFilter | None = None) -> int:
        table = await self._get_table()
        with _store_errors("count"):
            return int(await table.count_rows(filter_sql(filters)))

    async def list(
        self, limit: int, cursor: str | None = None, filters: ImageFilter | None = None
    ) -> Page:
        if limit <= 0:
            raise ValueError("limit must be positive")
        after = decode_cursor(cursor) if cursor is not None else None
        table = await self._get_table()
        query = table.query().select(builtins.list(_RECORD_COLUMNS))
        where = filter_sql(filters, after_id=after)
        if where is not None:
            query = query.where(where)
        # One row more than asked tells whether another page exists, so the last page
        # comes back with next_cursor None instead of leaving an empty page to fetch.
        query = query.order_by([ColumnOrdering(column_name="id", ascending=True)]).limit(limit + 1)
        with _store_errors("list"):
            rows = (await query.to_arrow()).to_pylist()
        records = [_record_from_row(row) for row in rows[:limit]]
        next_cursor = encode_cursor(records[-1].id) if len(rows) > limit else None
        return Page(records=records, next_cursor=next_cursor)

    async def search(
        self, vector: np.ndarray, limit: int, filters: ImageFilter | None = None
    ) -> builtins.list[SearchHit]:
        query_vector = checked_query(vector, limit, self.dim)
        table = await self._get_table()
        # No index exists until create_ann_index_if_large builds one, so small tables get
        # an exact flat scan; refine_factor only matters once an IVF_PQ index is there.
        # The filter is a pre-filter (Lance's default): the nearest *admitted* rows. With
        # an index, the probed partitions may hold fewer than `limit` admitted rows;
        # maximum_nprobes(0) lets Lance probe further until the limit is met.
        query = (
            table.vector_search(query_vector)
            .column(VECTOR_COLUMN)
            .distance_type("cosine")
            .refine_factor(_REFINE_FACTOR)
            .maximum_nprobes(0)
            # _distance named: Lance will stop adding it to an explicit selection.
            .select([*_RECORD_COLUMNS, VECTOR_COLUMN, "_distance"])
            .limit(limit)
        )
        where = filter_sql(filters)
        if where is not None:
            query = query.where(where)
        with _store_errors("search"):
            rows = (await query.to_arrow()).to_pylist()
        hits = []
        for row in rows:
            score = 1.0 - float(row["_distance"])
            hits.append(
                SearchHit(
                    record=_record_from_row(row),
                    score=score,
                    vector_score=score,
                    vector=np.asarray(row[VECTOR_COLUMN], dtype=np.float32),
                )
            )
        # Lance returns nearest first already; sorting makes "best first" independent of it.
        hits.sort(key=lambda hit: hit.score, reverse=True)
        return hits

    async def keyword_search(
        self, text: str, limit: int, filters: ImageFilter | None = None
    ) -> builtins.list[SearchHit]:
        terms = checked_keyword_query(text, limit)
        if not terms:
            return []
        table = await self._get_table()
        # The terms, not the raw text: Lance reads the text as plain words anyway, and
        # this keeps what counts as a term the same on every backend. The filter is a
        # pre-filter here too, over indexed and not yet indexed rows alike.
        query = (
            table.query()
            .nearest_to_text(" ".join(terms), columns=CAPTION_COLUMN)
            .select([*_RECORD_COLUMNS, VECTOR_COLUMN, "_score"])
            .limit(limit)
        )
        where = filter_sql(filters)
        if where is not None:
            query = query.where(where)
        with _store_errors("keyword search"):
            rows = (await query.to_arrow()).to_pylist()
        hits = []
        for row in rows:
            score = float(row["_score"])
            hits.append(
                SearchHit(
                    record=_record_from_row(row),
                    score=score,
                    keyword_score=score,
                    vector=np.asarray(row[VECTOR_COLUMN], dtype=np.float32),
                )
            )
        hits.sort(key=lambda hit: hit.score, reverse=True)
        return hits

    # -- maintenance -------------------------------------------------------------

    async def create_ann_index_if_large(self, threshold_rows: int = 50_000) -> bool:
        """Build the vector index (IVF_RQ, cosine) once the table has threshold_rows rows.

        Returns True when an index was built. Does nothing when the table is smaller or
        already has a vector index (new rows are still found: Lance scans unindexed rows
        flat; ``optimize()`` folds them into the index). Called in the background by
        ingress.stores.lancedb.index; writes and searches go on while it builds.
        """
        table = await self._get_table()
        with _store_errors("create index"):
            if await table.count_rows() < threshold_rows:
                return False
            if self._find_vector_index(await table.list_indices()) is not None:
                return False
        await self._build_vector_index(table)
        return True

    async def _build_vector_index(self, table: lancedb.AsyncTable) -> None:
        async def build() -> None:
            await table.create_index(VECTOR_COLUMN, config=_VECTOR_INDEX, replace=True)

        await self._write("create index", build)

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

    # -- index upkeep (driven by ingress.stores.lancedb.index) -------------------

    async def index_lag(self) -> IndexLag:
        """How far the indices and data files are behind the writes: what upkeep needs to
        decide whether to build, refresh or compact. Cheap: manifest metadata only."""
        # Imported here: lancedb_index imports this module.
        from ingress.stores.lancedb.index import IndexLag as Lag

        table = await self._get_table()
        with _store_errors("index state"):
            indices = await table.list_indices()
            rows = await table.count_rows()
            # A dict at runtime in lancedb 0.40, whatever its type stubs say.
            stats: Any = await table.stats()
        fragments = stats["fragment_stats"]
        vector = self._find_vector_index(indices)
        return Lag(
            rows=int(rows),
            vector_index=vector is not None,
            unindexed_rows=max((int(i.num_unindexed_rows or 0) for i in indices), default=0),
            small_fragments=int(fragments["num_small_fragments"]),
        )

    async def optimize(self) -> None:
        """Merge small data files (each write adds one) and fold rows written since into
        every index (vector and caption), in one Lance optimize. The vector index is
        retrained first once it has more than _MAX_VECTOR_INDEX_SEGMENTS segments."""
        table = await self._get_table()
        with _store_errors("index state"):
            vector = self._find_vector_index(await table.list_indices())
        if vector is not None and (vector.num_segments or 0) > _MAX_VECTOR_INDEX_SEGMENTS:
            await self._build_vector_index(table)

        async def optimize() -> None:
            await table.optimize(cleanup_older_than=_KEEP_OLD_VERSIONS)

        await self._write("optimize", optimize)

    @staticmethod
    def _find_vector_index(indices: Any) -> Any | None:
        return next((index for index in indices if index.columns == [VECTOR_COLUMN]), None)


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
