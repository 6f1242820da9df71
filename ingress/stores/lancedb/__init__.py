"""The embedded vector store: LanceDB in a directory on disk."""

from ingress.stores.lancedb.store import LanceDBVectorStore

__all__ = ["LanceDBVectorStore"]
