"""The HTTP schema (v1): request and response bodies as pydantic models."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from ingress.records import ImageRecord


class ImageOut(BaseModel):
    id: str
    caption: str
    width: int
    height: int
    content_type: str
    size_bytes: int
    sha256: str
    source_url: str | None
    tags: list[str]
    created_at: datetime
    content_url: str = Field(description="Path of GET /images/{id}/content.")

    @classmethod
    def from_record(cls, record: ImageRecord) -> ImageOut:
        return cls(
            **record.model_dump(exclude={"caption_model", "embedding_model"}),
            content_url=f"/images/{record.id}/content",
        )


class AddedImage(ImageOut):
    duplicate: bool = Field(description="True when these exact bytes were already indexed.")


class ImageList(BaseModel):
    images: list[ImageOut]
    next_cursor: str | None
    total: int


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AddByUrl(_Body):
    url: str = Field(min_length=1, max_length=4096)
    tags: list[str] = Field(default_factory=list)


class TextSearch(_Body):
    query: str = Field(min_length=1)
    # Strict: true or "3" is a client bug, not a limit.
    limit: StrictInt | None = Field(default=None, ge=1)


class UrlSearch(_Body):
    url: str = Field(min_length=1, max_length=4096)
    limit: StrictInt | None = Field(default=None, ge=1)


class DeleteBody(BaseModel):
    """The seed's DELETE /images/delete names the image in its body or query."""

    id: str | None = None
    image_id: str | None = None


class SearchResult(BaseModel):
    image: ImageOut
    score: float = Field(description="Cosine similarity; higher is more similar.")


class SearchResponse(BaseModel):
    results: list[SearchResult]
    took_ms: float


class EmbedImageResponse(BaseModel):
    """Exactly the BLIP x CLIP seed's /embed-image/ answer."""

    description: str
    embedding_vector: list[float]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    status: str
    images: int
    caption_model: str
    embedding_model: str
    embedding_dim: int
