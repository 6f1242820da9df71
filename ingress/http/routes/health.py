"""/healthz: 200 only when both stores and both model deployments answer."""

import logging

from fastapi import APIRouter

from ingress.core.captioning import PENDING
from ingress.http.deps import RuntimeDep
from ingress.http.errors import ApiError
from ingress.http.metrics import service_metrics
from ingress.http.schemas import Health

logger = logging.getLogger("ingress.http.routes.health")

router = APIRouter()


@router.get("/healthz", response_model=Health, summary="200 when stores and models answer")
async def healthz(runtime: RuntimeDep) -> Health:
    service, models = runtime.service, runtime.models
    try:
        images = await service.vectors.count()
        backlog = await service.vectors.count(PENDING)
        await service.blobs.exists("healthz/probe")
        await models.ping()
    except Exception as exc:
        logger.warning("health check failed: %r", exc)
        raise ApiError(
            503, "unhealthy", f"a dependency is not answering: {type(exc).__name__}"
        ) from exc
    service_metrics().caption_backlog.set(backlog)
    return Health(
        status="ok",
        images=images,
        caption_backlog=backlog,
        caption_model=models.caption_model,
        embedding_model=models.embedding_model,
        embedding_dim=models.embedding_dim,
    )
