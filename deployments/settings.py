"""Settings of the model deployments: what serve_config.yaml may set for them.

Only pydantic here, so that reading or validating a configuration does not import
torch, transformers or Ray.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_CAPTION_MODEL = "Salesforce/blip-image-captioning-base"
DEFAULT_EMBEDDING_MODEL = "openai/clip-vit-base-patch32"

DtypeChoice = Literal["auto", "float32", "bfloat16", "float16"]
PreprocessChoice = Literal["auto", "tensor", "processor"]


class ModelSettings(BaseModel):
    """Which model to load and how; the same shape for both model deployments."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_id: str = Field(description="Hugging Face hub id or a local directory.")
    # "auto", "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    dtype: DtypeChoice = "auto"
    # torch intra-op threads; match it to the CPUs the replica reserves so that
    # replicas sharing a machine do not oversubscribe the cores.
    num_threads: int | None = Field(default=None, ge=1)
    revision: str | None = None
    # Images to pixel_values: "tensor" (torch on the replica's device, from the image
    # processor's own settings; deployments/preprocessing.py), "processor" (Hugging
    # Face's, per image on the CPU), "auto" (tensor wherever the processor's settings
    # allow it: several times faster on CPU, and on CUDA the work leaves the CPU).
    preprocess: PreprocessChoice = "auto"


class BatchSettings(BaseModel):
    """Dynamic batching knobs; changed at runtime through the deployment's user_config."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=8, ge=1, le=512)
    batch_wait_timeout_s: float = Field(default=0.02, ge=0.0, le=10.0)


class CaptionerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: ModelSettings = Field(
        default_factory=lambda: ModelSettings(model_id=DEFAULT_CAPTION_MODEL)
    )
    max_new_tokens: int = Field(default=20, ge=1, le=128)
    num_beams: int = Field(default=1, ge=1, le=8)
    # Conditional captioning: BLIP continues this text, e.g. "a photograph of".
    prompt: str | None = None


class EmbedderSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: ModelSettings = Field(
        default_factory=lambda: ModelSettings(model_id=DEFAULT_EMBEDDING_MODEL)
    )


class EmbedderBatching(BaseModel):
    """user_config of the embedder: one batch queue for images, one for texts."""

    model_config = ConfigDict(extra="forbid")

    image: BatchSettings = Field(default_factory=lambda: BatchSettings(max_batch_size=16))
    text: BatchSettings = Field(default_factory=lambda: BatchSettings(max_batch_size=16))
