"""Where a model's files come from, decided before any `from_pretrained`, so that a model
that cannot be had fails its replica at once with one message, not after minutes of
huggingface_hub retrying every file of a hub it cannot reach.

- A local directory is loaded from disk only; a path that does not exist fails at once.
- A hub id under HF_HUB_OFFLINE=1 loads from the local cache (HF_HOME), and fails at
  once when it is not there.
- Otherwise one metadata call to the hub, bounded by `timeout_s`, tells whether the id
  can be had (a typo, a gated or private model, no network); when it cannot, a cached
  copy is loaded offline if there is one, and the replica fails if there is none.

Also fetching a model ahead of time (`fetch_model`, what `python -m
ingress.tools.fetch_models` runs). No torch or transformers here: that command and the
tests use this module without loading a model.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# Everything but weights that from_pretrained may read for a model and its processor.
_SUPPORT_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.py"]

# One metadata call to the hub; a resolvable id answers in well under a second.
DEFAULT_PROBE_TIMEOUT_S = 10.0

FIXES = (
    "fixes: set model_id to a local directory made with save_pretrained; or fill HF_HOME "
    "ahead of time (`python -m ingress.tools.fetch_models --config serve_config.yaml` on a "
    "machine that reaches the hub, or the Dockerfile's --build-arg PREFETCH_MODELS=1), "
    "and set HF_HUB_OFFLINE=1 so that nothing is fetched at start"
)

# (model_id, revision, timeout_s) -> None when the hub has it; raises why not.
HubProbe = Callable[[str, "str | None", float], None]


class ModelUnavailable(RuntimeError):
    """A model id that cannot be resolved; the message names the id, why and the fixes."""

    def __init__(self, model_id: str, cause: str) -> None:
        super().__init__(f"cannot load model {model_id!r}: {cause}; {FIXES}")
        self.model_id = model_id
        self.cause = cause


@dataclass(frozen=True)
class ModelSource:
    # What from_pretrained gets: a directory, or the hub id itself.
    source: str
    # True: from disk or the cache only, never the network.
    local_files_only: bool


def hub_offline() -> bool:
    """HF_HUB_OFFLINE, read when loading (huggingface_hub reads it only at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def looks_like_path(model_id: str) -> bool:
    """True for what cannot be a hub id (`org/name` or `name`): an absolute or relative
    path with ./, ../ or ~, or more than one slash."""
    return (
        model_id.startswith(("/", "./", "../", "~", "."))
        or model_id.count("/") > 1
        or (os.sep != "/" and os.sep in model_id)
    )


def cached_in_hub_cache(model_id: str, revision: str | None = None) -> bool:
    """Whether the model's config.json is in the local hub cache (HF_HOME)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(model_id, "config.json", revision=revision)
    except HFValidationError:
        return False
    return isinstance(found, str)


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def probe_hub(model_id: str, revision: str | None, timeout_s: float) -> None:
    """One metadata call, on a daemon thread so that a resolver stuck in DNS cannot hold
    the replica past timeout_s. Raises what the hub answered, or TimeoutError."""
    from huggingface_hub import HfApi

    failure: list[BaseException] = []

    def ask() -> None:
        try:
            HfApi().model_info(model_id, revision=revision, timeout=timeout_s)
        except BaseException as exc:  # handed to the caller
            failure.append(exc)

    worker = threading.Thread(target=ask, name="hub-probe", daemon=True)
    worker.start()
    worker.join(timeout_s + 1.0)
    if worker.is_alive():
        raise TimeoutError(f"no answer from the hub within {timeout_s:g}s")
    if failure:
        raise failure[0]


def _why(exc: BaseException) -> str:
    """The cause, in one line, for the kinds of failure worth telling apart."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    first_line = (str(exc).strip().splitlines() or [""])[0][:200]
    if isinstance(exc, GatedRepoError):
        return f"the model is gated: accept its terms and set HF_TOKEN ({first_line})"
    if isinstance(exc, RevisionNotFoundError):
        return f"no such revision on the hub ({first_line})"
    if isinstance(exc, RepositoryNotFoundError):
        return f"no such model on the hub (a typo? private models need HF_TOKEN) ({first_line})"
    return f"the Hugging Face hub cannot be reached ({type(exc).__name__}: {first_line})"


def resolve_model_source(
    model_id: str,
    revision: str | None = None,
    *,
    probe: HubProbe = probe_hub,
    timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
) -> ModelSource:
    """Where to load `model_id` from, or ModelUnavailable (logged once, as one line)."""
    try:
        return _resolve(model_id, revision, probe, timeout_s)
    except ModelUnavailable as exc:
        logger.error("%s", exc)
        raise


def _resolve(model_id: str, revision: str | None, probe: HubProbe, timeout_s: float) -> ModelSource:
    local = Path(model_id).expanduser()
    if local.is_dir():
        return ModelSource(str(local), local_files_only=True)
    if local.exists():
        raise ModelUnavailable(model_id, f"{local} is a file, not a model directory")
    if looks_like_path(model_id):
        raise ModelUnavailable(model_id, f"no such directory: {local}")
    cached = cached_in_hub_cache(model_id, revision)
    if hub_offline():
        if cached:
            return ModelSource(model_id, local_files_only=True)
        raise ModelUnavailable(
            model_id,
            f"HF_HUB_OFFLINE=1 and the model is not in the local cache ({hub_cache_dir()})",
        )
    try:
        probe(model_id, revision, timeout_s)
    except Exception as exc:
        cause = _why(exc)
        if not cached:
            raise ModelUnavailable(
                model_id, f"{cause}, and it is not in the local cache ({hub_cache_dir()})"
            ) from exc
        logger.warning("%s: %s; loading the cached copy", model_id, cause)
        return ModelSource(model_id, local_files_only=True)
    return ModelSource(model_id, local_files_only=False)


def weight_patterns(files: Sequence[str]) -> list[str]:
    """One set of PyTorch weights: safetensors where there are any, else the .bin files."""
    top = [name for name in files if "/" not in name]
    if any(name.endswith(".safetensors") for name in top):
        return ["*.safetensors", "*.safetensors.index.json"]
    return ["pytorch_model*.bin", "pytorch_model*.bin.index.json"]


def fetch_model(model_id: str, revision: str | None = None) -> str:
    """Download the model into the hub cache (or check its directory); where it is."""
    local = Path(model_id).expanduser()
    if local.is_dir() or looks_like_path(model_id):
        if not (local / "config.json").is_file():
            raise ModelUnavailable(model_id, f"no model directory at {local}")
        return str(local)
    from huggingface_hub import HfApi, snapshot_download

    try:
        files = HfApi().list_repo_files(model_id, revision=revision)
        return snapshot_download(
            model_id,
            revision=revision,
            allow_patterns=_SUPPORT_FILES + weight_patterns(files),
        )
    except Exception as exc:
        raise ModelUnavailable(model_id, f"{type(exc).__name__}: {exc}") from exc
