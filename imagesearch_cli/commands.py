"""The commands: each takes the parsed arguments and a connection, prints its result
and returns the exit status (0 success, 1 failure, 2 usage error)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagesearch_cli.client import ApiClient, ServiceError
from imagesearch_cli.retry import RetryPolicy

OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130


@dataclass(frozen=True)
class Connection:
    """Where the service is and how to talk to it; from flags or the environment."""

    url: str
    api_key: str | None
    timeout_s: float
    retries: int

    def client(self, max_connections: int = 16, retries: int | None = None) -> ApiClient:
        policy = RetryPolicy(retries=self.retries if retries is None else retries)
        return ApiClient(
            self.url,
            self.api_key,
            timeout_s=self.timeout_s,
            policy=policy,
            max_connections=max_connections,
        )


def fail(message: str, status: int = FAILED) -> int:
    print(f"imagesearch: {message}", file=sys.stderr)
    return status


def service_failure(exc: ServiceError, conn: Connection) -> int:
    hint = ""
    if exc.status == 401:
        hint = " (give a key with --api-key or IMAGESEARCH_API_KEY)"
    elif exc.status is None:
        hint = f" (is the service running at {conn.url}? set --url or IMAGESEARCH_URL)"
    return fail(f"{exc.reason}{hint}")


def run_with_client(
    conn: Connection, body: Callable[[ApiClient], Awaitable[int]], retries: int | None = None
) -> int:
    async def go() -> int:
        async with conn.client(retries=retries) as api:
            return await body(api)

    try:
        return asyncio.run(go())
    except ServiceError as exc:
        return service_failure(exc, conn)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _cell(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def filters_from(args: argparse.Namespace) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    if args.tag:
        filters["tags_all"] = list(args.tag)
    if args.any_tag:
        filters["tags_any"] = list(args.any_tag)
    return filters


# -- search -------------------------------------------------------------------------


def search_table(results: list[dict[str, Any]]) -> str:
    if not results:
        return "no results"
    lines = [f"{'score':>6}  {'id':<36}  {'caption':<48}  tags"]
    for hit in results:
        image = hit.get("image", {})
        lines.append(
            f"{hit.get('score', 0.0):>6.3f}  {image.get('id', ''):<36}  "
            f"{_cell(str(image.get('caption', '')), 48):<48}  {','.join(image.get('tags', []))}"
        )
    return "\n".join(lines)


def text_query(text: str, negative: list[str] | None, negative_weight: float) -> Any:
    """The `query` field: the plain text, or with --not terms the weighted list (a service
    without weighted terms still answers the plain form)."""
    if not negative:
        return text
    return [{"text": text, "weight": 1.0}] + [
        {"text": words, "weight": -negative_weight} for words in negative
    ]


def similar_query(ids: list[str], negative_ids: list[str] | None) -> dict[str, Any]:
    """The /search/similar body: one id as the single-id form, else ids and negative_ids."""
    if len(ids) == 1 and not negative_ids:
        return {"id": ids[0]}
    return {"ids": ids, **({"negative_ids": negative_ids} if negative_ids else {})}


def search(args: argparse.Namespace, conn: Connection) -> int:
    named = [x for x in (args.query, args.image, args.image_url, args.similar) if x is not None]
    if len(named) != 1:
        return fail(
            "search needs exactly one of: TEXT, --image FILE, --image-url URL, --similar ID", USAGE
        )
    hybrid = args.hybrid or args.alpha is not None
    if hybrid and args.query is None:
        return fail("--hybrid and --alpha apply to text searches only", USAGE)
    if args.negative and args.query is None:
        return fail("--not applies to text searches only (--not-similar to --similar)", USAGE)
    if args.not_similar and args.similar is None:
        return fail("--not-similar applies to --similar searches only", USAGE)
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        return fail("--alpha must be between 0 and 1", USAGE)
    common: dict[str, Any] = {}
    # Only what was asked for: a service without a feature refuses unknown fields.
    if args.limit is not None:
        common["limit"] = args.limit
    filters = filters_from(args)
    if filters:
        common["filters"] = filters
    image: bytes | None = None
    if args.image is not None:
        try:
            image = Path(args.image).read_bytes()
        except OSError as exc:
            return fail(f"cannot read {args.image}: {exc.strerror or exc}", USAGE)

    async def body(api: ApiClient) -> int:
        if image is not None:
            from imagesearch_cli.sources import content_type_for

            fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in common.items()}
            name = Path(args.image).name
            answer = await api.search_image(image, name, content_type_for(name), fields)
        elif args.query is not None:
            query = text_query(args.query, args.negative, args.not_weight)
            text: dict[str, Any] = {"query": query, **common}
            if hybrid:
                text["mode"] = "hybrid"
                if args.alpha is not None:
                    text["alpha"] = args.alpha
            answer = await api.search("text", text)
        elif args.image_url is not None:
            answer = await api.search("url", {"url": args.image_url, **common})
        else:
            similar = similar_query(args.similar, args.not_similar)
            answer = await api.search("similar", {**similar, **common})
        if args.json:
            print_json(answer)
        else:
            print(search_table(list(answer.get("results", []))))
        return OK

    return run_with_client(conn, body)


# -- list ---------------------------------------------------------------------------


def list_table(images: list[dict[str, Any]]) -> str:
    lines = [f"{'id':<36}  {'size':>11}  {'created':<19}  {'caption':<40}  tags"]
    for image in images:
        size = f"{image.get('width', '?')}x{image.get('height', '?')}"
        created = str(image.get("created_at", ""))[:19].replace("T", " ")
        lines.append(
            f"{image.get('id', ''):<36}  {size:>11}  {created:<19}  "
            f"{_cell(str(image.get('caption', '')), 40):<40}  {','.join(image.get('tags', []))}"
        )
    return "\n".join(lines)


def list_images(args: argparse.Namespace, conn: Connection) -> int:
    async def body(api: ApiClient) -> int:
        images: list[dict[str, Any]] = []
        params: list[tuple[str, str]] = [("limit", str(args.limit))]
        for name, values in filters_from(args).items():
            params.extend((name, value) for value in values)
        cursor: str | None = None
        while True:
            page = await api.list_images([*params, *([("cursor", cursor)] if cursor else [])])
            images.extend(page.get("images", []))
            cursor = page.get("next_cursor")
            if not args.all or not cursor:
                break
        total = page.get("total", len(images))
        if args.json:
            print_json({"images": images, "next_cursor": cursor, "total": total})
            return OK
        print(list_table(images))
        more = "; more: imagesearch list --all" if cursor else ""
        print(f"{len(images)} of {total} images{more}")
        return OK

    return run_with_client(conn, body)


# -- delete -------------------------------------------------------------------------


def delete(args: argparse.Namespace, conn: Connection) -> int:
    async def body(api: ApiClient) -> int:
        status = OK
        for image_id in args.ids:
            try:
                deleted = await api.delete(image_id)
            except ServiceError as exc:
                if exc.stops_run:
                    raise  # the same for every id: stop here
                print(f"failed    {image_id}: {exc.reason}")
                status = FAILED
                continue
            if deleted:
                print(f"deleted   {image_id}")
            else:
                print(f"not found {image_id}")
                status = FAILED
        return status

    return run_with_client(conn, body)


# -- status -------------------------------------------------------------------------


def status(args: argparse.Namespace, conn: Connection) -> int:
    async def body(api: ApiClient) -> int:
        health = await api.health()
        if args.json:
            print_json(health)
            return OK
        print(f"service     {conn.url}  {health.get('status', '?')}")
        print(f"images      {health.get('images', '?')}")
        print(f"to caption  {health.get('caption_backlog', '?')}")
        print(f"captioner   {health.get('caption_model', '?')}")
        print(
            f"embedder    {health.get('embedding_model', '?')} (dim {health.get('embedding_dim', '?')})"
        )
        return OK

    # A health probe answers now or says so: no waiting through retries.
    return run_with_client(conn, body, retries=0)
