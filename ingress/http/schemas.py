"""The HTTP schema (v1): request and response bodies as pydantic models."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Json,
    StrictBool,
    StrictFloat,
    StrictInt,
    Tag,
    field_validator,
    model_validator,
)

from ingress.core import queries
from ingress.stores.records import ImageFilter, ImageRecord
from ingress.stores.values import utc

# Bounds that hold whatever the settings say (per-deployment tag limits are applied on
# top, see ImageSearchApi._tags): a filter is a handful of values, not a list to scan.
_MAX_FILTER_VALUES = 200
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
MAX_DIMENSION = 2**31 - 1


CaptionStatus = Literal["pending", "done", "failed"]


class ImageOut(BaseModel):
    id: str
    caption: str | None = Field(
        description="BLIP's caption; null while caption_status is pending (or failed)."
    )
    caption_status: CaptionStatus = Field(
        default="done",
        description="pending: indexed and searchable by vector, caption to come; done; "
        "failed: captioning gave up (see caption_error).",
    )
    caption_error: str | None = Field(
        default=None, description="Why captioning failed, when caption_status is failed."
    )
    width: int
    height: int
    content_type: str
    size_bytes: int
    sha256: str
    source_url: str | None
    source_domain: str | None = Field(
        default=None, description="Lower-case host of source_url; what `source_domains` filters on."
    )
    tags: list[str]
    created_at: datetime
    content_url: str = Field(description="Path of GET /images/{id}/content.")

    @classmethod
    def from_record(cls, record: ImageRecord) -> ImageOut:
        return cls(
            **record.model_dump(exclude={"caption_model", "embedding_model"}),
            content_url=f"/images/{record.id}/content",
        )


class NearDuplicate(BaseModel):
    id: str
    score: float = Field(description="Cosine similarity of the two images' CLIP vectors.")


class AddedImage(ImageOut):
    duplicate: bool = Field(description="True when these exact bytes were already indexed.")
    near_duplicate_of: NearDuplicate | None = Field(
        default=None,
        description="The most similar image already indexed, when its cosine similarity "
        "reaches search.near_duplicate_similarity (the new image is stored all the same).",
    )


class ImageList(BaseModel):
    images: list[ImageOut]
    next_cursor: str | None
    total: int


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AddByUrl(_Body):
    url: str = Field(min_length=1, max_length=4096)
    tags: list[str] = Field(default_factory=list)
    wait_for_caption: StrictBool = Field(
        default=False, description="Caption before answering, even in background mode."
    )


class SearchFilters(_Body):
    """Conditions every result must meet (all of those given). Tags are matched exactly
    as stored; domains are compared with the lower-case host of each image's source_url.
    A datetime without a timezone is taken as UTC."""

    tags_any: list[str] = Field(
        default_factory=list, max_length=_MAX_FILTER_VALUES, description="At least one of."
    )
    tags_all: list[str] = Field(
        default_factory=list, max_length=_MAX_FILTER_VALUES, description="Every one of."
    )
    content_types: list[str] = Field(
        default_factory=list, max_length=20, description="e.g. image/jpeg, image/png."
    )
    min_width: StrictInt | None = Field(default=None, ge=0, le=MAX_DIMENSION)
    min_height: StrictInt | None = Field(default=None, ge=0, le=MAX_DIMENSION)
    created_after: datetime | None = Field(default=None, description="Exclusive.")
    created_before: datetime | None = Field(default=None, description="Exclusive.")
    source_domains: list[str] = Field(
        default_factory=list, max_length=20, description="Hosts, e.g. example.com (exact)."
    )
    caption_status: list[CaptionStatus] = Field(
        default_factory=list, max_length=3, description="One of: pending, done, failed."
    )

    @field_validator("caption_status", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("content_types", "source_domains")
    @classmethod
    def _lower_case(cls, values: list[str]) -> list[str]:
        cleaned = [v.strip().rstrip(".").lower() for v in values]
        if any(not v or len(v) > 255 for v in cleaned):
            raise ValueError("values must be 1 to 255 characters")
        return list(dict.fromkeys(cleaned))

    @field_validator("created_after", "created_before", mode="before")
    @classmethod
    def _iso_8601_only(cls, value: object) -> object:
        # pydantic would read a number (or a numeric string, as every query parameter
        # is) as a Unix timestamp; the API documents ISO 8601 and nothing else.
        if isinstance(value, bool | int | float) or (
            isinstance(value, str) and _NUMBER.fullmatch(value.strip())
        ):
            raise ValueError("expected an ISO 8601 datetime, e.g. 2024-06-01T00:00:00Z")
        return value

    @field_validator("created_after", "created_before")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            return utc(value)
        except OverflowError:
            raise ValueError("datetime out of range") from None

    def to_filter(self, tags_any: list[str], tags_all: list[str]) -> ImageFilter:
        """The store filter, with the tag lists as the tag rules normalised them."""
        return ImageFilter(
            tags_any=tuple(tags_any),
            tags_all=tuple(tags_all),
            content_types=tuple(self.content_types),
            min_width=self.min_width,
            min_height=self.min_height,
            created_after=self.created_after,
            created_before=self.created_before,
            source_domains=tuple(self.source_domains),
            caption_statuses=tuple(dict.fromkeys(self.caption_status)),
        )


class SearchOptions(_Body):
    """What every search takes besides its query."""

    # Strict: true or "3" is a client bug, not a limit.
    limit: StrictInt | None = Field(default=None, ge=1, description="Default 10, at most 100.")
    offset: StrictInt = Field(
        default=0, ge=0, description="Results to skip; offset + limit at most 1000."
    )
    filters: SearchFilters | None = None
    min_score: float | None = Field(
        default=None, allow_inf_nan=False, description="Drop results scored below this."
    )
    dedup: StrictBool = Field(
        default=False, description="Collapse near-identical results into the best of them."
    )


class QueryTerm(_Body):
    text: str = Field(min_length=1, description="Words, embedded like a plain query.")
    weight: StrictFloat = Field(
        default=1.0,
        ge=-queries.MAX_WEIGHT,
        le=queries.MAX_WEIGHT,
        allow_inf_nan=False,
        description="How much the term counts; negative: results move away from it; not 0.",
    )

    def to_term(self) -> queries.Term:
        return queries.Term(self.text, self.weight)


_ID = Annotated[str, Field(min_length=1, max_length=queries.MAX_ID_CHARS)]


def _query_kind(value: object) -> str:
    return "terms" if isinstance(value, list) else "text"


# A list is terms, anything else text: an error then names the one form meant
# (`query.terms.0.weight`), not both.
_Query = Annotated[
    Annotated[Annotated[str, Field(min_length=1)], Tag("text")]
    | Annotated[
        Annotated[list[QueryTerm], Field(min_length=1, max_length=queries.MAX_TERMS)],
        Tag("terms"),
    ],
    Discriminator(_query_kind),
]


class TextSearch(SearchOptions):
    query: _Query = Field(
        description="Words, or weighted terms: the query vector is the normalised weighted "
        "sum of the terms' vectors (at least one weight positive; in hybrid mode the "
        "keywords are the positive terms' words).",
        examples=["a dog on a beach", [{"text": "beach"}, {"text": "people", "weight": -0.5}]],
    )
    mode: Literal["vector", "hybrid"] = Field(
        default="vector",
        description="vector: CLIP similarity only; hybrid: fused with BM25 over captions.",
    )
    alpha: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Hybrid only: 0 = keywords only, 1 = vector only; default 0.5.",
    )

    @model_validator(mode="after")
    def _alpha_needs_hybrid(self) -> TextSearch:
        if self.alpha is not None and self.mode != "hybrid":
            raise ValueError('alpha applies to "mode": "hybrid" only')
        return self


class UrlSearch(SearchOptions):
    url: str = Field(min_length=1, max_length=4096)


class SimilarSearch(SearchOptions):
    """Give `id`, or `ids` (both: all of them)."""

    id: _ID | None = Field(default=None, description="An indexed image's id.")
    ids: list[_ID] = Field(
        default_factory=list,
        max_length=queries.MAX_EXAMPLES,
        description="Indexed images to find more like: their vectors are averaged.",
    )
    negative_ids: list[_ID] = Field(
        default_factory=list,
        max_length=queries.MAX_EXAMPLES,
        description="Indexed images to move away from: the query is "
        "avg(ids) + (avg(ids) - avg(negative_ids)), normalised.",
    )

    def example_ids(self) -> list[str]:
        return ([self.id] if self.id is not None else []) + self.ids


class ImageSearchForm(BaseModel):
    """The options of POST /search/image, which come as multipart form fields (text on
    the wire, so converted leniently; `filters` is a JSON text field)."""

    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(default=None, ge=1)
    offset: int = Field(default=0, ge=0)
    filters: Json[SearchFilters] | None = None
    min_score: float | None = Field(default=None, allow_inf_nan=False)
    dedup: bool = False


class TagsUpdate(_Body):
    tags: list[str] = Field(max_length=_MAX_FILTER_VALUES)


class DeleteBody(BaseModel):
    """The seed's DELETE /images/delete names the image in its body or query."""

    id: str | None = None
    image_id: str | None = None


class SearchResult(BaseModel):
    image: ImageOut
    score: float = Field(
        description="What results are ranked by (higher is better): the cosine similarity "
        "in vector searches (to the combined query vector, for weighted terms or several "
        "example images), the fused 0..1 score in hybrid ones."
    )
    vector_score: float | None = Field(
        default=None, description="Cosine similarity of the CLIP vectors, when known."
    )
    keyword_score: float | None = Field(
        default=None,
        description="BM25 score of the caption, normalised to 0..1 over the candidates; "
        "null when the caption did not match.",
    )
    matched: list[Literal["vector", "keyword"]] = Field(
        default_factory=list, description="Which searches found this result."
    )
    near_duplicates: list[str] = Field(
        default_factory=list, description="Ids collapsed into this result by dedup."
    )


class SearchResponse(BaseModel):
    results: list[SearchResult]
    took_ms: float
    offset: int = 0
    next_offset: int | None = Field(
        default=None, description="Offset of the next page; null when there is none."
    )


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
    caption_backlog: int = Field(description="Images waiting for a caption.")
    caption_model: str
    embedding_model: str
    embedding_dim: int
