"""The service's own Prometheus metrics, exported by Ray beside Serve's built-in ones
(scrape each node's metrics port; see README "Observability")."""

from __future__ import annotations

from functools import lru_cache

from ray.util.metrics import Counter, Gauge, Histogram

_LATENCY_MS: list[float] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
_LAG_S: list[float] = [1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600]


class ServiceMetrics:
    def __init__(self) -> None:
        self.images_added = Counter(
            "imagesearch_images_added_total",
            description="Images ingested, by source (upload or url) and whether they were new.",
            tag_keys=("source", "outcome"),
        )
        self.errors = Counter(
            "imagesearch_errors_total",
            description="Error responses by status and error code (rejections by reason).",
            tag_keys=("status", "code"),
        )
        self.model_latency = Histogram(
            "imagesearch_model_call_latency_ms",
            description="Latency of calls from the ingress to a model deployment.",
            boundaries=_LATENCY_MS,
            tag_keys=("call",),
        )
        self.search_latency = Histogram(
            "imagesearch_search_latency_ms",
            description="End-to-end search latency inside the ingress, by kind.",
            boundaries=_LATENCY_MS,
            tag_keys=("kind",),
        )

        self.captions_written = Counter(
            "imagesearch_captions_written_total",
            description="Captions the caption worker wrote to pending records.",
        )
        self.captions_failed = Counter(
            "imagesearch_captions_failed_total",
            description="Records marked caption_status failed after their last retry.",
        )
        self.caption_lag = Histogram(
            "imagesearch_caption_lag_s",
            description="Seconds from ingest to the caption being written (background mode).",
            boundaries=_LAG_S,
        )
        self.caption_backlog = Gauge(
            "imagesearch_caption_backlog",
            description="Records waiting for a caption (caption_status pending).",
        )

        self.orphan_blobs_found = Counter(
            "imagesearch_orphan_blobs_found_total",
            description="Blobs without a record (older than min_age_s) the orphan sweep found.",
        )
        self.orphan_blobs_removed = Counter(
            "imagesearch_orphan_blobs_removed_total",
            description="Orphan blobs the sweep removed after checking them again.",
        )
        self.records_without_blob = Gauge(
            "imagesearch_records_without_blob",
            description="Records whose blob is missing, at the last sweep (never deleted "
            "by the sweep: alert on it).",
        )

    def orphans_swept(self, found: int, removed: int, records_without_blob: int) -> None:
        if found:
            self.orphan_blobs_found.inc(found)
        if removed:
            self.orphan_blobs_removed.inc(removed)
        self.records_without_blob.set(records_without_blob)

    def caption_written(self, lag_s: float) -> None:
        self.captions_written.inc()
        self.caption_lag.observe(lag_s)

    def caption_failed(self) -> None:
        self.captions_failed.inc()


@lru_cache(maxsize=1)
def service_metrics() -> ServiceMetrics:
    """Created on first use inside the replica process, not at import."""
    return ServiceMetrics()
