"""/images: add, list, read, retag and delete images, their bytes and thumbnails.

No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
run time.
"""

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from ingress.core.errors import UnsupportedMediaType
from ingress.core.thumbnails import CONTENT_TYPES as THUMBNAIL_TYPES
from ingress.core.thumbnails import etag_matches
from ingress.http import deps
from ingress.http.deps import RuntimeDep
from ingress.http.metrics import service_metrics
from ingress.http.openapi import DATETIME_QUERY, MULTIPART_OR_JSON
from ingress.http.schemas import (
    MAX_DIMENSION,
    AddByUrl,
    AddedImage,
    ImageList,
    ImageOut,
    NearDuplicate,
    SearchFilters,
    TagsUpdate,
)
from ingress.stores.base import PresigningBlobStore

logger = logging.getLogger("ingress.http.routes.images")

router = APIRouter()

# Shared with the seed aliases (ingress.http.routes.seed_aliases).
ADD_ROUTE: dict[str, Any] = {
    "status_code": 201,
    "response_model": AddedImage,
    "openapi_extra": MULTIPART_OR_JSON,
    "responses": {200: {"model": AddedImage, "description": "Already indexed."}},
}
LIST_ROUTE: dict[str, Any] = {"response_model": ImageList}
# Content-addressed: the bytes behind an id (and a thumbnail's ETag) never change.
_IMMUTABLE = "public, max-age=31536000, immutable"


@router.post(
    "/images",
    summary="Add an image by upload (multipart `file`) or by URL (JSON `url`)",
    **ADD_ROUTE,
)
async def add_image(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    wait_for_caption: Annotated[
        bool | None,
        Query(description="Caption before answering, even in background mode."),
    ] = None,
) -> AddedImage:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await deps.read_form(request, runtime)
        image = await deps.decode_upload(form, runtime)
        tags = deps.tags([str(v) for v in form.getlist("tags")], runtime)
        source_url = None
        wait = deps.form_flag(form, "wait_for_caption")
    elif content_type.startswith("application/json"):
        body = deps.parse_json(AddByUrl, await request.body())
        tags = deps.tags(body.tags, runtime)
        image = await deps.fetch_image(body.url, runtime)
        source_url = body.url
        wait = body.wait_for_caption
    else:
        raise UnsupportedMediaType(
            "send multipart/form-data with a `file` field, or JSON with a `url`"
        )
    caption_now = runtime.args.captioning.mode == "inline" or bool(wait_for_caption) or bool(wait)
    added = await runtime.service.add(image, tags, source_url, caption_now=caption_now)
    service_metrics().images_added.inc(
        tags={
            "source": "url" if source_url else "upload",
            "outcome": "duplicate" if added.duplicate else "new",
        }
    )
    if added.duplicate:
        response.status_code = 200
    near = added.near_duplicate_of
    return AddedImage(
        **ImageOut.from_record(added.record).model_dump(),
        duplicate=added.duplicate,
        near_duplicate_of=NearDuplicate(id=near.image_id, score=near.score) if near else None,
    )


@router.get("/images", summary="List images by id, with a cursor", **LIST_ROUTE)
async def list_images(
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    tags_any: Annotated[list[str] | None, Query(description="Repeatable.")] = None,
    tags_all: Annotated[list[str] | None, Query(description="Repeatable.")] = None,
    content_types: Annotated[list[str] | None, Query(description="Repeatable.")] = None,
    min_width: Annotated[int | None, Query(ge=0, le=MAX_DIMENSION)] = None,
    min_height: Annotated[int | None, Query(ge=0, le=MAX_DIMENSION)] = None,
    # Text here, read by SearchFilters, so that query and JSON filters accept the same
    # datetimes (FastAPI's own parsing would take "0.0" as a Unix timestamp).
    created_after: Annotated[str | None, Query(description=DATETIME_QUERY)] = None,
    created_before: Annotated[str | None, Query(description=DATETIME_QUERY)] = None,
    source_domains: Annotated[list[str] | None, Query(description="Repeatable.")] = None,
    caption_status: Annotated[
        list[str] | None, Query(description="pending, done or failed; repeatable.")
    ] = None,
) -> ImageList:
    """The same filters as the searches' `filters` object, as query parameters."""
    deps.check_limit(limit, runtime.args.search.max_list_limit)
    given = {
        "tags_any": tags_any,
        "tags_all": tags_all,
        "content_types": content_types,
        "min_width": min_width,
        "min_height": min_height,
        "created_after": created_after,
        "created_before": created_before,
        "source_domains": source_domains,
        "caption_status": caption_status,
    }
    filters = deps.validated(SearchFilters, {k: v for k, v in given.items() if v is not None})
    page, total = await runtime.service.list(limit, cursor, deps.store_filter(filters, runtime))
    return ImageList(
        images=[ImageOut.from_record(r) for r in page.records],
        next_cursor=page.next_cursor,
        total=total,
    )


@router.get("/images/{image_id}", response_model=ImageOut, summary="One image record")
async def get_image(image_id: str, runtime: RuntimeDep) -> ImageOut:
    return ImageOut.from_record(await runtime.service.get(image_id))


@router.patch("/images/{image_id}", response_model=ImageOut, summary="Replace an image's tags")
async def update_image(image_id: str, body: TagsUpdate, runtime: RuntimeDep) -> ImageOut:
    record = await runtime.service.update_tags(image_id, deps.tags(body.tags, runtime))
    return ImageOut.from_record(record)


@router.get(
    "/images/{image_id}/content",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}, "description": "The original bytes."}},
    summary="The stored image bytes",
)
async def image_content(image_id: str, runtime: RuntimeDep) -> Response:
    record = await runtime.service.get(image_id)
    blobs = runtime.service.blobs
    if runtime.redirect_content and isinstance(blobs, PresigningBlobStore):
        # The store serves the bytes; the ingress only signs the way there.
        return RedirectResponse(blobs.presigned_url(record.blob_key, runtime.presign_expiry_s), 307)
    stream = await blobs.stream(record.blob_key)
    return StreamingResponse(
        stream.chunks,
        media_type=stream.content_type,
        headers={
            "Content-Length": str(stream.size),
            # Stored bytes may be valid-image polyglots: never let a browser sniff.
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": _IMMUTABLE,
        },
    )


@router.get(
    "/images/{image_id}/thumbnail",
    response_class=Response,
    responses={
        200: {
            "content": {media: {} for media in THUMBNAIL_TYPES.values()},
            "description": "A small copy, longest side at most `size`; never enlarged.",
        },
        304: {"description": "Not modified: the If-None-Match ETag is current."},
    },
    summary="A small copy of the image for result grids",
)
async def image_thumbnail(
    image_id: str,
    request: Request,
    runtime: RuntimeDep,
    size: Annotated[
        int | None,
        Query(ge=1, description="One of args.thumbnails.sizes (default 128, 256, 512)."),
    ] = None,
) -> Response:
    thumbnails = runtime.thumbnails
    side = thumbnails.size_for(size)
    record = await runtime.service.get(image_id)
    etag = thumbnails.etag(record.sha256, side)
    headers = {"ETag": etag, "Cache-Control": _IMMUTABLE, "X-Content-Type-Options": "nosniff"}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    thumb = await thumbnails.for_record(record, runtime.service.blobs, side)
    return Response(thumb.data, media_type=thumb.content_type, headers=headers)


@router.delete("/images/{image_id}", status_code=204, summary="Delete an image")
async def delete_image(image_id: str, runtime: RuntimeDep) -> Response:
    await runtime.service.delete(image_id)
    return Response(status_code=204)
