"""/healthz: 200 only when both stores and both model deployments answer."""

import logging

from fastapi import APIRouter

from ingress.http.deps import RuntimeDep
from ingress.http.errors import ApiError
from ingress.http.schemas import Health

logger = logging.getLogger("ingress.http.routes.health")

router = APIRouter()


@router.get("/healthz", response_model=Health, summary="200 when stores and models answer")
async def healthz(runtime: RuntimeDep) -> Health:
    service, models = runtime.service, runtime.models
    try:
        images = await service.vectors.count()
        await service.blobs.exists("healthz/probe")
        await models.ping()
    except Exception as exc:
        logger.warning("health check failed: %r", exc)
        raise ApiError(
            503, "unhealthy", f"a dependency is not answering: {type(exc).__name__}"
        ) from exc
    return Health(
        status="ok",
        images=images,
        caption_model=models.caption_model,
        embedding_model=models.embedding_model,
        embedding_dim=models.embedding_dim,
    )
