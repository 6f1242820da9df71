"""The application's arguments: what `serve_config.yaml` may set under `args:`.

Unknown keys fail the deployment at load with pydantic's message naming the key.
Pydantic models only: what they configure is built in ingress.app, so reading a
configuration loads no FastAPI, Ray or model code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.settings import CaptionerSettings, EmbedderSettings

MiB = 1024 * 1024

DEFAULT_KEYS_ENV = "IMAGESEARCH_API_KEYS"
DEFAULT_HEADER = "X-API-Key"

ThumbnailFormat = Literal["webp", "jpeg"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class IndexUpkeepArgs(_Strict):
    """Background index upkeep of the LanceDB store (ingress.stores.lancedb.index)."""

    enabled: bool = True
    # Exact search below this many rows; the ANN index (IVF_RQ, re-ranked) from here on.
    ann_min_rows: int = Field(default=50_000, ge=1)
    # A check reads manifest metadata only (about a millisecond).
    interval_s: float = Field(default=10.0, gt=0)
    # Optimize (fold new rows into the indices, merge files) once this many rows are
    # missing from an index, or once this many small data files pile up: every write
    # adds one, and each adds ~0.1 ms to every search until they are merged.
    refresh_rows: int = Field(default=5_000, ge=1)
    compact_fragments: int = Field(default=32, ge=2)


class LanceDBArgs(_Strict):
    """Embedded vector store: a directory on disk, shared safely by several replicas."""

    kind: Literal["lancedb"] = "lancedb"
    path: Path | None = Field(default=None, description="Default: <data_dir>/lancedb.")
    table: str = Field(default="images", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    index_upkeep: IndexUpkeepArgs = Field(default_factory=IndexUpkeepArgs)


class WeaviateArgs(_Strict):
    """Production vector store. The API key comes from the environment variable named
    here (a Kubernetes Secret), never from the config file."""

    kind: Literal["weaviate"]
    url: str = Field(description="HTTP endpoint, e.g. http://weaviate:8080.")
    grpc_host: str | None = Field(default=None, description="Default: the HTTP host.")
    grpc_port: int = 50051
    grpc_secure: bool = False
    api_key_env: str | None = "WEAVIATE_API_KEY"
    collection: str = Field(default="Image", pattern=r"^[A-Z][A-Za-z0-9_]{0,63}$")
    init_timeout_s: float = Field(default=10.0, gt=0)
    query_timeout_s: float = Field(default=30.0, gt=0)
    insert_timeout_s: float = Field(default=60.0, gt=0)


class LocalBlobArgs(_Strict):
    kind: Literal["local"] = "local"
    path: Path | None = Field(default=None, description="Default: <data_dir>/blobs.")


class S3Args(_Strict):
    """Production blob store: AWS S3, MinIO or LocalStack. Credentials come from the
    standard AWS chain (env vars, profile, instance or pod role), never from here."""

    kind: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = Field(default=None, description="MinIO/LocalStack endpoint.")
    create_bucket: bool = False
    # Answer GET /images/{id}/content with a redirect to a presigned URL instead of
    # streaming the bytes through the ingress.
    presigned_redirect: bool = False
    presign_expiry_s: int = Field(default=300, ge=10, le=7 * 24 * 3600)


class StorageArgs(_Strict):
    """Which stores hold vectors and image bytes; the embedded pair by default."""

    data_dir: Path = Field(default=Path("./data"), description="Home of the embedded stores.")
    vectors: LanceDBArgs | WeaviateArgs = Field(default_factory=LanceDBArgs, discriminator="kind")
    blobs: LocalBlobArgs | S3Args = Field(default_factory=LocalBlobArgs, discriminator="kind")

    def lancedb_path(self, args: LanceDBArgs) -> Path:
        return args.path or self.data_dir / "lancedb"

    def blob_path(self, args: LocalBlobArgs) -> Path:
        return args.path or self.data_dir / "blobs"


class IntakeArgs(_Strict):
    max_upload_bytes: int = Field(default=20 * MiB, ge=1024)
    max_pixels: int = Field(default=40_000_000, ge=1)
    max_frames: int = Field(default=1000, ge=1)
    # Longest side of the decoded copy sent to the model deployments.
    model_image_side: int = Field(default=512, ge=32, le=1024)
    # JSON bodies (URLs, queries, tags) are small; images come as multipart.
    max_json_bytes: int = Field(default=64 * 1024, ge=1024, le=MiB)
    max_tags: int = Field(default=20, ge=0, le=200)
    max_tag_chars: int = Field(default=64, ge=1, le=256)


class UrlFetchArgs(_Strict):
    # Off by default: a public service must not fetch from its own network.
    allow_private_addresses: bool = False
    allowed_networks: list[str] = Field(default_factory=list)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=10.0, gt=0)
    total_timeout_s: float = Field(default=30.0, gt=0)
    max_redirects: int = Field(default=3, ge=0, le=10)


class SearchArgs(_Strict):
    default_limit: int = Field(default=10, ge=1)
    max_limit: int = Field(default=100, ge=1, le=1000)
    max_query_chars: int = Field(default=1000, ge=1, le=2000)
    max_list_limit: int = Field(default=500, ge=1, le=5000)
    # Pagination bound: offset + limit may not exceed it (deep pages cost a full scan).
    max_depth: int = Field(default=1000, ge=1, le=10_000)
    # Hybrid search weight when a request gives none: 0 = keywords only, 1 = vector only.
    default_alpha: float = Field(default=0.5, ge=0, le=1)
    # Cosine similarity from which two images count as near-duplicates: reported at
    # ingest (`near_duplicate_of`) and collapsed by `dedup`.
    near_duplicate_similarity: float = Field(default=0.95, gt=0, le=1)
    # The ingest check costs one nearest-neighbour search per new image; a bulk import
    # into a large store without an ANN index may want it off.
    report_near_duplicates: bool = True
    # Hybrid search ranks at least this many candidates from each list, so that the
    # normalisation (and therefore the order) stays the same from one page to the next.
    candidate_pool: int = Field(default=50, ge=1, le=1000)
    # With dedup, fetch this many times more candidates than the page needs, since
    # collapsed results leave gaps to fill.
    dedup_overfetch: int = Field(default=4, ge=1, le=50)
    # No search asks a store for more candidates than this.
    max_candidates: int = Field(default=4000, ge=1, le=10_000)

    @model_validator(mode="after")
    def _depth_fits(self) -> SearchArgs:
        if self.max_limit > self.max_depth:
            raise ValueError("search.max_depth must be at least search.max_limit")
        return self


class ThumbnailArgs(_Strict):
    """Small copies for result grids (GET /images/{id}/thumbnail), kept in memory."""

    # A short fixed list: a client cannot make the service render every size it names.
    sizes: list[int] = Field(default_factory=lambda: [128, 256, 512], min_length=1, max_length=8)
    default_size: int = 256
    format: ThumbnailFormat = "webp"
    quality: int = Field(default=80, ge=1, le=100)
    # Per ingress replica; thumbnails are a few KiB to a few tens of KiB each.
    cache_bytes: int = Field(default=64 * MiB, ge=0, le=4096 * MiB)
    # Renderings at once per replica: each decodes an original, up to intake.max_pixels.
    max_concurrent: int = Field(default=2, ge=1, le=64)

    @model_validator(mode="after")
    def _sizes_in_range(self) -> ThumbnailArgs:
        if any(not 16 <= size <= 2048 for size in self.sizes):
            raise ValueError("thumbnail sizes must be between 16 and 2048 pixels")
        if self.default_size not in self.sizes:
            raise ValueError(f"default_size {self.default_size} must be one of sizes {self.sizes}")
        return self


class AuthArgs(BaseModel):
    """API keys with `read` and `write` scopes; off by default for local use."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    keys_env: str = Field(
        default=DEFAULT_KEYS_ENV,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="Environment variable holding the `name:scopes:key` entries.",
    )
    header: str = Field(
        default=DEFAULT_HEADER,
        pattern=r"^[A-Za-z0-9-]{1,64}$",
        description="Request header carrying the key; `Authorization: Bearer` works too.",
    )

    @field_validator("header")
    @classmethod
    def _not_authorization(cls, value: str) -> str:
        if value.lower() == "authorization":
            raise ValueError(
                "`Authorization: Bearer <key>` is always accepted; name another header"
            )
        return value


class RateLimitArgs(BaseModel):
    """Token bucket per API key (or per client address without keys).

    Limits are per ingress replica: with N replicas a client may get N times the rate.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    requests_per_s: float = Field(default=10, gt=0, description="Sustained rate per client.")
    burst: int = Field(default=20, ge=1, description="Requests allowed at once after a pause.")
    max_clients: int = Field(
        default=10_000, ge=1, description="Buckets kept; the least recently seen go first."
    )


class CaptionWorkerArgs(_Strict):
    """The caption worker: drains the backlog of "pending" records (background mode)."""

    enabled: bool = True
    # Captions in flight at once. Enough to fill the Captioner's batches on every
    # replica (max_batch_size x replicas, or more), so that its autoscaler sees the
    # backlog as ongoing requests; more only queues in the Captioner.
    concurrency: int = Field(default=32, ge=1, le=4096)
    # Records read from the store per page of the backlog.
    page_size: int = Field(default=128, ge=1, le=10_000)
    # Failures before a record is marked "failed" with the last reason; the wait
    # before retry n is backoff_s * 2 ** (n - 1).
    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff_s: float = Field(default=5.0, ge=0)
    # How often an empty backlog is looked at again.
    idle_poll_s: float = Field(default=2.0, gt=0, le=3600)
    # Interactive requests first: after an upload or a search reaches an ingress, the
    # worker keeps one caption in flight (not `concurrency`) for this long. Where the
    # models share cores, searches and acknowledgements stay fast and the backlog
    # still drains, one at a time. 0: never yield.
    yield_to_requests_s: float = Field(default=1.0, ge=0, le=60)


class CaptioningArgs(_Strict):
    """When captions are made: `background` (default) indexes an upload at embedding
    speed and captions it later; `inline` captions before answering, as before."""

    mode: Literal["background", "inline"] = "background"
    worker: CaptionWorkerArgs = Field(default_factory=CaptionWorkerArgs)


class OrphanSweepArgs(_Strict):
    """The background sweep of orphan blobs (blobs no record points at, e.g. left by a
    replica killed mid-ingest), run by the CaptionWorker's single replica with the rules
    of `python -m ingress.maintenance orphans --delete`."""

    enabled: bool = True
    # Only blobs older than this are orphans: keep it well above the longest ingest
    # (model_timeout_s), or an ingest in flight could lose its blob.
    min_age_s: float = Field(default=3600.0, ge=0)
    # Between sweeps. Each walks every record and lists every blob.
    interval_s: float = Field(default=3600.0, gt=0)
    # Before the first sweep after the worker starts.
    initial_delay_s: float = Field(default=60.0, ge=0)


class AppArgs(_Strict):
    """Everything `build_app` needs; see serve_config.yaml for a commented example."""

    storage: StorageArgs = Field(default_factory=StorageArgs)
    captioner: CaptionerSettings = Field(default_factory=CaptionerSettings)
    embedder: EmbedderSettings = Field(default_factory=EmbedderSettings)
    intake: IntakeArgs = Field(default_factory=IntakeArgs)
    url_fetch: UrlFetchArgs = Field(default_factory=UrlFetchArgs)
    search: SearchArgs = Field(default_factory=SearchArgs)
    auth: AuthArgs = Field(default_factory=AuthArgs)
    rate_limit: RateLimitArgs = Field(default_factory=RateLimitArgs)
    thumbnails: ThumbnailArgs = Field(default_factory=ThumbnailArgs)
    captioning: CaptioningArgs = Field(default_factory=CaptioningArgs)
    orphan_sweep: OrphanSweepArgs = Field(default_factory=OrphanSweepArgs)
    # A model call slower than this becomes a 504 for its request.
    model_timeout_s: float = Field(default=120.0, gt=0)

    def with_absolute_paths(self) -> AppArgs:
        """A copy with relative store paths and local model directories resolved against
        the current directory. Replicas do not share the working directory of `serve
        run`, and records name local models by their resolved path: the builder and the
        command-line tools resolve them alike, where the user typed them."""
        storage = self.storage
        resolved: dict[str, object] = {"data_dir": storage.data_dir.resolve()}
        for name in ("vectors", "blobs"):
            store = getattr(storage, name)
            if getattr(store, "path", None) is not None:
                resolved[name] = store.model_copy(update={"path": store.path.resolve()})
        update: dict[str, object] = {"storage": storage.model_copy(update=resolved)}
        for name in ("captioner", "embedder"):
            settings = getattr(self, name)
            local = Path(settings.model.model_id).expanduser()
            if local.exists():
                model = settings.model.model_copy(update={"model_id": str(local.resolve())})
                update[name] = settings.model_copy(update={"model": model})
        return self.model_copy(update=update)
