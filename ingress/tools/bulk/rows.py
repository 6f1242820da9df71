"""The rows that flow through the bulk pipeline: one per source, one Arrow schema for
every stage, so that a row can be passed on untouched by the stages it has no work for.

A row starts with where to read (kind, location), gains its bytes, identity and
compact pixels when decoded, its vector when embedded, and its outcome at the latest
when written. A row with an outcome is done: later stages pass it on with its heavy
columns emptied, so that only small rows travel on to the driver's report.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

# Outcomes. "" while a row is still on its way.
PENDING = ""
INDEXED = "indexed"
EXISTS = "exists"  # the store had the image already
DUPLICATE = "duplicate"  # the same bytes as another source of this run
FAILED = "failed"

SCHEMA = pa.schema(
    [
        ("source", pa.string()),  # what the user named: a path, a URL, s3://bucket/key
        ("kind", pa.string()),  # file, url or s3
        ("location", pa.string()),  # the absolute path, the URL or the object key
        ("bucket", pa.string()),
        ("outcome", pa.string()),
        ("reason", pa.string()),
        ("id", pa.string()),
        ("sha256", pa.string()),
        ("content_type", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("data", pa.large_binary()),  # the original bytes, for the blob
        ("pixels", pa.large_binary()),  # the compact RGB copy, uint8, pixels_h x pixels_w x 3
        ("pixels_h", pa.int64()),
        ("pixels_w", pa.int64()),
        ("vector", pa.list_(pa.float32())),
        ("caption", pa.string()),
    ]
)
# Emptied once a row needs them no more.
HEAVY = ("data", "pixels", "vector")
_EMPTY: dict[str, Any] = {"data": b"", "pixels": b"", "vector": []}


def new_row(source: str, kind: str, location: str, bucket: str = "") -> dict[str, Any]:
    """A row that names where to read, with every other column blank."""
    row: dict[str, Any] = {name: "" for name in SCHEMA.names}
    row.update(width=0, height=0, pixels_h=0, pixels_w=0, **_EMPTY)
    row.update(source=source, kind=kind, location=location, bucket=bucket)
    return row


def rows_of(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def table_of(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def finish(row: dict[str, Any], outcome: str, reason: str = "") -> None:
    """Give row its outcome and drop what no later stage needs."""
    row["outcome"] = outcome
    row["reason"] = reason
    row.update(_EMPTY)


def pending(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if row["outcome"] == PENDING]


def pixels_of(row: dict[str, Any]) -> np.ndarray:
    flat = np.frombuffer(row["pixels"], dtype=np.uint8)
    return flat.reshape(int(row["pixels_h"]), int(row["pixels_w"]), 3)
