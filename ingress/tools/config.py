"""What the command-line tools share (``ingress.tools.maintenance``, ``ingress.tools.reindex``):
reading one application's args from a serve config, and what opening its stores outside
Serve needs. Imports no Ray, no models and no store client until a store is named."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import yaml
from pydantic import ValidationError

from ingress.settings import AppArgs, LanceDBArgs, S3Args, StorageArgs
from ingress.stores.base import BlobStore, StoreError, VectorStore
from ingress.stores.factory import open_blob_store, open_vector_store, weaviate_options

# Keys or ids printed per list in a command's summary.
SHOWN = 20

# The exit statuses both tools give the same meaning (argparse exits 2 itself too).
EXIT_USAGE = 2
EXIT_STORE_FAILED = 3


def run_command(main: Callable[[], int]) -> None:
    """Run a tool's `main` as a process: progress and per-item messages on stderr (the
    summary goes to stdout), and its return value as the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ingress").setLevel(logging.INFO)
    sys.exit(main())


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --app: the serve config and the application a command reads (see
    load_app_args)."""
    parser.add_argument("--config", type=Path, required=True, help="a serve config YAML")
    parser.add_argument(
        "--app", help="application name in the config (default: its only application)"
    )


def usage_error(message: str) -> int:
    """What is wrong, on stderr; the usage exit status."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


class ConfigError(Exception):
    """The serve config cannot be read or does not validate."""


class StoresUnavailable(Exception):
    """A store the config names cannot be opened; the message says which and why."""


def load_app_args(config_path: Path, app: str | None = None) -> AppArgs:
    """The AppArgs of one application in a serve config, with relative store paths and
    local model directories resolved against the current directory (as `serve run` and
    ingress.app.compose do, so that model ids compare equal to the ones records hold).
    ConfigError names what is wrong."""
    try:
        document = yaml.safe_load(config_path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {config_path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{config_path} is not valid YAML: {e}") from e
    applications = document.get("applications") if isinstance(document, dict) else None
    if not isinstance(applications, list) or not all(isinstance(a, dict) for a in applications):
        raise ConfigError(f"{config_path} has no list of `applications`")
    names = [str(a.get("name")) for a in applications]
    if app is None:
        if len(applications) != 1:
            raise ConfigError(f"{config_path} has applications {names}; choose one with --app")
        chosen = applications[0]
    else:
        matching = [a for a in applications if a.get("name") == app]
        if not matching:
            raise ConfigError(f"{config_path} has no application {app!r} (it has {names})")
        chosen = matching[0]
    try:
        args = AppArgs.model_validate(chosen.get("args") or {})
    except ValidationError as e:
        raise ConfigError(f"{config_path}: invalid args of {chosen.get('name')!r}: {e}") from e
    return args.with_absolute_paths()


def without_bucket_creation(storage: StorageArgs) -> StorageArgs:
    """The tools create no bucket: a missing one is an error, not made here."""
    if isinstance(storage.blobs, S3Args) and storage.blobs.create_bucket:
        blobs = storage.blobs.model_copy(update={"create_bucket": False})
        return storage.model_copy(update={"blobs": blobs})
    return storage


async def recorded_embedding(storage: StorageArgs) -> tuple[str, int]:
    """(embedding_model, dim) recorded in the existing vector collection that storage
    names, so that the stores open without loading the models. Creates nothing; raises
    StoreError when there is no such collection."""
    config = storage.vectors
    if isinstance(config, LanceDBArgs):
        from ingress.stores.lancedb import LanceDBVectorStore

        return await LanceDBVectorStore.recorded_embedding(
            storage.lancedb_path(config), config.table
        )
    from ingress.stores.weaviate import WeaviateVectorStore

    return await WeaviateVectorStore.recorded_embedding(config.url, **weaviate_options(config))


@asynccontextmanager
async def open_recorded_stores(
    storage: StorageArgs,
) -> AsyncIterator[tuple[VectorStore, BlobStore]]:
    """The vector store (bound to the embedding recorded in it, see recorded_embedding)
    and the blob store that storage names, closed on exit. Loads no model and starts no
    index upkeep (unlike factory.open_stores). StoresUnavailable when either cannot be
    opened."""
    async with AsyncExitStack() as opened:
        try:
            model, dim = await recorded_embedding(storage)
            vectors = await open_vector_store(storage, model, dim)
        except (StoreError, ValueError) as e:
            raise StoresUnavailable(f"cannot open the vector store: {e}") from e
        opened.push_async_callback(vectors.close)
        try:
            blobs = await open_blob_store(storage)
        except (StoreError, ValueError) as e:
            raise StoresUnavailable(f"cannot open the blob store: {e}") from e
        opened.push_async_callback(blobs.close)
        yield vectors, blobs


def describe_vectors(storage: StorageArgs) -> str:
    vectors = storage.vectors
    if isinstance(vectors, LanceDBArgs):
        return f"lancedb {storage.lancedb_path(vectors)} (table {vectors.table})"
    return f"weaviate {vectors.url} (collection {vectors.collection})"


def describe_storage(storage: StorageArgs) -> str:
    blobs = storage.blobs
    if isinstance(blobs, S3Args):
        what = f"s3://{blobs.bucket}/{blobs.prefix}"
        if blobs.endpoint_url:
            what += f" at {blobs.endpoint_url}"
    else:
        what = f"local {storage.blob_path(blobs)}"
    return f"vectors: {describe_vectors(storage)}; blobs: {what}"


def print_keys(title: str, keys: Sequence[str]) -> None:
    """A count and the first SHOWN keys, on stdout."""
    print(f"{title}: {len(keys)}")
    for key in keys[:SHOWN]:
        print(f"  {key}")
    if len(keys) > SHOWN:
        print(f"  ... and {len(keys) - SHOWN} more")
