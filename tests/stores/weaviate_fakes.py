"""Stand-in client objects for code that has not moved to the wire mock yet.

tests/stores/test_maintenance.py opens a WeaviateVectorStore on these (through
``_new_client``). New tests should use tests/stores/weaviate_mock.py instead: the real client
against an in-memory Weaviate on loopback.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
from weaviate.classes.config import VectorDistances
from weaviate.exceptions import UnexpectedStatusCodeError

from ingress.stores.weaviate import collection_description, image_properties

MODEL = "test/clip-tiny"
DIM = 16


def status_error(status: int) -> UnexpectedStatusCodeError:
    return UnexpectedStatusCodeError(
        "req", httpx.Response(status, json={"error": [{"message": "x"}]})
    )


class FakeCollections:
    """Just enough of ``client.collections`` for ensure_schema."""

    def __init__(self, existing: SimpleNamespace | None, rival: SimpleNamespace | None) -> None:
        self.config = existing
        # What another replica creates between our exists() and our create().
        self.rival = rival
        self.created: list[dict[str, Any]] = []

    async def exists(self, name: str) -> bool:
        return self.config is not None

    async def create(self, name: str, **kwargs: Any) -> None:
        if self.rival is not None:
            self.config = self.rival
            raise status_error(422)  # "class name ... already exists"
        self.created.append(kwargs)
        self.config = SimpleNamespace(
            description=kwargs["description"],
            properties=kwargs["properties"],
            vector_index_config=SimpleNamespace(distance_metric=VectorDistances.COSINE),
        )

    def get(self, name: str) -> SimpleNamespace:
        async def get_config() -> SimpleNamespace | None:
            if self.config is None:
                raise status_error(404)
            return self.config

        return SimpleNamespace(name=name, config=SimpleNamespace(get=get_config))


class FakeClient:
    def __init__(self, collections: FakeCollections) -> None:
        self.collections = collections
        self.closed = False

    async def connect(self) -> None:
        pass

    async def is_live(self) -> bool:
        return True

    async def close(self) -> None:
        self.closed = True


def made_by(
    model: str = MODEL, dim: int = DIM, distance: VectorDistances = VectorDistances.COSINE
) -> SimpleNamespace:
    return SimpleNamespace(
        description=collection_description(model, dim),
        properties=image_properties(),
        vector_index_config=SimpleNamespace(distance_metric=distance),
    )
