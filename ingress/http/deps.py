"""What routes take from a request besides their declared parameters: the replica's
Runtime, and the checks and readers several routes share (forms, uploads, URLs, tags,
limits, filters). Each raises a domain error or an ApiError; ingress.http.errors
answers it."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from ingress.core.errors import InvalidRequest, UnsupportedMediaType
from ingress.core.imaging import DecodedImage
from ingress.core.tags import normalise_tags
from ingress.http.errors import invalid
from ingress.http.runtime import Runtime
from ingress.http.schemas import SearchFilters
from ingress.stores.records import ImageFilter

Model = TypeVar("Model", bound=BaseModel)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def parse_json(model: type[Model], body: bytes) -> Model:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise invalid(exc) from None


def validated(model: type[Model], data: dict[str, Any]) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None


async def read_form(request: Request, runtime: Runtime) -> FormData:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaType("send multipart/form-data with a `file` field")
    # The tags, or the search options (limit, offset, min_score, dedup, filters).
    return await request.form(max_files=1, max_fields=runtime.args.intake.max_tags + 8)


async def decode_upload(
    form: FormData, runtime: Runtime, *, for_query: bool = False
) -> DecodedImage:
    """`for_query`: see ImageService.decode."""
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("multipart field `file` with the image is required")
    data = await upload.read(runtime.args.intake.max_upload_bytes + 1)
    return await runtime.service.decode(data, upload.content_type, for_query=for_query)


async def fetch_image(url: str, runtime: Runtime, *, for_query: bool = False) -> DecodedImage:
    fetched = await runtime.fetcher.fetch(url)
    return await runtime.service.decode(fetched.data, fetched.content_type, for_query=for_query)


def form_flag(form: FormData, name: str) -> bool:
    """A true/false form field; absent is false."""
    value = form.get(name)
    if value is None:
        return False
    if isinstance(value, UploadFile) or value.strip().lower() not in _FLAGS:
        raise InvalidRequest(f"{name}: must be true or false")
    return _FLAGS[value.strip().lower()]


_FLAGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": False}


def tags(raw: list[str], runtime: Runtime) -> list[str]:
    limits = runtime.args.intake
    return normalise_tags(raw, limits.max_tags, limits.max_tag_chars)


def check_limit(limit: int, maximum: int) -> None:
    if not 1 <= limit <= maximum:
        raise InvalidRequest(f"limit must be between 1 and {maximum}")


def store_filter(filters: SearchFilters | None, runtime: Runtime) -> ImageFilter | None:
    """The store filter, its tags normalised by the same rules as at ingest."""
    if filters is None:
        return None
    return filters.to_filter(tags(filters.tags_any, runtime), tags(filters.tags_all, runtime))
