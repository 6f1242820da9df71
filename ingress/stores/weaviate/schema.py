"""The Weaviate collection's schema: its properties, its vector index, and the
description that records which embedding model and dimension filled it.

``caption`` is the one BM25-searchable property; the other record fields are filterable
only, TEXT ones tokenised as ``field`` so that a filter matches the whole value exactly.
The model and dimension are written into the description at creation (Weaviate keeps no
dimension of its own until the first vector), so that a replica of another model
refuses the collection at ensure_schema.
"""

from __future__ import annotations

import json
import re
from typing import Any

from weaviate.classes.config import (
    Configure,
    DataType,
    Property,
    Tokenization,
    VectorDistances,
)

from ingress.stores.recorded_embedding import recorded_embedding_of
from ingress.stores.records import ImageRecord

# Marks the description this store writes; the JSON after it names model and dim.
_DESCRIPTION_PREFIX = "imagesearch:"
SCHEMA_VERSION = 1

# Weaviate collection names: a capital letter, then letters, digits, underscores.
COLLECTION_NAME = re.compile(r"^[A-Z][_0-9A-Za-z]*$")

_TEXT_FIELDS = (
    "content_type",
    "sha256",
    "source_url",
    "caption_model",
    "embedding_model",
    "source_domain",
    "caption_status",
)
_INT_FIELDS = ("width", "height", "size_bytes")
# Properties a collection made by an earlier version may lack; ensure_schema adds them.
ADDED_LATER = ("source_domain", "caption_status", "caption_error")
# Every ImageRecord field but ``id``, which is the object id; in record field order.
RECORD_PROPERTIES: tuple[str, ...] = tuple(
    name for name in ImageRecord.model_fields if name != "id"
)


def image_properties() -> list[Property]:
    """The collection's properties: every ImageRecord field except ``id`` (the object id)."""
    properties = [
        Property(
            name="caption",
            data_type=DataType.TEXT,
            tokenization=Tokenization.WORD,
            index_searchable=True,
            index_filterable=True,
        ),
        *(
            Property(
                name=name,
                data_type=DataType.TEXT,
                tokenization=Tokenization.FIELD,
                index_searchable=False,
                index_filterable=True,
            )
            for name in _TEXT_FIELDS
        ),
        *(
            Property(name=name, data_type=DataType.INT, index_filterable=True)
            for name in _INT_FIELDS
        ),
        Property(
            name="tags",
            data_type=DataType.TEXT_ARRAY,
            tokenization=Tokenization.FIELD,
            index_searchable=False,
            index_filterable=True,
        ),
        Property(name="created_at", data_type=DataType.DATE, index_filterable=True),
        # Read back, never filtered or searched on.
        Property(
            name="caption_error",
            data_type=DataType.TEXT,
            index_searchable=False,
            index_filterable=False,
        ),
    ]
    # Kept in record field order, which makes the schema easy to compare with the model.
    order = {name: i for i, name in enumerate(RECORD_PROPERTIES)}
    return sorted(properties, key=lambda p: order[p.name])


def collection_config(embedding_model: str, dim: int) -> dict[str, Any]:
    """Keyword arguments for ``collections.create``, apart from the name."""
    return {
        "description": collection_description(embedding_model, dim),
        "properties": image_properties(),
        # The unnamed vector (vectorizer none, HNSW, cosine): every client and server in
        # the supported range takes it. Newer clients call these two arguments deprecated
        # in favour of named vectors, which 4.9 cannot create.
        "vectorizer_config": Configure.Vectorizer.none(),
        "vector_index_config": Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE),
    }


def collection_description(embedding_model: str, dim: int) -> str:
    payload = {"embedding_model": embedding_model, "dim": dim, "schema_version": SCHEMA_VERSION}
    return _DESCRIPTION_PREFIX + json.dumps(payload, sort_keys=True)


def parse_collection_description(description: str | None) -> tuple[str, int] | None:
    """(embedding_model, dim) from a description this store wrote; None for any other."""
    if not description or not description.startswith(_DESCRIPTION_PREFIX):
        return None
    try:
        payload = json.loads(description.removeprefix(_DESCRIPTION_PREFIX))
        model, dim = payload["embedding_model"], payload["dim"]
    except (ValueError, TypeError, KeyError):
        return None
    return recorded_embedding_of(model, dim)


def distance_metric(config: Any) -> VectorDistances | None:
    """The distance of the collection's vector index, wherever this client reports it."""
    index = getattr(config, "vector_index_config", None)
    if index is None:
        named = getattr(config, "vector_config", None) or {}
        default = named.get("default")
        index = getattr(default, "vector_index_config", None)
    return getattr(index, "distance_metric", None)
