"""The command line of `python -m ingress.tools.reindex` (and `python -m ingress.reindex`)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path

from ingress.tools.config import ConfigError, add_config_arguments, load_app_args, usage_error
from ingress.tools.reindex.captions import run_captions
from ingress.tools.reindex.requeue import run_requeue
from ingress.tools.reindex.vectors import run_vectors

DEFAULT_BATCH_SIZE = 16


def _batch_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 512:
        raise argparse.ArgumentTypeError("must be between 1 and 512")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ingress.tools.reindex",
        description=(
            "Re-caption or re-embed the stored images with the configured models. "
            "Exit 0: all done; 1: some images failed; 2: usage or configuration error; "
            "3: a store failed (run again to continue)."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser) -> None:
        add_config_arguments(sub)
        sub.add_argument(
            "--batch-size",
            type=_batch_size,
            default=DEFAULT_BATCH_SIZE,
            help=f"records per page and model batch (default {DEFAULT_BATCH_SIZE})",
        )
        sub.add_argument(
            "--state",
            type=Path,
            help="progress file to resume from (default: <data_dir>/reindex/<job>.json)",
        )

    captions = commands.add_parser(
        "captions",
        help="re-caption, in place, records made by another captioner",
        description=(
            "Re-caption every record whose caption_model is not the configured captioner "
            "(--all: every record). Vectors are untouched; search stays online."
        ),
    )
    common(captions)
    captions.add_argument("--all", action="store_true", help="re-caption every record")

    requeue = commands.add_parser(
        "requeue",
        help="hand failed (or all) records back to the service's caption worker",
        description=(
            "Mark records whose captioning failed (--all: every record) pending again; "
            "the running service's caption worker re-captions them with the deployed "
            "captioner. Loads no model."
        ),
    )
    add_config_arguments(requeue)
    requeue.add_argument("--all", action="store_true", help="requeue every record")
    requeue.add_argument(
        "--batch-size", type=_batch_size, default=DEFAULT_BATCH_SIZE, help="records per page"
    )

    vectors = commands.add_parser(
        "vectors",
        help="embed every image again into a new table for a new embedder",
        description=(
            "Copy every record of the old table (collection) into the one the config "
            "names, with a vector of the configured embedder. Ids already there are "
            "skipped: run it again to copy what was added meanwhile."
        ),
    )
    common(vectors)
    source = vectors.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-table", help="the old LanceDB table")
    source.add_argument("--from-collection", help="the old Weaviate collection")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (argparse exits 2 itself on bad usage).
    Configures no logging: ``python -m ingress.tools.reindex`` does that."""
    args = _parser().parse_args(argv)
    try:
        app_args = load_app_args(args.config, args.app)
    except ConfigError as e:
        return usage_error(str(e))
    if args.command == "requeue":
        return asyncio.run(run_requeue(app_args, all_records=args.all, batch_size=args.batch_size))
    if args.command == "captions":
        return asyncio.run(
            run_captions(
                app_args, all_records=args.all, batch_size=args.batch_size, state_path=args.state
            )
        )
    return asyncio.run(
        run_vectors(
            app_args,
            from_table=args.from_table,
            from_collection=args.from_collection,
            batch_size=args.batch_size,
            state_path=args.state,
        )
    )
