"""What both model classes share around their forward passes: loading, the one thread
the passes run on, liveness for `check_health`, and the two ways into the same math.

A model class (BlipCaptioner, DualEncoderEmbedder) loads its model with `_load_model`, calls
`_start`, and writes its math once, as plain methods over a list of already validated
items (the hooks, e.g. `_generate`). Then:

- its public batch methods (`caption_many`, `embed_images`, `embed_texts`) validate the
  items and call `_forward`: synchronous, on the model thread, for tools and
  benchmarks; one bad item fails the whole call before the model runs;
- its `@serve.batch` methods call `_forward_isolated`: asynchronous (the replica's event
  loop keeps queueing the next batch), one failed item fails only its own request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from deployments.batching import Liveness, ModelThread, replica_tag, run_isolated
from deployments.model_loading import Placement, load_pretrained
from deployments.settings import ModelSettings

In = TypeVar("In")
Out = TypeVar("Out")


class ModelRunner:
    """Base of the model classes; a subclass implements `_warm_up` and `_probe`."""

    # Set by _load_model; a subclass narrows the types of model and processor.
    model: Any
    processor: Any
    placement: Placement
    model_id: str

    def _load_model(self, model_cls: type, processor_cls: type, settings: ModelSettings) -> None:
        self.model, self.processor, self.placement = load_pretrained(
            model_cls, processor_cls, settings
        )
        self.model_id = settings.model_id

    def _start(self, thread_name: str) -> None:
        self._liveness = Liveness()
        self._thread = ModelThread(thread_name)
        # Warm up now so that a broken model fails the replica at start, not a user
        # request; on the model thread, so that its torch threads are ready too.
        self._thread.call(self._warm_up)
        self._liveness.mark_ok()

    def _warm_up(self) -> None:
        """The first forward pass, at start-up: as a real request would run."""
        raise NotImplementedError

    def _probe(self) -> None:
        """A cheap forward pass that proves the model works (for an idle replica)."""
        raise NotImplementedError

    def _forward(self, fn: Callable[[list[In]], Sequence[Out]], items: list[In]) -> list[Out]:
        """fn on all items in one pass on the model thread, waited for."""
        if not items:
            return []
        outputs = list(self._thread.call(fn, items))
        self._liveness.mark_ok()
        return outputs

    async def _forward_isolated(
        self, fn: Callable[[list[In]], Sequence[Out]], items: list[In]
    ) -> list[Out | Exception]:
        """fn on a Serve batch on the model thread, off the event loop; each item's
        result or its own failure (see run_isolated)."""
        outcomes: list[Out | Exception] = await self._thread.run(run_isolated, fn, items)
        if any(not isinstance(o, Exception) for o in outcomes):
            self._liveness.mark_ok()
        return outcomes

    async def check_health(self) -> None:
        if self._liveness.needs_probe():
            await self._thread.run(self._probe)
            self._liveness.mark_ok()

    def _described(self) -> dict[str, Any]:
        """What both info() answers start with."""
        return {
            "model_id": self.model_id,
            "device": str(self.placement.device),
            "dtype": str(self.placement.dtype).removeprefix("torch."),
            "replica": replica_tag(),
        }
