"""The HTTP API (v1) and the Ingress deployment that serves it.

Routes only translate HTTP to ImageService calls and back; errors become JSON in
ingress.http.errors, once.

No `from __future__ import annotations`: Serve rebuilds these routes inside each replica
and FastAPI must resolve the annotations there.
"""

import logging
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import FormData, UploadFile

from ingress.core.fetch import SafeFetcher
from ingress.core.imaging import DecodedImage
from ingress.core.service import ImageService, SearchOutcome
from ingress.core.service import SearchOptions as ServiceSearchOptions
from ingress.core.thumbnails import CONTENT_TYPES as THUMBNAIL_TYPES
from ingress.core.thumbnails import etag_matches
from ingress.http.access import AccessControl
from ingress.http.body_limit import BodySizeLimit
from ingress.http.errors import ApiError, install_error_handlers
from ingress.http.metrics import service_metrics
from ingress.http.model_client import ServedModels
from ingress.http.schemas import (
    MAX_DIMENSION,
    AddByUrl,
    AddedImage,
    DeleteBody,
    EmbedImageResponse,
    ErrorResponse,
    Health,
    ImageList,
    ImageOut,
    ImageSearchForm,
    NearDuplicate,
    SearchFilters,
    SearchOptions,
    SearchResponse,
    SearchResult,
    SimilarSearch,
    TagsUpdate,
    TextSearch,
    UrlSearch,
)
from ingress.http.web import PAGE_HEADERS, load_asset
from ingress.settings import AppArgs, S3Args
from ingress.stores.base import PresigningBlobStore
from ingress.stores.factory import open_stores
from ingress.stores.records import ImageFilter

logger = logging.getLogger("ingress.http.deployment")

# Room for multipart framing and small form fields around the largest accepted image.
_MULTIPART_OVERHEAD = 64 * 1024

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse}
    for status in (400, 401, 403, 404, 413, 415, 422, 429, 502, 503, 504)
}


def _multipart_upload(extra_fields: dict[str, Any], json_body: type[Any] | None = None) -> Any:
    """OpenAPI request body of a route that reads its own multipart form (FastAPI cannot
    infer it), with a `file` field, the given extra fields, and optionally JSON."""
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


_DATETIME_QUERY = "Exclusive; ISO 8601, e.g. 2024-06-01T00:00:00Z (no timezone: UTC)."
_TAGS_FIELD = {"type": "string", "description": "Comma-separated; the field may repeat."}
_MULTIPART_OR_JSON = _multipart_upload({"tags": _TAGS_FIELD}, json_body=AddByUrl)
_MULTIPART_UPLOAD = _multipart_upload({})
_MULTIPART_IMAGE = _multipart_upload(
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

app = FastAPI(
    title="Image search",
    version="1",
    description="Add images; find them by words, by an image or by an image URL.",
    responses=_ERRORS,
)
install_error_handlers(app)
# Limits and keys are known only once a replica has its arguments; until then, defaults.
_defaults = AppArgs()
app.state.max_body_bytes = _defaults.intake.max_upload_bytes + _MULTIPART_OVERHEAD
app.state.max_json_bytes = _defaults.intake.max_json_bytes
app.state.keyring = None
app.state.limiter = None
app.add_middleware(
    BodySizeLimit,
    limit=lambda: int(app.state.max_body_bytes),
    json_limit=lambda: int(app.state.max_json_bytes),
)


def _count_rejection(status: int, code: str) -> None:
    service_metrics().errors.inc(tags={"status": str(status), "code": code})


# Added last, so outermost: keys and rate limits are checked before any body is read.
app.add_middleware(
    AccessControl,
    auth=lambda: app.state.keyring,
    limiter=lambda: app.state.limiter,
    on_reject=_count_rejection,
)


# Module helpers come before the class: Serve pickles the ingress class by value when
# it is decorated, capturing only what exists by then.
def _results(outcome: SearchOutcome, kind: str) -> SearchResponse:
    service_metrics().search_latency.observe(outcome.took_ms, tags={"kind": kind})
    return SearchResponse(
        results=[
            SearchResult(
                image=ImageOut.from_record(hit.record),
                score=hit.score,
                vector_score=hit.vector_score,
                keyword_score=hit.keyword_score,
                matched=list(hit.matched),
                near_duplicates=list(hit.near_duplicates),
            )
            for hit in outcome.hits
        ],
        took_ms=outcome.took_ms,
        offset=outcome.offset,
        next_offset=outcome.next_offset,
    )


def _invalid(exc: ValidationError) -> ApiError:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
    )
    return ApiError(422, "validation_error", problems)


def _parse_json(model: type[Any], body: bytes) -> Any:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _validated(model: type[Any], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _page_asset(name: str, request: Request) -> Response:
    asset = load_asset(name)
    if asset is None:
        raise ApiError(404, "not_found", f"no file {name!r}")
    headers = {**PAGE_HEADERS, "ETag": asset.etag}
    if etag_matches(request.headers.get("if-none-match"), asset.etag):
        return Response(status_code=304, headers=headers)
    return Response(asset.data, media_type=asset.media_type, headers=headers)


@serve.ingress(app)
class ImageSearchApi:
    # Ray actors allow an async constructor; the store cannot open before the embedder
    # has said which model and dimension it serves.
    async def __init__(  # type: ignore[misc]
        self, captioner: DeploymentHandle, embedder: DeploymentHandle, args: AppArgs
    ) -> None:
        self.args = args
        # Before any await: a missing key variable fails the replica at once.
        app.state.keyring = args.auth.keyring()
        app.state.limiter = args.rate_limit.limiter()
        app.state.max_json_bytes = args.intake.max_json_bytes
        self.models = await ServedModels.connect(captioner, embedder, args.model_timeout_s)
        vectors, blobs = await open_stores(
            args.storage, self.models.embedding_model, self.models.embedding_dim
        )
        self.service = ImageService(
            self.models, vectors, blobs, args.intake.image_limits(), args.search
        )
        self.fetcher = SafeFetcher(args.url_fetch.policy(args.intake.max_upload_bytes))
        self.thumbnails = args.thumbnails.thumbnailer(args.intake.image_limits())
        blobs_config = args.storage.blobs
        self.redirect_content = isinstance(blobs_config, S3Args) and blobs_config.presigned_redirect
        self.presign_expiry_s = getattr(blobs_config, "presign_expiry_s", 0)
        app.state.max_body_bytes = args.intake.max_upload_bytes + _MULTIPART_OVERHEAD
        logger.info(
            "ingress ready: data in %s, captions by %s, vectors by %s (dim %d)",
            args.storage.data_dir,
            self.models.caption_model,
            self.models.embedding_model,
            self.models.embedding_dim,
        )

    # -- images -----------------------------------------------------------------

    @app.post(
        "/images",
        status_code=201,
        response_model=AddedImage,
        openapi_extra=_MULTIPART_OR_JSON,
        responses={200: {"model": AddedImage, "description": "Already indexed."}},
        summary="Add an image by upload (multipart `file`) or by URL (JSON `url`)",
    )
    @app.post(
        "/images/add",
        status_code=201,
        response_model=AddedImage,
        openapi_extra=_MULTIPART_OR_JSON,
        responses={200: {"model": AddedImage, "description": "Already indexed."}},
        deprecated=True,
    )
    async def add_image(self, request: Request, response: Response) -> AddedImage:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await self._form(request)
            image = await self._decode_upload(form)
            tags = self._tags([str(v) for v in form.getlist("tags")])
            source_url = None
        elif content_type.startswith("application/json"):
            body = _parse_json(AddByUrl, await request.body())
            tags = self._tags(body.tags)
            image = await self._fetch_image(body.url)
            source_url = body.url
        else:
            raise ApiError(
                415,
                "unsupported_media_type",
                "send multipart/form-data with a `file` field, or JSON with a `url`",
            )
        added = await self.service.add(image, tags, source_url)
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

    @app.get("/images/list", response_model=ImageList, deprecated=True)
    @app.get("/images", response_model=ImageList, summary="List images by id, with a cursor")
    async def list_images(
        self,
        limit: Annotated[int, Query(ge=1)] = 50,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
        tags_any: Annotated[list[str] | None, Query(description="Repeatable.")] = None,
        tags_all: Annotated[list[str] | None, Query(description="Repeatable.")] = None,
        content_types: Annotated[list[str] | None, Query(description="Repeatable.")] = None,
        min_width: Annotated[int | None, Query(ge=0, le=MAX_DIMENSION)] = None,
        min_height: Annotated[int | None, Query(ge=0, le=MAX_DIMENSION)] = None,
        # Text here, read by SearchFilters, so that query and JSON filters accept the
        # same datetimes (FastAPI's own parsing would take "0.0" as a Unix timestamp).
        created_after: Annotated[str | None, Query(description=_DATETIME_QUERY)] = None,
        created_before: Annotated[str | None, Query(description=_DATETIME_QUERY)] = None,
        source_domains: Annotated[list[str] | None, Query(description="Repeatable.")] = None,
    ) -> ImageList:
        """The same filters as the searches' `filters` object, as query parameters."""
        self._check_limit(limit, self.args.search.max_list_limit)
        given = {
            "tags_any": tags_any,
            "tags_all": tags_all,
            "content_types": content_types,
            "min_width": min_width,
            "min_height": min_height,
            "created_after": created_after,
            "created_before": created_before,
            "source_domains": source_domains,
        }
        filters = _validated(SearchFilters, {k: v for k, v in given.items() if v is not None})
        page, total = await self.service.list(limit, cursor, self._filter(filters))
        return ImageList(
            images=[ImageOut.from_record(r) for r in page.records],
            next_cursor=page.next_cursor,
            total=total,
        )

    @app.delete("/images/delete", status_code=204, deprecated=True)
    async def delete_image_seed(
        self, request: Request, id: str | None = None, image_id: str | None = None
    ) -> Response:
        named = id or image_id
        if named is None and await request.body():
            body = _parse_json(DeleteBody, await request.body())
            named = body.id or body.image_id
        if not named:
            raise ApiError(422, "validation_error", 'name the image: ?id=… or {"id": …}')
        await self.service.delete(named)
        return Response(status_code=204)

    @app.get("/images/{image_id}", response_model=ImageOut, summary="One image record")
    async def get_image(self, image_id: str) -> ImageOut:
        return ImageOut.from_record(await self.service.get(image_id))

    @app.patch("/images/{image_id}", response_model=ImageOut, summary="Replace an image's tags")
    async def update_image(self, image_id: str, body: TagsUpdate) -> ImageOut:
        record = await self.service.update_tags(image_id, self._tags(body.tags))
        return ImageOut.from_record(record)

    @app.get(
        "/images/{image_id}/content",
        response_class=Response,
        responses={200: {"content": {"image/*": {}}, "description": "The original bytes."}},
        summary="The stored image bytes",
    )
    async def image_content(self, image_id: str) -> Response:
        record = await self.service.get(image_id)
        blobs = self.service.blobs
        if self.redirect_content and isinstance(blobs, PresigningBlobStore):
            # The store serves the bytes; the ingress only signs the way there.
            return RedirectResponse(
                blobs.presigned_url(record.blob_key, self.presign_expiry_s), 307
            )
        stream = await self.service.blobs.stream(record.blob_key)
        return StreamingResponse(
            stream.chunks,
            media_type=stream.content_type,
            headers={
                "Content-Length": str(stream.size),
                # Stored bytes may be valid-image polyglots: never let a browser sniff.
                "X-Content-Type-Options": "nosniff",
                # Content-addressed: the bytes behind an id never change.
                "Cache-Control": "public, max-age=31536000, immutable",
            },
        )

    @app.get(
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
        self,
        image_id: str,
        request: Request,
        size: Annotated[
            int | None,
            Query(ge=1, description="One of args.thumbnails.sizes (default 128, 256, 512)."),
        ] = None,
    ) -> Response:
        thumbnails = self.thumbnails
        side = thumbnails.size_for(size)
        record = await self.service.get(image_id)
        etag = thumbnails.etag(record.sha256, side)
        headers = {
            "ETag": etag,
            # Content-addressed like the original: what an ETag names never changes.
            "Cache-Control": "public, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
        }
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        thumb = await thumbnails.for_record(record, self.service.blobs, side)
        return Response(thumb.data, media_type=thumb.content_type, headers=headers)

    @app.delete("/images/{image_id}", status_code=204, summary="Delete an image")
    async def delete_image(self, image_id: str) -> Response:
        await self.service.delete(image_id)
        return Response(status_code=204)

    # -- search -----------------------------------------------------------------

    @app.post(
        "/search/text",
        response_model=SearchResponse,
        summary="Find images by words: CLIP vectors, or hybrid with keywords in captions",
    )
    @app.post("/images/search/text", response_model=SearchResponse, deprecated=True)
    async def search_text(self, body: TextSearch) -> SearchResponse:
        if len(body.query) > self.args.search.max_query_chars:
            raise ApiError(
                422,
                "validation_error",
                f"query longer than {self.args.search.max_query_chars} characters",
            )
        options = self._search_options(body)
        outcome = await self.service.search_text(body.query, options, body.mode, body.alpha)
        return _results(outcome, "hybrid" if body.mode == "hybrid" else "text")

    @app.post(
        "/search/image",
        response_model=SearchResponse,
        openapi_extra=_MULTIPART_IMAGE,
        summary="Find images similar to an uploaded one",
    )
    @app.post(
        "/images/search/image",
        response_model=SearchResponse,
        openapi_extra=_MULTIPART_IMAGE,
        deprecated=True,
    )
    async def search_image(self, request: Request) -> SearchResponse:
        form = await self._form(request)
        fields: dict[str, Any] = {}
        for name in ImageSearchForm.model_fields:
            value = form.get(name)
            if name == "limit" and not value:
                # The seed sent the limit in the query string.
                value = request.query_params.get("limit")
            if isinstance(value, UploadFile):
                raise ApiError(422, "validation_error", f"{name}: must be a text field")
            if value:
                fields[name] = value
        body = _validated(ImageSearchForm, fields)
        options = self._search_options(body)
        image = await self._decode_upload(form)
        return _results(await self.service.search_image(image, options), "image")

    @app.post("/search/url", response_model=SearchResponse, summary="Find images like a URL's")
    @app.post("/image/search/url", response_model=SearchResponse, deprecated=True)
    async def search_url(self, body: UrlSearch) -> SearchResponse:
        options = self._search_options(body)
        image = await self._fetch_image(body.url)
        return _results(await self.service.search_image(image, options), "url")

    @app.post(
        "/search/similar",
        response_model=SearchResponse,
        summary="More like this: images similar to an indexed one (never itself)",
    )
    async def search_similar(self, body: SimilarSearch) -> SearchResponse:
        options = self._search_options(body)
        return _results(await self.service.search_similar(body.id, options), "similar")

    @app.post(
        "/embed-image/",
        response_model=EmbedImageResponse,
        openapi_extra=_MULTIPART_UPLOAD,
        summary="Caption and embed an image without storing it (BLIP x CLIP seed API)",
    )
    @app.post("/embed-image", response_model=EmbedImageResponse, include_in_schema=False)
    async def embed_image(self, request: Request) -> EmbedImageResponse:
        image = await self._decode_upload(await self._form(request))
        caption, vector = await self.service.describe(image)
        return EmbedImageResponse(description=caption, embedding_vector=vector.tolist())

    # -- page -------------------------------------------------------------------

    # Every link in the page is relative, so it works under any route prefix (a request
    # for /prefix is redirected to /prefix/, against which those links resolve).
    @app.get("/", response_class=Response, include_in_schema=False)
    async def page(self, request: Request) -> Response:
        return _page_asset("index.html", request)

    @app.get("/static/{name}", response_class=Response, include_in_schema=False)
    async def static_asset(self, name: str, request: Request) -> Response:
        if name == "index.html":
            raise ApiError(404, "not_found", f"no file {name!r}")
        return _page_asset(name, request)

    # -- health -----------------------------------------------------------------

    @app.get("/healthz", response_model=Health, summary="200 when stores and models answer")
    async def healthz(self) -> Health:
        try:
            images = await self.service.vectors.count()
            await self.service.blobs.exists("healthz/probe")
            await self.models.ping()
        except Exception as exc:
            logger.warning("health check failed: %r", exc)
            raise ApiError(
                503, "unhealthy", f"a dependency is not answering: {type(exc).__name__}"
            ) from exc
        return Health(
            status="ok",
            images=images,
            caption_model=self.models.caption_model,
            embedding_model=self.models.embedding_model,
            embedding_dim=self.models.embedding_dim,
        )

    # -- helpers ----------------------------------------------------------------

    async def _form(self, request: Request) -> FormData:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(
                415, "unsupported_media_type", "send multipart/form-data with a `file` field"
            )
        # The tags, or the search options (limit, offset, min_score, dedup, filters).
        return await request.form(max_files=1, max_fields=self.args.intake.max_tags + 8)

    async def _decode_upload(self, form: FormData) -> DecodedImage:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(
                422, "validation_error", "multipart field `file` with the image is required"
            )
        data = await upload.read(self.args.intake.max_upload_bytes + 1)
        return await self.service.decode(data, upload.content_type)

    async def _fetch_image(self, url: str) -> DecodedImage:
        fetched = await self.fetcher.fetch(url)
        return await self.service.decode(fetched.data, fetched.content_type)

    def _tags(self, raw: list[str]) -> list[str]:
        limits = self.args.intake
        tags: list[str] = []
        for value in raw:
            for tag in value.split(","):
                tag = tag.strip()
                if not tag:
                    continue
                if len(tag) > limits.max_tag_chars:
                    raise ApiError(
                        422,
                        "validation_error",
                        f"tag longer than {limits.max_tag_chars} characters",
                    )
                if tag not in tags:
                    tags.append(tag)
        if len(tags) > limits.max_tags:
            raise ApiError(422, "validation_error", f"at most {limits.max_tags} tags")
        return tags

    def _search_limit(self, limit: int | None) -> int:
        if limit is None:
            return self.args.search.default_limit
        self._check_limit(limit, self.args.search.max_limit)
        return limit

    def _search_options(self, body: SearchOptions | ImageSearchForm) -> ServiceSearchOptions:
        limit = self._search_limit(body.limit)
        max_depth = self.args.search.max_depth
        if body.offset + limit > max_depth:
            raise ApiError(422, "validation_error", f"offset + limit must be at most {max_depth}")
        return ServiceSearchOptions(
            limit=limit,
            offset=body.offset,
            filters=self._filter(body.filters),
            min_score=body.min_score,
            dedup=body.dedup,
        )

    def _filter(self, filters: SearchFilters | None) -> ImageFilter | None:
        """The store filter, its tags normalised by the same rules as at ingest."""
        if filters is None:
            return None
        return filters.to_filter(self._tags(filters.tags_any), self._tags(filters.tags_all))

    @staticmethod
    def _check_limit(limit: int, maximum: int) -> None:
        if not 1 <= limit <= maximum:
            raise ApiError(422, "validation_error", f"limit must be between 1 and {maximum}")


# Deployment defaults; serve_config.yaml overrides them per environment.
Ingress = serve.deployment(
    name="Ingress",
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0.2},
)(ImageSearchApi)
