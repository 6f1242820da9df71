"""A model id that cannot be resolved fails at once with one message naming the id, the
cause and the fixes, never after minutes of hub retries; and the command that fetches
the models ahead of time reads them from a serve config. No network: the hub probe is
replaced where a test needs the hub's answer."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from huggingface_hub import constants

from deployments.model_source import (
    ModelSource,
    ModelUnavailable,
    resolve_model_source,
    weight_patterns,
)
from deployments.settings import DEFAULT_CAPTION_MODEL, DEFAULT_EMBEDDING_MODEL
from ingress.tools import fetch_models
from ingress.tools.config import EXIT_USAGE, load_app_args

ROOT = Path(__file__).resolve().parents[2]
HUB_ID = "some-org/some-model"


class Probe:
    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.calls: list[str] = []

    def __call__(self, model_id: str, revision: str | None, timeout_s: float) -> None:
        self.calls.append(model_id)
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache of the test's own (what HF_HOME/hub would be)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_model(cache: Path, model_id: str) -> None:
    """The layout huggingface_hub leaves after a download of config.json."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")


def assert_names_the_fixes(error: ModelUnavailable, model_id: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert f"cannot load model {model_id!r}" in message
    for fix in ("local directory", "HF_HOME", "HF_HUB_OFFLINE=1", "ingress.tools.fetch_models"):
        assert fix in message, fix


@pytest.mark.parametrize("missing", ["/models/no-such-clip", "./no-such-dir", "a/b/c"])
def test_a_local_path_that_does_not_exist_fails_at_once(
    missing: str, hub_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe = Probe()
    with caplog.at_level(logging.ERROR), pytest.raises(ModelUnavailable) as caught:
        resolve_model_source(missing, probe=probe)
    assert_names_the_fixes(caught.value, missing)
    assert "no such directory" in caught.value.cause
    assert probe.calls == []
    # Logged once, as the one line above.
    assert [r.getMessage() for r in caplog.records] == [str(caught.value)]


def test_a_file_is_not_a_model_directory(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ModelUnavailable, match="is a file, not a model directory"):
        resolve_model_source(str(weights), probe=Probe())


def test_a_local_directory_is_loaded_from_disk_only(tmp_path: Path) -> None:
    probe = Probe()
    assert resolve_model_source(str(tmp_path), probe=probe) == ModelSource(str(tmp_path), True)
    assert probe.calls == []


def test_offline_a_hub_id_not_in_the_cache_fails_at_once(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    probe = Probe()
    with pytest.raises(ModelUnavailable) as caught:
        resolve_model_source(HUB_ID, probe=probe)
    assert_names_the_fixes(caught.value, HUB_ID)
    assert "HF_HUB_OFFLINE=1" in caught.value.cause and str(hub_cache) in caught.value.cause
    assert probe.calls == []


def test_offline_a_cached_hub_id_loads_from_the_cache(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_model(hub_cache, HUB_ID)
    assert resolve_model_source(HUB_ID, probe=Probe()) == ModelSource(HUB_ID, True)


@pytest.mark.parametrize(
    ("failure", "cause"),
    [
        (ConnectionError("[Errno -2] Name or service not known"), "cannot be reached"),
        (TimeoutError("no answer from the hub within 10s"), "cannot be reached"),
    ],
)
def test_online_an_unreachable_hub_fails_at_once_without_a_cached_copy(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception, cause: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    probe = Probe(failure)
    with pytest.raises(ModelUnavailable) as caught:
        resolve_model_source(HUB_ID, probe=probe)
    assert_names_the_fixes(caught.value, HUB_ID)
    assert cause in caught.value.cause and "not in the local cache" in caught.value.cause
    assert probe.calls == [HUB_ID]  # one call, no retries


def test_online_an_unreachable_hub_falls_back_to_a_cached_copy(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    cache_model(hub_cache, HUB_ID)
    source = resolve_model_source(HUB_ID, probe=Probe(ConnectionError("no route")))
    assert source == ModelSource(HUB_ID, local_files_only=True)


def test_online_a_reachable_id_is_fetched_as_usual(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model_source(HUB_ID, probe=Probe()) == ModelSource(HUB_ID, False)


# -- python -m ingress.tools.fetch_models ------------------------------------------------


def test_the_models_of_the_committed_configs() -> None:
    for name in ("serve_config.yaml", "serve_config.production.yaml"):
        args = load_app_args(ROOT / name)
        models = [args.captioner.model.model_id, args.embedder.model.model_id]
        assert models == [DEFAULT_CAPTION_MODEL, DEFAULT_EMBEDDING_MODEL]


def test_weights_are_one_pytorch_set() -> None:
    both = ["model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"]
    assert weight_patterns(both) == ["*.safetensors", "*.safetensors.index.json"]
    assert weight_patterns(["pytorch_model.bin"])[0] == "pytorch_model*.bin"


def _config(path: Path, captioner: str, embedder: str) -> Path:
    path.write_text(
        "applications:\n  - name: a\n    args:\n"
        f"      captioner: {{model: {{model_id: {captioner}}}}}\n"
        f"      embedder: {{model: {{model_id: {embedder}}}}}\n"
    )
    return path


def test_local_directories_are_checked_not_fetched(
    tmp_path: Path, tiny_clip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _config(tmp_path / "good.yaml", str(tiny_clip_dir), str(tiny_clip_dir))
    assert fetch_models.main(["--config", str(good)]) == fetch_models.EXIT_OK
    assert capsys.readouterr().out.count(str(tiny_clip_dir)) >= 2

    missing = str(tmp_path / "nowhere")
    bad = _config(tmp_path / "bad.yaml", missing, str(tiny_clip_dir))
    assert fetch_models.main(["--config", str(bad)]) == fetch_models.EXIT_FETCH_FAILED
    err = capsys.readouterr().err
    assert f"cannot load model {missing!r}" in err and "HF_HUB_OFFLINE=1" in err


@pytest.mark.parametrize(
    ("content", "argv", "message"),
    [
        (None, (), "cannot read"),
        ("applications: [", (), "not valid YAML"),
        ("applications: [{name: a}, {name: b}]\n", (), "choose one with --app"),
        ("applications: [{name: a}]\n", ("--app", "b"), "no application 'b'"),
        ("applications: [{name: a, args: {embedder: {modle: {}}}}]\n", (), "invalid args"),
    ],
    ids=["missing", "yaml", "ambiguous", "unknown-app", "invalid"],
)
def test_usage_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    argv: tuple[str, ...],
    message: str,
) -> None:
    config = tmp_path / "serve.yaml"
    if content is not None:
        config.write_text(content)
    assert fetch_models.main(["--config", str(config), *argv]) == EXIT_USAGE
    assert message in capsys.readouterr().err
