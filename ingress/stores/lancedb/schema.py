"""The LanceDB table's schema: its columns, the caption full-text index, and the
embedding model and dimension recorded in its metadata.

The primary key matters: ``merge_insert`` from several processes inserting the same new
id at once leaves duplicate rows unless the table declares ``id`` as its (unenforced)
primary key; then Lance detects the conflict and retries. The key is declared here, so
no table is ever created without it.
"""

from __future__ import annotations

import pyarrow as pa
from lancedb.index import FTS

from ingress.stores.base import EmbeddingMismatch
from ingress.stores.recorded_embedding import recorded_embedding_of, refuse_other_embedding
from ingress.stores.records import ImageRecord

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
# Added with background captioning; rows made before it read as captioned ("done").
CAPTION_STATUS_COLUMN = "caption_status"
CAPTION_ERROR_COLUMN = "caption_error"

# The columns that make an ImageRecord, in its field order (the vector is apart).
RECORD_COLUMNS: tuple[str, ...] = tuple(ImageRecord.model_fields)

# The full-text (BM25) index on captions. Tokenised like Weaviate's `word` tokenisation
# (lower-case runs of letters and digits, English stop words dropped, no stemming, no
# accent folding), so that a query matches the same captions on either backend. Lance
# searches rows added after the index was built flat and merges the two result sets, so
# new and re-captioned records are found before any optimize() folds them in.
CAPTION_FTS = FTS(stem=False, remove_stop_words=True, ascii_folding=False, lower_case=True)


def arrow_schema(embedding_model: str, dim: int) -> pa.Schema:
    """The schema of a table for vectors of ``embedding_model`` with ``dim`` dimensions,
    which its metadata records."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False, metadata=_PRIMARY_KEY_META),
            # Null while the caption is pending.
            pa.field("caption", pa.string(), nullable=True),
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
            pa.field(CAPTION_STATUS_COLUMN, pa.string(), nullable=False),
            pa.field(CAPTION_ERROR_COLUMN, pa.string(), nullable=True),
            pa.field(VECTOR_COLUMN, pa.list_(pa.float32(), dim), nullable=False),
        ],
        metadata={
            META_EMBEDDING_MODEL: embedding_model.encode(),
            META_DIM: str(dim).encode(),
            META_SCHEMA_VERSION: SCHEMA_VERSION,
        },
    )


def recorded_in(schema: pa.Schema) -> tuple[str, int] | None:
    """(embedding_model, dim) that a table's metadata records; None for a table this
    store did not create."""
    meta = schema.metadata or {}
    model = meta.get(META_EMBEDDING_MODEL, b"").decode()
    dim_text = meta.get(META_DIM, b"").decode()
    # isdecimal, not isdigit: int() refuses digits such as "²" that isdigit admits.
    return recorded_embedding_of(model, int(dim_text) if dim_text.isdecimal() else None)


def check_schema(schema: pa.Schema, where: str, embedding_model: str, dim: int) -> None:
    """Refuse a table made for another model or dimension (EmbeddingMismatch), judged by
    both its recorded metadata and its vector column's actual type."""
    refuse_other_embedding(where, recorded_in(schema), embedding_model, dim)
    vector_type = schema.field(VECTOR_COLUMN).type
    if not pa.types.is_fixed_size_list(vector_type) or vector_type.list_size != dim:
        raise EmbeddingMismatch(f"vector column is {vector_type}, expected dim {dim}")
