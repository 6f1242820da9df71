"""/embed-image/: caption and embed without storing, as the BLIP x CLIP seed answered.

No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
run time.
"""

from fastapi import APIRouter, Request

from ingress.http import deps
from ingress.http.deps import RuntimeDep
from ingress.http.openapi import MULTIPART_UPLOAD
from ingress.http.schemas import EmbedImageResponse

router = APIRouter()


@router.post(
    "/embed-image/",
    response_model=EmbedImageResponse,
    openapi_extra=MULTIPART_UPLOAD,
    summary="Caption and embed an image without storing it (BLIP x CLIP seed API)",
)
@router.post("/embed-image", response_model=EmbedImageResponse, include_in_schema=False)
async def embed_image(request: Request, runtime: RuntimeDep) -> EmbedImageResponse:
    image = await deps.decode_upload(await deps.read_form(request, runtime), runtime)
    caption, vector = await runtime.service.describe(image)
    return EmbedImageResponse(description=caption, embedding_vector=vector.tolist())
