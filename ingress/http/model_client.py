"""The model deployments seen through their Serve handles, with a deadline per call."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

import numpy as np
from ray.serve.handle import DeploymentHandle

from deployments.contracts import EmbedderInfo
from ingress.core.errors import ModelTimeout
from ingress.http.metrics import service_metrics

# Query texts whose vectors an ingress replica remembers (~2 KiB each at dim 512): the
# next page of a search, a refreshed page and popular queries skip the embedder.
TEXT_CACHE_ENTRIES = 1024


class ServedModels:
    """Implements ingress.core.service.Models over Ray Serve handles."""

    def __init__(
        self,
        captioner: DeploymentHandle,
        embedder: DeploymentHandle,
        caption_model: str,
        embedder_info: EmbedderInfo,
        timeout_s: float,
    ) -> None:
        self._captioner = captioner
        self._embedder = embedder
        self.caption_model = caption_model
        self.embedding_model = embedder_info.model_id
        self.embedding_dim = embedder_info.dim
        self.image_input_side = embedder_info.input_side
        self._timeout_s = timeout_s
        self._query_vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    @classmethod
    async def connect(
        cls, captioner: DeploymentHandle, embedder: DeploymentHandle, timeout_s: float
    ) -> ServedModels:
        # The vector store needs the embedder's model id and dimension before it opens.
        caption_info, embed_info = await asyncio.gather(
            captioner.info.remote(), embedder.info.remote()
        )
        return cls(captioner, embedder, caption_info.model_id, embed_info, timeout_s)

    async def caption(self, pixels: np.ndarray) -> str:
        return str(await self._call(self._captioner, "caption", pixels))

    async def embed_image(self, pixels: np.ndarray) -> np.ndarray:
        vector = await self._call(self._embedder, "embed_image", pixels)
        return np.asarray(vector, dtype=np.float32)

    async def embed_text(self, text: str) -> np.ndarray:
        cached = self._query_vectors.get(text)
        if cached is not None:
            self._query_vectors.move_to_end(text)
            return cached
        vector = np.array(await self._call(self._embedder, "embed_text", text), dtype=np.float32)
        # Shared between requests: nobody may change it in place.
        vector.setflags(write=False)
        self._query_vectors[text] = vector
        if len(self._query_vectors) > TEXT_CACHE_ENTRIES:
            self._query_vectors.popitem(last=False)
        return vector

    async def _call(self, handle: DeploymentHandle, method: str, arg: Any) -> Any:
        response = getattr(handle, method).remote(arg)
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(response, timeout=self._timeout_s)
            service_metrics().model_latency.observe(
                (time.perf_counter() - started) * 1000, tags={"call": method}
            )
            return result
        except asyncio.TimeoutError:
            response.cancel()
            raise ModelTimeout(
                f"{handle.deployment_name}.{method} did not answer within {self._timeout_s:g} s"
            ) from None

    async def ping(self) -> None:
        """Both deployments answer (used by /healthz)."""
        await asyncio.wait_for(
            asyncio.gather(self._captioner.info.remote(), self._embedder.info.remote()),
            timeout=min(self._timeout_s, 10.0),
        )
