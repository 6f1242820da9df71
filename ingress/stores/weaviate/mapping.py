"""Records to Weaviate objects and back: object ids, properties, vectors, distances,
and the list() cursors, which name object ids.

The object id is the record id, which must be a canonical (lowercase, hyphenated) UUID
string: Weaviate's cursor API walks objects in UUID byte order, which for canonical
strings is the order of the ids themselves.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from weaviate.classes.data import DataObject

from ingress.stores.base import StoreError, checked_vectors
from ingress.stores.cursors import CursorCodec
from ingress.stores.records import ImageRecord, IndexedImage
from ingress.stores.values import utc

# The first page asks for everything after the nil UUID, so that every page goes through
# the cursor API (UUID order, on every shard); the nil UUID itself is refused as an id.
NIL_UUID = "00000000-0000-0000-0000-000000000000"


def canonical_uuid(value: str) -> str | None:
    """The id if it is a canonical (lowercase, hyphenated) UUID string, else None."""
    try:
        parsed = uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return None
    text = str(parsed)
    return text if text == value else None


# A cursor names the last object id of a page, so it must hold a canonical UUID.
CURSORS = CursorCodec("w1:", accepts=lambda last_id: canonical_uuid(last_id) is not None)


def encode_cursor(last_id: str) -> str:
    return CURSORS.encode(last_id)


def decode_cursor(cursor: str) -> str:
    """The id a cursor points after; ValueError for anything this store did not make."""
    return CURSORS.decode(cursor)


def record_to_properties(record: ImageRecord) -> dict[str, Any]:
    """Weaviate properties for a record; ``id`` is the object id, not a property.

    What a record lacks (a source_url and so a source_domain, a pending caption, an
    error) is left out rather than sent as null.
    """
    props = record.model_dump(exclude={"id"})
    props["created_at"] = utc(record.created_at)
    props["tags"] = list(record.tags)
    for name in ("source_url", "source_domain", "caption", "caption_error"):
        if props[name] is None:
            del props[name]
    return props


def properties_to_record(object_id: uuid.UUID | str, props: Mapping[str, Any]) -> ImageRecord:
    """The record for a Weaviate object; created_at comes back tz-aware in UTC."""
    created_at = props["created_at"]
    if isinstance(created_at, str):
        created_at = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    return ImageRecord(
        id=str(uuid.UUID(str(object_id))),
        # Absent while pending; an empty string is how an update clears it.
        caption=props.get("caption") or None,
        width=int(props["width"]),
        height=int(props["height"]),
        content_type=props["content_type"],
        size_bytes=int(props["size_bytes"]),
        sha256=props["sha256"],
        source_url=props.get("source_url"),
        tags=list(props.get("tags") or []),
        created_at=utc(created_at),
        caption_model=props["caption_model"],
        embedding_model=props["embedding_model"],
        # Absent on objects written before the property existed and not yet backfilled;
        # the record then derives it from source_url.
        source_domain=props.get("source_domain"),
        # Absent on objects written before background captioning: they were captioned.
        caption_status=props.get("caption_status") or "done",
        caption_error=props.get("caption_error") or None,
    )


def to_objects(
    images: Sequence[IndexedImage], embedding_model: str, dim: int
) -> list[DataObject[Any, Any]]:
    """Validate all, then convert; refuses other models' records and wrong vectors."""
    vectors = checked_vectors(images, embedding_model, dim)
    objects: list[DataObject[Any, Any]] = []
    for image, vector in zip(images, vectors, strict=True):
        record = image.record
        if canonical_uuid(record.id) is None or record.id == NIL_UUID:
            raise ValueError(f"record id {record.id!r} is not a canonical, non-nil UUID")
        objects.append(
            DataObject(
                properties=record_to_properties(record), uuid=record.id, vector=vector.tolist()
            )
        )
    return objects


def object_record(obj: Any) -> ImageRecord:
    """The record of an object the client returned with its properties."""
    return properties_to_record(obj.uuid, obj.properties)


def object_vector(obj: Any) -> np.ndarray:
    """The stored vector of an object the client returned with include_vector."""
    return np.asarray(_default_vector(obj.vector), dtype=np.float32)


def _default_vector(vector: Any) -> Any:
    # v4 returns {"default": [...]} for the unnamed vector; older shapes were a bare list.
    if isinstance(vector, Mapping):
        if "default" in vector:
            return vector["default"]
        if len(vector) == 1:
            return next(iter(vector.values()))
        raise StoreError(f"object has several vectors ({sorted(vector)}), expected one")
    return vector


def similarity_from_distance(distance: float) -> float:
    """Cosine similarity from Weaviate's cosine distance (1 - cos, in [0, 2])."""
    if not math.isfinite(distance):
        raise ValueError(f"not a finite distance: {distance!r}")
    return 1.0 - float(distance)
