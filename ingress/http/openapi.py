"""OpenAPI pieces the routes share: the error responses every route may give, and the
request bodies of routes that read their own multipart form (FastAPI cannot infer them)."""

from __future__ import annotations

from typing import Any

from ingress.http.schemas import AddByUrl, ErrorResponse

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse}
    for status in (400, 401, 403, 404, 413, 415, 422, 429, 502, 503, 504)
}


def multipart_upload(extra_fields: dict[str, Any], json_body: type[Any] | None = None) -> Any:
    """The request body of a route with a `file` field, the given extra fields, and
    optionally a JSON alternative."""
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}, **extra_fields},
            }
        }
    }
    if json_body is not None:
        content["application/json"] = {"schema": json_body.model_json_schema()}
    return {"requestBody": {"content": content}}


DATETIME_QUERY = "Exclusive; ISO 8601, e.g. 2024-06-01T00:00:00Z (no timezone: UTC)."
_TAGS_FIELD = {"type": "string", "description": "Comma-separated; the field may repeat."}
MULTIPART_OR_JSON = multipart_upload({"tags": _TAGS_FIELD}, json_body=AddByUrl)
MULTIPART_UPLOAD = multipart_upload({})
MULTIPART_IMAGE = multipart_upload(
    {
        "limit": {"type": "integer", "minimum": 1},
        "offset": {"type": "integer", "minimum": 0},
        "min_score": {"type": "number"},
        "dedup": {"type": "boolean"},
        "filters": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": 'The filters object as JSON text, e.g. {"tags_any": ["cat"]}.',
        },
    }
)
