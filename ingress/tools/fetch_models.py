"""Fetch the models a serve config names into the local hub cache, ahead of time:

    python -m ingress.tools.fetch_models --config serve_config.yaml [--app imagesearch]

Run it where the hub can be reached (a build step, a machine with access); then start
the service with the same HF_HOME and HF_HUB_OFFLINE=1, and no replica touches the
network. The Dockerfile runs it with `--build-arg PREFETCH_MODELS=1`, baking the models
into the image. Model ids that are local directories are checked, not fetched.

Only what `from_pretrained` reads is fetched (deployments.model_source.fetch_model):
configs, tokenizer and processor files, and one set of PyTorch weights.

Exit status: 0 every model is there; 1 one could not be fetched (the reason is printed);
2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from deployments.model_source import ModelUnavailable, fetch_model
from deployments.settings import ModelSettings
from ingress.tools.config import (
    ConfigError,
    add_config_arguments,
    load_app_args,
    run_command,
    usage_error,
)

EXIT_OK = 0
EXIT_FETCH_FAILED = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingress.tools.fetch_models",
        description="Fetch the captioner and embedder a serve config names into the local "
        "Hugging Face cache (HF_HOME), so that replicas start with HF_HUB_OFFLINE=1.",
    )
    add_config_arguments(parser)
    options = parser.parse_args(argv)
    try:
        args = load_app_args(options.config, options.app)
    except ConfigError as exc:
        return usage_error(str(exc))
    status = EXIT_OK
    models: list[ModelSettings] = [args.captioner.model, args.embedder.model]
    for model in models:
        try:
            where = fetch_model(model.model_id, model.revision)
        except ModelUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = EXIT_FETCH_FAILED
            continue
        print(f"{model.model_id}: {where}")
    return status


if __name__ == "__main__":
    run_command(main)
