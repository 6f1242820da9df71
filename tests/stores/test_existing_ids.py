"""VectorStore.existing_ids, on every vector backend the contract suite runs: the
question the bulk job asks of each batch before it embeds anything."""

from __future__ import annotations

import uuid

import numpy as np

from ingress.stores.base import VectorStore
from tests.stores.test_contract import fill, rng
from tests.stores.test_weaviate_unit import StoreOpener, mock, offline, open_store

# The fixtures, shared with the contract suite and the Weaviate adapter's tests.
__all__ = ["mock", "offline", "open_store", "rng"]


async def test_existing_ids_names_the_stored_ones_only(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    stored = [image.record.id for image in await fill(vector_store, rng, 5)]
    missing = [str(uuid.uuid4()) for _ in range(3)]
    asked = [stored[0], missing[0], stored[3], missing[1], stored[3], "not-a-uuid", missing[2]]
    assert await vector_store.existing_ids(asked) == {stored[0], stored[3]}
    assert await vector_store.existing_ids(stored) == set(stored)
    assert await vector_store.existing_ids(missing) == set()
    assert await vector_store.existing_ids([]) == set()


async def test_existing_ids_sees_a_delete(
    vector_store: VectorStore, rng: np.random.Generator
) -> None:
    stored = [image.record.id for image in await fill(vector_store, rng, 2)]
    await vector_store.delete(stored[0])
    assert await vector_store.existing_ids(stored) == {stored[1]}


async def test_weaviate_asks_by_id_at_the_wire(
    open_store: StoreOpener, rng: np.random.Generator
) -> None:
    """The real client's by-id filter against the loopback Weaviate mock (no server runs
    here): the query the adapter sends is one Weaviate answers."""
    store = open_store()
    await store.ensure_schema()
    await test_existing_ids_names_the_stored_ones_only(store, rng)
