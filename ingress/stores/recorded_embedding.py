"""The embedding a collection records: which model and dimension filled it.

Every vector store writes (model, dim) into its collection when it creates it (LanceDB
in the table's schema metadata, Weaviate in the collection's description), so that any
process, or a later deployment, can tell whose vectors it holds. Both backends read it
back through the same rules here: what counts as a recording, the refusal to mix in
vectors of another model or dimension, and the error for a collection this service did
not create.
"""

from __future__ import annotations

from ingress.stores.base import EmbeddingMismatch, StoreError


def recorded_embedding_of(model: object, dim: object) -> tuple[str, int] | None:
    """(model, dim) when they make a recording: a model name and a positive dimension
    (an int, not a bool); None for anything else, i.e. a collection not made here."""
    if not isinstance(model, str) or not model:
        return None
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        return None
    return model, dim


def refuse_other_embedding(
    where: str, recorded: tuple[str, int] | None, embedding_model: str, dim: int
) -> None:
    """EmbeddingMismatch unless ``where`` (the collection, named for the message) records
    exactly ``embedding_model`` and ``dim``: one collection never mixes vectors of two
    models or dimensions, whose similarities would mean nothing. A missing recording
    shows as "?"."""
    if recorded == (embedding_model, dim):
        return
    model, recorded_dim = recorded if recorded is not None else ("?", "?")
    raise EmbeddingMismatch(
        f"{where} holds vectors of model {model!r} dim {recorded_dim}, not "
        f"{embedding_model!r} dim {dim}"
    )


def not_created_here(where: str, detail: str) -> StoreError:
    """The error for a collection that records no embedding: something else made it, and
    this service refuses to read or write it."""
    return StoreError(f"{where} was not created by this service ({detail}); refusing to use it")
