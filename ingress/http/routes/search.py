"""/search: by words (vector or hybrid, one text or weighted terms), by an uploaded
image, by a URL's image, and more like indexed ones.

No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
run time.
"""

from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from ingress.core.errors import InvalidRequest
from ingress.core.service import SearchOptions as ServiceSearchOptions
from ingress.core.service import SearchOutcome
from ingress.http import deps
from ingress.http.deps import RuntimeDep
from ingress.http.metrics import service_metrics
from ingress.http.openapi import MULTIPART_IMAGE
from ingress.http.runtime import Runtime
from ingress.http.schemas import (
    ImageOut,
    ImageSearchForm,
    SearchOptions,
    SearchResponse,
    SearchResult,
    SimilarSearch,
    TextSearch,
    UrlSearch,
)

router = APIRouter()

# Shared with the seed aliases (ingress.http.routes.seed_aliases).
TEXT_ROUTE: dict[str, Any] = {"response_model": SearchResponse}
IMAGE_ROUTE: dict[str, Any] = {"response_model": SearchResponse, "openapi_extra": MULTIPART_IMAGE}
URL_ROUTE: dict[str, Any] = {"response_model": SearchResponse}


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


def _options(body: SearchOptions | ImageSearchForm, runtime: Runtime) -> ServiceSearchOptions:
    config = runtime.args.search
    limit = config.default_limit if body.limit is None else body.limit
    if body.limit is not None:
        deps.check_limit(limit, config.max_limit)
    if body.offset + limit > config.max_depth:
        raise InvalidRequest(f"offset + limit must be at most {config.max_depth}")
    return ServiceSearchOptions(
        limit=limit,
        offset=body.offset,
        filters=deps.store_filter(body.filters, runtime),
        min_score=body.min_score,
        dedup=body.dedup,
    )


@router.post(
    "/search/text",
    summary="Find images by words (or weighted terms): vectors, or hybrid with caption keywords",
    **TEXT_ROUTE,
)
async def search_text(body: TextSearch, runtime: RuntimeDep) -> SearchResponse:
    options = _options(body, runtime)
    query = body.query if isinstance(body.query, str) else [t.to_term() for t in body.query]
    outcome = await runtime.service.search_text(query, options, body.mode, body.alpha)
    return _results(outcome, "hybrid" if body.mode == "hybrid" else "text")


@router.post("/search/image", summary="Find images similar to an uploaded one", **IMAGE_ROUTE)
async def search_image(request: Request, runtime: RuntimeDep) -> SearchResponse:
    form = await deps.read_form(request, runtime)
    fields: dict[str, Any] = {}
    for name in ImageSearchForm.model_fields:
        value = form.get(name)
        if name == "limit" and not value:
            # The seed sent the limit in the query string.
            value = request.query_params.get("limit")
        if isinstance(value, UploadFile):
            raise InvalidRequest(f"{name}: must be a text field")
        if value:
            fields[name] = value
    body = deps.validated(ImageSearchForm, fields)
    options = _options(body, runtime)
    image = await deps.decode_upload(form, runtime, for_query=True)
    return _results(await runtime.service.search_image(image, options), "image")


@router.post("/search/url", summary="Find images like a URL's", **URL_ROUTE)
async def search_url(body: UrlSearch, runtime: RuntimeDep) -> SearchResponse:
    options = _options(body, runtime)
    image = await deps.fetch_image(body.url, runtime, for_query=True)
    return _results(await runtime.service.search_image(image, options), "url")


@router.post(
    "/search/similar",
    response_model=SearchResponse,
    summary="More like these: images similar to indexed ones (never those given)",
)
async def search_similar(body: SimilarSearch, runtime: RuntimeDep) -> SearchResponse:
    options = _options(body, runtime)
    outcome = await runtime.service.search_similar(body.example_ids(), options, body.negative_ids)
    return _results(outcome, "similar")
