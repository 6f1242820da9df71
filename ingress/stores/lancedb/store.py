"""VectorStore on an embedded LanceDB directory, shared by several replica processes.

Everything goes through LanceDB's async API (``lancedb.connect_async``); the only
blocking call left, taking the cross-process file lock that guards table creation,
runs in a worker thread (ingress.stores.lancedb.table, which also says why the lock is
needed; ingress.stores.lancedb.schema says why ``id`` is the table's primary key).

Filters are SQL where-clauses (ingress.stores.lancedb.filters) applied as pre-filters by
vector and full-text search alike. Keyword search is Lance's native BM25 over an FTS
index on ``caption``, built at creation; rows written after the index was last folded in
(``optimize()``) are searched flat, so nothing waits for index maintenance to be found.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.expr import col, lit
from lancedb.index import IvfRq
from lancedb.query import ColumnOrdering

from ingress.stores.base import checked_keyword_query, checked_query
from ingress.stores.cursors import CursorCodec
from ingress.stores.lancedb.errors import store_errors, write
from ingress.stores.lancedb.filters import filter_sql
from ingress.stores.lancedb.mapping import record_from_row, to_arrow, vector_of
from ingress.stores.lancedb.schema import (
    CAPTION_COLUMN,
    CAPTION_ERROR_COLUMN,
    CAPTION_STATUS_COLUMN,
    RECORD_COLUMNS,
    VECTOR_COLUMN,
    arrow_schema,
)
from ingress.stores.lancedb.table import (
    connect,
    open_table,
    read_recorded_embedding,
    update_columns,
)
from ingress.stores.records import (
    ImageFilter,
    ImageRecord,
    IndexedImage,
    Page,
    SearchHit,
    ranked_hits,
)

if TYPE_CHECKING:
    from ingress.stores.lancedb.index import IndexLag

# Cursors name the last id of a page; any non-empty id can be paged after.
_CURSORS = CursorCodec("v1:")

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
        self._schema = arrow_schema(embedding_model, dim)
        self._db: lancedb.AsyncConnection | None = None
        self._table: lancedb.AsyncTable | None = None
        # Coroutines of one process share the connection; open it once.
        self._open_lock = asyncio.Lock()

    # -- schema ------------------------------------------------------------------

    async def ensure_schema(self) -> None:
        async with self._open_lock:
            if self._table is not None:
                return
            with store_errors("open"):
                if self._db is None:
                    self._db = await connect(self.path)
                self._table = await open_table(
                    self._db,
                    self.path,
                    self.table_name,
                    self._schema,
                    self.embedding_model,
                    self.dim,
                )

    @staticmethod
    async def recorded_embedding(path: str | Path, table_name: str = "images") -> tuple[str, int]:
        """(embedding_model, dim) that an existing table was created for, read from its
        schema metadata: what a tool that must not load the models needs to open the
        store. Creates nothing; StoreError naming the path when there is no such table
        or it was not created by this store."""
        return await read_recorded_embedding(Path(path), table_name)

    async def _get_table(self) -> lancedb.AsyncTable:
        if self._table is None:
            await self.ensure_schema()
        assert self._table is not None
        return self._table

    # -- writes ------------------------------------------------------------------

    async def upsert(self, images: Sequence[IndexedImage]) -> None:
        if not images:
            return
        data = to_arrow(images, self._schema, self.embedding_model, self.dim)
        table = await self._get_table()

        async def merge() -> None:
            await (
                table.merge_insert("id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(data)
            )

        await write("upsert", merge)

    async def delete(self, image_id: str) -> bool:
        table = await self._get_table()

        async def remove() -> int:
            # An Expr literal, not SQL text: no quoting to get wrong, whatever the id holds.
            result = await table.delete(col("id") == lit(image_id))
            # The attribute exists at runtime (and in lancedb's docs) but not in its stubs.
            return int(cast(Any, result).num_deleted_rows)

        return await write("delete", remove) > 0

    async def update_tags(self, image_id: str, tags: Sequence[str]) -> ImageRecord | None:
        return await self._update_record(image_id, {"tags": [builtins.list(tags)]})

    async def update_caption(
        self, image_id: str, caption: str, caption_model: str
    ) -> ImageRecord | None:
        return await self._update_caption_fields(image_id, _captioned(caption, caption_model))

    async def set_caption(
        self, image_id: str, caption: str, caption_model: str
    ) -> ImageRecord | None:
        return await self._update_caption_fields(
            image_id, _captioned(caption, caption_model), only_pending=True
        )

    async def fail_caption(self, image_id: str, reason: str) -> ImageRecord | None:
        return await self._update_caption_fields(
            image_id,
            {CAPTION_STATUS_COLUMN: "failed", CAPTION_ERROR_COLUMN: reason},
            only_pending=True,
        )

    async def requeue_caption(self, image_id: str) -> ImageRecord | None:
        return await self._update_caption_fields(
            image_id, {CAPTION_STATUS_COLUMN: "pending", CAPTION_ERROR_COLUMN: None}
        )

    async def _update_caption_fields(
        self, image_id: str, values: dict[str, Any], *, only_pending: bool = False
    ) -> ImageRecord | None:
        """One conditional update, evaluated in the commit: a row deleted (or, with
        `only_pending`, captioned) by another process meanwhile matches nothing, and a
        commit conflict retries with the condition evaluated again."""
        table = await self._get_table()
        where = col("id") == lit(image_id)
        if only_pending:
            where = where & (col(CAPTION_STATUS_COLUMN) == lit("pending"))

        async def apply() -> int:
            result = await table.update(values, where=where)
            return int(cast(Any, result).rows_updated)

        if await write("update caption", apply) == 0:
            return None
        # Read back: None when it was deleted right after.
        return await self.get(image_id)

    async def _update_record(
        self, image_id: str, columns: dict[str, builtins.list[Any]]
    ) -> ImageRecord | None:
        # Checked first so that an unknown id costs no commit.
        if await self.get(image_id) is None:
            return None
        schema = pa.schema([self._schema.field(name) for name in ("id", *columns)])
        data = pa.Table.from_pydict({"id": [image_id], **columns}, schema=schema)
        await update_columns("update", await self._get_table(), data)
        # Read back rather than patched locally: another process may have changed the
        # record's other fields meanwhile. None when it was deleted in between.
        return await self.get(image_id)

    # -- reads -------------------------------------------------------------------

    async def get(self, image_id: str) -> ImageRecord | None:
        rows = await self._get_rows(image_id, RECORD_COLUMNS)
        return record_from_row(rows[0]) if rows else None

    async def get_vector(self, image_id: str) -> np.ndarray | None:
        rows = await self._get_rows(image_id, (VECTOR_COLUMN,))
        return vector_of(rows[0]) if rows else None

    async def existing_ids(self, ids: Sequence[str]) -> set[str]:
        wanted = builtins.list(dict.fromkeys(ids))
        if not wanted:
            return set()
        table = await self._get_table()
        with store_errors("existing ids"):
            result = await (
                table.query()
                .where(col("id").isin(wanted))
                .select(["id"])
                .limit(len(wanted))
                .to_arrow()
            )
        return {str(value) for value in result.column("id").to_pylist()}

    async def _get_rows(
        self, image_id: str, columns: Sequence[str]
    ) -> builtins.list[dict[str, Any]]:
        table = await self._get_table()
        with store_errors("get"):
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
        with store_errors("count"):
            return int(await table.count_rows(filter_sql(filters)))

    async def list(
        self, limit: int, cursor: str | None = None, filters: ImageFilter | None = None
    ) -> Page:
        if limit <= 0:
            raise ValueError("limit must be positive")
        after = _CURSORS.after(cursor)
        table = await self._get_table()
        query = table.query().select(builtins.list(RECORD_COLUMNS))
        where = filter_sql(filters, after_id=after)
        if where is not None:
            query = query.where(where)
        # One more than asked: see CursorCodec.page.
        query = query.order_by([ColumnOrdering(column_name="id", ascending=True)]).limit(limit + 1)
        with store_errors("list"):
            rows = (await query.to_arrow()).to_pylist()
        return _CURSORS.page([record_from_row(row) for row in rows], limit)

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
            .select([*RECORD_COLUMNS, VECTOR_COLUMN, "_distance"])
            .limit(limit)
        )
        where = filter_sql(filters)
        if where is not None:
            query = query.where(where)
        with store_errors("search"):
            rows = (await query.to_arrow()).to_pylist()
        # Cosine distance is 1 - similarity.
        found = ((record_from_row(r), 1.0 - float(r["_distance"]), vector_of(r)) for r in rows)
        return ranked_hits("vector", found)

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
            .select([*RECORD_COLUMNS, VECTOR_COLUMN, "_score"])
            .limit(limit)
        )
        where = filter_sql(filters)
        if where is not None:
            query = query.where(where)
        with store_errors("keyword search"):
            rows = (await query.to_arrow()).to_pylist()
        found = ((record_from_row(r), float(r["_score"]), vector_of(r)) for r in rows)
        return ranked_hits("keyword", found)

    # -- maintenance -------------------------------------------------------------

    async def create_ann_index_if_large(self, threshold_rows: int = 50_000) -> bool:
        """Build the vector index (IVF_RQ, cosine) once the table has threshold_rows rows.

        Returns True when an index was built. Does nothing when the table is smaller or
        already has a vector index (new rows are still found: Lance scans unindexed rows
        flat; ``optimize()`` folds them into the index). Called in the background by
        ingress.stores.lancedb.index; writes and searches go on while it builds.
        """
        table = await self._get_table()
        with store_errors("create index"):
            if await table.count_rows() < threshold_rows:
                return False
            if self._find_vector_index(await table.list_indices()) is not None:
                return False
        await self._build_vector_index(table)
        return True

    async def _build_vector_index(self, table: lancedb.AsyncTable) -> None:
        async def build() -> None:
            await table.create_index(VECTOR_COLUMN, config=_VECTOR_INDEX, replace=True)

        await write("create index", build)

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
        with store_errors("index state"):
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
        with store_errors("index state"):
            vector = self._find_vector_index(await table.list_indices())
        if vector is not None and (vector.num_segments or 0) > _MAX_VECTOR_INDEX_SEGMENTS:
            await self._build_vector_index(table)

        async def optimize() -> None:
            await table.optimize(cleanup_older_than=_KEEP_OLD_VERSIONS)

        await write("optimize", optimize)

    @staticmethod
    def _find_vector_index(indices: Any) -> Any | None:
        return next((index for index in indices if index.columns == [VECTOR_COLUMN]), None)


def _captioned(caption: str, caption_model: str) -> dict[str, Any]:
    return {
        CAPTION_COLUMN: caption,
        "caption_model": caption_model,
        CAPTION_STATUS_COLUMN: "done",
        CAPTION_ERROR_COLUMN: None,
    }
