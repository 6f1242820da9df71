"""The FastAPI application of one Ingress replica: the routers, the one error mapping,
and the middleware that guards every request before a body is read."""

from __future__ import annotations

from fastapi import FastAPI

from ingress.http.access import AccessControl
from ingress.http.body_limit import BodySizeLimit
from ingress.http.errors import count_error, install_error_handlers
from ingress.http.openapi import ERROR_RESPONSES
from ingress.http.priority import InteractivePriority
from ingress.http.routes import embed, health, images, page, search, seed_aliases
from ingress.http.runtime import Runtime

# Room for multipart framing and small form fields around the largest accepted image.
MULTIPART_OVERHEAD = 64 * 1024


def api_routes() -> FastAPI:
    """The routes and their error mapping, with no replica behind them: what the
    OpenAPI document describes."""
    app = FastAPI(
        title="Image search",
        version="1",
        description="Add images; find them by words, by an image or by an image URL.",
        responses=ERROR_RESPONSES,
    )
    install_error_handlers(app)
    # The seed's paths first: `/images/list` must not be taken for `/images/{image_id}`.
    for module in (seed_aliases, images, search, embed, page, health):
        app.include_router(module.router)
    return app


def create_api(runtime: Runtime) -> FastAPI:
    """The app one replica serves: the routes over `runtime`, behind its limits."""
    app = api_routes()
    app.state.runtime = runtime
    intake = runtime.args.intake
    app.add_middleware(
        BodySizeLimit,
        limit=lambda: intake.max_upload_bytes + MULTIPART_OVERHEAD,
        json_limit=lambda: intake.max_json_bytes,
    )
    app.add_middleware(InteractivePriority, nudge=lambda: runtime.nudge_worker)
    # Added last, so outermost: keys and rate limits are checked before any body is read.
    app.add_middleware(
        AccessControl,
        auth=lambda: runtime.keyring,
        limiter=lambda: runtime.limiter,
        on_reject=count_error,
    )
    return app
