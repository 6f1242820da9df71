"""Opening the LanceDB table: created once however many processes race for it, refused
when another model's, brought up to this version's schema; and reading the embedding it
records without opening a store.

Creating a table is an Overwrite commit in Lance. Two processes that race to create the
same table can BOTH succeed, the loser landing as version 2 and wiping whatever the
winner had written in between. Table creation (and upgrade) is therefore serialised
with an ``fcntl.flock`` on a lock file beside the table: only at open, never on the
data path.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import lancedb
import pyarrow as pa

from ingress.stores.base import StoreError
from ingress.stores.file_lock import FileLock
from ingress.stores.lancedb.errors import store_errors, write
from ingress.stores.lancedb.schema import (
    CAPTION_COLUMN,
    CAPTION_ERROR_COLUMN,
    CAPTION_FTS,
    CAPTION_STATUS_COLUMN,
    SOURCE_DOMAIN_COLUMN,
    check_schema,
    recorded_in,
)
from ingress.stores.recorded_embedding import not_created_here
from ingress.stores.records import backfilled_source_domain

# Zero: every read checks for commits made by other replica processes, so a record one
# replica just wrote is visible to all of them. On a local disk that check is one small
# manifest lookup.
_READ_CONSISTENCY = timedelta(0)
# Rows per commit when filling source_domain into a table made before the column.
_BACKFILL_CHUNK = 10_000


def describe(path: Path, table_name: str) -> str:
    """How messages name the table."""
    return f"table {table_name!r} at {path}"


async def connect(path: Path) -> lancedb.AsyncConnection:
    """The connection a store reads and writes through (see _READ_CONSISTENCY)."""
    return await lancedb.connect_async(path, read_consistency_interval=_READ_CONSISTENCY)


async def open_table(
    db: lancedb.AsyncConnection,
    path: Path,
    table_name: str,
    schema: pa.Schema,
    embedding_model: str,
    dim: int,
) -> lancedb.AsyncTable:
    """The table, created with ``schema`` if missing, checked, and brought up to this
    version's schema and indices; all under the create lock, so that one process at a
    time creates or upgrades it."""
    lock = FileLock(path / f".{table_name}.create.lock")
    await asyncio.to_thread(lock.acquire)
    try:
        table = await _create_or_open(db, table_name, schema)
        try:
            # Checked before anything is changed: never upgrade another model's table.
            check_schema(await table.schema(), describe(path, table_name), embedding_model, dim)
            await _upgrade(table, schema)
        except BaseException:
            table.close()
            raise
        return table
    finally:
        lock.release()


async def _create_or_open(
    db: lancedb.AsyncConnection, table_name: str, schema: pa.Schema
) -> lancedb.AsyncTable:
    try:
        return await db.create_table(table_name, schema=schema, mode="create")
    except Exception as create_error:
        # Usually "already exists" (another process got there first). Opening is the
        # test that matters: if that fails too, report the create error.
        try:
            return await db.open_table(table_name)
        except Exception:
            raise create_error from None


async def _upgrade(table: lancedb.AsyncTable, schema: pa.Schema) -> None:
    """What a table made by an earlier version lacks: the source_domain column (filled
    from source_url), the caption status columns (its rows were all captioned, so they
    read "done"; the caption may then be null) and the caption full-text index. A no-op
    once done. Writers in other processes may be committing meanwhile; every step
    retries."""
    names = (await table.schema()).names
    if SOURCE_DOMAIN_COLUMN not in names:
        column = schema.field(SOURCE_DOMAIN_COLUMN)
        await write("add column", lambda: table.add_columns(column))
    if CAPTION_STATUS_COLUMN not in names:
        # One commit fills every existing row: a SQL literal, not a per-row backfill.
        await write(
            "add caption status",
            lambda: table.add_columns({CAPTION_STATUS_COLUMN: "'done'"}),
        )
    if CAPTION_ERROR_COLUMN not in names:
        error_column = schema.field(CAPTION_ERROR_COLUMN)
        await write("add caption error", lambda: table.add_columns(error_column))
    if not (await table.schema()).field(CAPTION_COLUMN).nullable:

        async def nullable_caption() -> None:
            # lancedb's stub types each alteration as an iterable of dicts; it is a dict.
            await table.alter_columns(cast(Any, {"path": CAPTION_COLUMN, "nullable": True}))

        await write("allow pending captions", nullable_caption)
    # Every open, not only right after adding the column: an upgrade cut short between
    # the two commits is finished by the next one. Normally finds nothing.
    await _backfill_source_domain(table, schema)
    indices = await table.list_indices()
    if not any(
        index.columns == [CAPTION_COLUMN] and index.index_type == "FTS" for index in indices
    ):

        async def build() -> None:
            await table.create_index(CAPTION_COLUMN, config=CAPTION_FTS)

        await write("create caption index", build)


async def _backfill_source_domain(table: lancedb.AsyncTable, schema: pa.Schema) -> None:
    # The SQL finds only the rows that need it, so one query serves the whole table.
    rows = (
        await table.query()
        .where(f"{SOURCE_DOMAIN_COLUMN} IS NULL AND source_url IS NOT NULL")
        .select(["id", "source_url", SOURCE_DOMAIN_COLUMN])
        .to_arrow()
    ).to_pylist()
    found = [
        (row["id"], backfilled_source_domain(row["source_url"], row[SOURCE_DOMAIN_COLUMN]))
        for row in rows
    ]
    pairs = [(image_id, domain) for image_id, domain in found if domain is not None]
    pair_schema = pa.schema([schema.field("id"), schema.field(SOURCE_DOMAIN_COLUMN)])
    for start in range(0, len(pairs), _BACKFILL_CHUNK):
        chunk = pairs[start : start + _BACKFILL_CHUNK]
        data = pa.Table.from_pydict(
            {"id": [p[0] for p in chunk], SOURCE_DOMAIN_COLUMN: [p[1] for p in chunk]},
            schema=pair_schema,
        )
        await update_columns("backfill source_domain", table, data)


async def update_columns(op: str, table: lancedb.AsyncTable, data: pa.Table) -> None:
    """Set the columns ``data`` holds (besides id) on the rows with its ids; ids not in
    the table are skipped. Lance rewrites the changed rows, and moves them out of the
    indices of the changed columns, so a new caption is found by keyword search at once
    (flat) and the old one no longer is."""

    async def merge() -> None:
        await table.merge_insert("id").when_matched_update_all().execute(data)

    await write(op, merge)


async def read_recorded_embedding(path: Path, table_name: str) -> tuple[str, int]:
    """(embedding_model, dim) that an existing table was created for, read from its
    schema metadata. Creates nothing; StoreError naming the path when there is no such
    table or it was not created by this store."""
    # Checked first: connecting to a directory that is not there would create it.
    if not await asyncio.to_thread(path.is_dir):
        raise StoreError(f"no LanceDB database at {path}")
    with store_errors("open"):
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
    recorded = recorded_in(schema)
    if recorded is None:
        raise not_created_here(describe(path, table_name), "it records no embedding model and dim")
    return recorded


async def _table_names(db: lancedb.AsyncConnection) -> set[str]:
    names: set[str] = set()
    page_token: str | None = None
    while True:
        response = await db.list_tables(page_token=page_token)
        names.update(response.tables)
        page_token = response.page_token
        if not page_token:
            return names
