"""Records and vectors to Arrow rows of the LanceDB table, and rows back to records.

Instants go in and come out in UTC (ingress.stores.values.utc), whatever timezone
object Arrow or the caller used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ingress.stores.base import checked_vectors
from ingress.stores.lancedb.schema import RECORD_COLUMNS, VECTOR_COLUMN
from ingress.stores.records import ImageRecord, IndexedImage
from ingress.stores.values import utc


def to_arrow(
    images: Sequence[IndexedImage], schema: pa.Schema, embedding_model: str, dim: int
) -> pa.Table:
    """Validate and convert; refuses other models' records and wrongly shaped vectors."""
    vectors = np.stack(checked_vectors(images, embedding_model, dim))
    columns: dict[str, list[Any]] = {name: [] for name in RECORD_COLUMNS}
    for image in images:
        row = image.record.model_dump()
        row["created_at"] = utc(row["created_at"])
        for name in RECORD_COLUMNS:
            columns[name].append(row[name])
    arrays = {
        name: pa.array(values, type=schema.field(name).type) for name, values in columns.items()
    }
    arrays[VECTOR_COLUMN] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)
    # from_pydict takes the column order from the schema, not from the dict.
    return pa.Table.from_pydict(arrays, schema=schema)


def record_from_row(row: dict[str, Any]) -> ImageRecord:
    fields = {name: row[name] for name in RECORD_COLUMNS}
    # Arrow hands back zoneinfo UTC; normalise to datetime.timezone.utc.
    fields["created_at"] = utc(fields["created_at"])
    fields["tags"] = list(fields["tags"] or [])
    return ImageRecord(**fields)


def vector_of(row: dict[str, Any]) -> np.ndarray:
    """The row's stored vector, as float32."""
    return np.asarray(row[VECTOR_COLUMN], dtype=np.float32)
