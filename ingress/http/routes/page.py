"""The search page: its HTML at `/` and its script and style under `/static/`.

Every link in the page is relative, so it works under any route prefix (a request for
/prefix is redirected to /prefix/, against which those links resolve).
"""

from fastapi import APIRouter, Request, Response

from ingress.core.thumbnails import etag_matches
from ingress.http.errors import ApiError
from ingress.http.web import PAGE_HEADERS, load_asset

router = APIRouter(include_in_schema=False)


def _asset(name: str, request: Request) -> Response:
    asset = load_asset(name)
    if asset is None:
        raise ApiError(404, "not_found", f"no file {name!r}")
    headers = {**PAGE_HEADERS, "ETag": asset.etag}
    if etag_matches(request.headers.get("if-none-match"), asset.etag):
        return Response(status_code=304, headers=headers)
    return Response(asset.data, media_type=asset.media_type, headers=headers)


@router.get("/", response_class=Response)
async def page(request: Request) -> Response:
    return _asset("index.html", request)


@router.get("/static/{name}", response_class=Response)
async def static_asset(name: str, request: Request) -> Response:
    if name == "index.html":
        raise ApiError(404, "not_found", f"no file {name!r}")
    return _asset(name, request)
