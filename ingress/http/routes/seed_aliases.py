"""The paths of the FastAPI + ChromaDB backend this service replaces, kept so that its
clients keep working: the same endpoints as the v1 API, marked deprecated.

Registered before the v1 routers: `/images/list` and `/images/delete` would otherwise
be taken for `/images/{image_id}`.
"""

from fastapi import APIRouter, Request, Response

from ingress.core.errors import InvalidRequest
from ingress.http import deps
from ingress.http.deps import RuntimeDep
from ingress.http.routes import images, search
from ingress.http.schemas import DeleteBody

router = APIRouter(deprecated=True)

router.add_api_route("/images/add", images.add_image, methods=["POST"], **images.ADD_ROUTE)
router.add_api_route("/images/list", images.list_images, methods=["GET"], **images.LIST_ROUTE)
router.add_api_route(
    "/images/search/text", search.search_text, methods=["POST"], **search.TEXT_ROUTE
)
router.add_api_route(
    "/images/search/image", search.search_image, methods=["POST"], **search.IMAGE_ROUTE
)
router.add_api_route("/image/search/url", search.search_url, methods=["POST"], **search.URL_ROUTE)


@router.delete("/images/delete", status_code=204)
async def delete_image_seed(
    request: Request, runtime: RuntimeDep, id: str | None = None, image_id: str | None = None
) -> Response:
    """The seed named the image in the query (`?id=`) or in a JSON body."""
    named = id or image_id
    if named is None and await request.body():
        body = deps.parse_json(DeleteBody, await request.body())
        named = body.id or body.image_id
    if not named:
        raise InvalidRequest('name the image: ?id=… or {"id": …}')
    await runtime.service.delete(named)
    return Response(status_code=204)
