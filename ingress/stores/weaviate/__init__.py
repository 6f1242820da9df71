"""The production vector store: Weaviate through weaviate-client v4."""

from ingress.stores.weaviate.store import (
    WeaviateVectorStore,
    canonical_uuid,
    collection_config,
    collection_description,
    decode_cursor,
    encode_cursor,
    image_properties,
    map_weaviate_error,
    parse_collection_description,
    properties_to_record,
    record_to_properties,
    similarity_from_distance,
    weaviate_filter,
)

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
