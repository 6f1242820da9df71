"""The production vector store: Weaviate through weaviate-client v4."""

from ingress.stores.weaviate.errors import map_weaviate_error
from ingress.stores.weaviate.filters import weaviate_filter
from ingress.stores.weaviate.mapping import (
    canonical_uuid,
    decode_cursor,
    encode_cursor,
    properties_to_record,
    record_to_properties,
    similarity_from_distance,
)
from ingress.stores.weaviate.schema import (
    collection_config,
    collection_description,
    image_properties,
    parse_collection_description,
)
from ingress.stores.weaviate.store import WeaviateVectorStore

__all__ = [
    "WeaviateVectorStore",
    "canonical_uuid",
    "collection_config",
    "collection_description",
    "decode_cursor",
    "encode_cursor",
    "image_properties",
    "map_weaviate_error",
    "parse_collection_description",
    "properties_to_record",
    "record_to_properties",
    "similarity_from_distance",
    "weaviate_filter",
]
