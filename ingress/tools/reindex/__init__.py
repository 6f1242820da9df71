"""Re-captioning and re-embedding the stored images after a model change.

Two commands, both reading the stores and the models from a serve config::

    python -m ingress.tools.reindex captions --config serve_config.yaml [--all]
    python -m ingress.tools.reindex vectors --config NEW.yaml --from-table OLD   # LanceDB
    python -m ingress.tools.reindex vectors --config NEW.yaml --from-collection Old  # Weaviate

``captions`` walks the vector store in id order and re-captions, in place, every record
whose ``caption_model`` is not the configured captioner (every record with ``--all``).
Vectors are not touched, so search stays online and correct throughout.

``vectors`` serves an embedder change. A vector store holds the vectors of one model
only, so the new vectors go into a NEW table (collection): the config names the new
embedder and the new table, ``--from-table`` the old one, which the running service
keeps serving until the new config is deployed. Every record is copied with all its
fields but ``embedding_model`` and a vector made by the new embedder from its stored
image. Ids already in the target are skipped, so running it again (right before the
switch, and after it) copies only what was added meanwhile.

Both decode the stored blobs exactly as ingest does (ingress.core.imaging with the configured
intake limits) and run the models in-process, in batches. Progress is checkpointed in a
small JSON state file after every page, so an interrupted run continues where it
stopped; the file is removed when a run completes. A per-image failure (blob missing,
undecodable, the model failed on it) is reported by id and does not stop the run.

Exit status: 0 everything done, 1 some images failed (run again to retry them), 2 usage
or configuration error (stores or models that cannot be opened included), 3 a store
failed during the run (run again: it resumes).

The package, by responsibility: ``cli`` (the command line), ``captions`` and ``vectors``
(the two passes), ``models`` (the models in-process and the images they get), ``state``
(checkpoint, progress, the checkpointed walk) and ``outcomes`` (exit status, reports).
"""

from ingress.tools.config import EXIT_STORE_FAILED, EXIT_USAGE
from ingress.tools.reindex.captions import recaption, run_captions
from ingress.tools.reindex.cli import DEFAULT_BATCH_SIZE, main
from ingress.tools.reindex.models import Captioner, Embedder, load_pixels
from ingress.tools.reindex.outcomes import EXIT_DONE, EXIT_IMAGES_FAILED
from ingress.tools.reindex.state import Checkpoint, Progress, UsageError, default_state_path
from ingress.tools.reindex.vectors import TargetIds, reembed, run_vectors, source_storage

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "EXIT_DONE",
    "EXIT_IMAGES_FAILED",
    "EXIT_STORE_FAILED",
    "EXIT_USAGE",
    "Captioner",
    "Checkpoint",
    "Embedder",
    "Progress",
    "TargetIds",
    "UsageError",
    "default_state_path",
    "load_pixels",
    "main",
    "recaption",
    "reembed",
    "run_captions",
    "run_vectors",
    "source_storage",
]
