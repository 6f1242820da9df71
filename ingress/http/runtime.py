"""What the routes of one Ingress replica work with, built once when it starts
(by ingress.app.assemble) and read by every request through ingress.http.deps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ingress.core.fetch import SafeFetcher
from ingress.core.service import ImageService
from ingress.core.thumbnails import Thumbnailer
from ingress.http.access import KeyRing
from ingress.http.model_client import ServedModels
from ingress.http.rate_limit import TokenBucketLimiter
from ingress.settings import AppArgs


@dataclass
class Runtime:
    args: AppArgs
    models: ServedModels
    service: ImageService
    fetcher: SafeFetcher
    thumbnails: Thumbnailer
    keyring: KeyRing | None
    limiter: TokenBucketLimiter | None
    # Answer GET /images/{id}/content with a presigned redirect (S3 only).
    redirect_content: bool = False
    presign_expiry_s: int = 0
    # Tells the caption worker that users are waiting (ingress.http.priority).
    nudge_worker: Callable[[], None] | None = None
