"""`imagesearch`: argument parsing and dispatch.

Only the standard library at import time (and `retry`, for the defaults: it is stdlib
only too): the commands (aiohttp, boto3, numpy) load after the arguments are parsed, so
`--help` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from imagesearch_cli.retry import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "IMAGESEARCH_URL"
KEY_ENV = "IMAGESEARCH_API_KEY"


def _number(kind: type[int] | type[float], minimum: float, *, strict: bool = False) -> Any:
    """An argparse type: `kind` parsed from the text, at least `minimum` (above it when
    `strict`)."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
        if value < minimum or (strict and value == minimum):
            bound = "above" if strict else "at least"
            raise argparse.ArgumentTypeError(f"must be {bound} {minimum}: {text}")
        return value

    return parse


_positive_int = _number(int, 1)
_non_negative_int = _number(int, 0)
_positive_float = _number(float, 0, strict=True)


def _weight(text: str) -> float:
    value = float(_positive_float(text))
    # The service's bound on a term's weight (ingress.core.queries.MAX_WEIGHT).
    if not math.isfinite(value) or value > 10:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 10: {text}")
    return value


def _connection_options(suppress: bool) -> argparse.ArgumentParser:
    # Accepted before and after the command name; the subcommand copies use SUPPRESS so
    # that leaving them out there does not overwrite what was given before.
    default = argparse.SUPPRESS if suppress else None
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("service")
    group.add_argument(
        "--url", default=default, help=f"service base URL (env {URL_ENV}; default {DEFAULT_URL})"
    )
    group.add_argument(
        "--api-key", default=default, help=f"API key, sent as a bearer token (env {KEY_ENV})"
    )
    group.add_argument(
        "--timeout",
        type=_positive_float,
        default=argparse.SUPPRESS if suppress else DEFAULT_TIMEOUT_S,
        help=f"seconds per request (default {DEFAULT_TIMEOUT_S:g}: above the service's own "
        "model timeout)",
    )
    group.add_argument(
        "--retries",
        type=_non_negative_int,
        default=argparse.SUPPRESS if suppress else DEFAULT_RETRIES,
        help="retries of a request that failed transiently: 429, 502, 503, 504 or a "
        f"connection error (default {DEFAULT_RETRIES}; exponential backoff, Retry-After "
        "honoured)",
    )
    return common


def _filter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="T",
        help="only images with tag T (repeatable: all of them)",
    )
    parser.add_argument(
        "--any-tag",
        action="append",
        default=[],
        metavar="T",
        help="only images with at least one of these tags (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagesearch",
        description="Index and search images on a running image-search service.",
        parents=[_connection_options(suppress=False)],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = [_connection_options(suppress=True)]

    index = sub.add_parser(
        "index",
        parents=common,
        help="add images: files, folders, globs, URL lists (.txt), s3://bucket/prefix",
        description="Add images to the service. Folders are searched recursively for "
        "image files; a .txt file lists image URLs, one per line (# comments); "
        "s3://bucket/prefix indexes the objects under it. Files already indexed are "
        "skipped without uploading; a journal lets an interrupted run resume. Exit status: "
        "0 everything is indexed, 1 something failed, 2 usage error, 130 interrupted.",
    )
    index.add_argument("paths", nargs="+", metavar="PATH_OR_GLOB")
    index.add_argument("--tags", default="", help="comma-separated tags for the added images")
    index.add_argument(
        "--concurrency", type=_positive_int, default=4, help="uploads in flight (default 4)"
    )
    index.add_argument(
        "--journal",
        metavar="PATH",
        help="resume journal (default .imagesearch-index.jsonl in the current folder)",
    )
    index.add_argument("--no-journal", action="store_true", help="neither read nor write a journal")
    index.add_argument(
        "--all-files",
        action="store_true",
        help="in folders and S3 prefixes, try every file, not only image extensions",
    )
    index.add_argument(
        "--s3-endpoint-url", metavar="URL", help="S3-compatible endpoint (MinIO, LocalStack)"
    )
    index.add_argument(
        "--wait-captions",
        action="store_true",
        help="after indexing, wait until this run's images are captioned (background "
        "captioning); exit 1 if a caption failed or is still pending at the timeout",
    )
    index.add_argument(
        "--wait-captions-timeout",
        type=float,
        metavar="SECONDS",
        help="give up waiting for captions after this long (default: no limit)",
    )
    index.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: on a terminal; plain lines every 10 s otherwise)",
    )

    search = sub.add_parser(
        "search",
        parents=common,
        help="find images by text, by an image file, an image URL or a stored image",
    )
    search.add_argument("query", nargs="?", metavar="TEXT", help="words to search for")
    search.add_argument("--image", metavar="FILE", help="find images like this file")
    search.add_argument("--image-url", metavar="URL", help="find images like the one at URL")
    search.add_argument(
        "--not",
        dest="negative",
        action="append",
        metavar="TEXT",
        help="text search: move away from TEXT (repeatable)",
    )
    search.add_argument(
        "--not-weight",
        type=_weight,
        default=0.5,
        metavar="W",
        help="how much each --not counts against TEXT's 1 (default 0.5; at most 10)",
    )
    search.add_argument(
        "--similar",
        action="append",
        metavar="ID",
        help="find images like a stored one (repeatable: like all of them)",
    )
    search.add_argument(
        "--not-similar",
        action="append",
        metavar="ID",
        help="with --similar: move away from a stored image (repeatable)",
    )
    search.add_argument("--limit", type=_positive_int, help="number of results")
    search.add_argument(
        "--hybrid",
        action="store_true",
        help="text search: fuse keyword (caption) and vector scores",
    )
    search.add_argument(
        "--alpha",
        type=float,
        help="hybrid weight: 0 keywords only, 1 vectors only (implies --hybrid)",
    )
    _filter_options(search)
    search.add_argument("--json", action="store_true", help="print the service's JSON answer")

    listing = sub.add_parser("list", parents=common, help="list indexed images by id")
    listing.add_argument("--limit", type=_positive_int, default=50, help="page size (default 50)")
    listing.add_argument("--all", action="store_true", help="follow the cursor to the end")
    _filter_options(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")

    remove = sub.add_parser("delete", parents=common, help="delete images by id")
    remove.add_argument("ids", nargs="+", metavar="ID")

    state = sub.add_parser(
        "status",
        parents=common,
        help="service health: models and image count (exit 1 if unhealthy)",
    )
    state.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2

    from imagesearch_cli import commands

    conn = commands.Connection(
        url=args.url or os.environ.get(URL_ENV) or DEFAULT_URL,
        api_key=args.api_key or os.environ.get(KEY_ENV) or None,
        timeout_s=args.timeout,
        retries=args.retries,
    )
    try:
        if args.command == "index":
            from imagesearch_cli.index_command import index

            return index(args, conn)
        handler = {
            "search": commands.search,
            "list": commands.list_images,
            "delete": commands.delete,
            "status": commands.status,
        }[args.command]
        return handler(args, conn)
    except KeyboardInterrupt:
        print("imagesearch: interrupted", file=sys.stderr)
        return commands.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
