"""Bulk indexing at cluster scale: `imagesearch-bulk SOURCE... --config serve_config.yaml`.

A Ray Data job on the service's cluster that shares the service's intake rules, ids,
models and stores: read -> decode and hash (CPU tasks) -> skip what is stored or seen
already in the run -> embed (an actor pool of the embedder class, GPUs where there are
some) -> [caption, inline only] -> blobs, then records (ingress.core.storing).

By responsibility: ``cli`` (the command line, resources, exit status), ``sources``
(what to read and how), ``rows`` (the pipeline's one row schema), ``stages`` (the
batch functions), ``stage_stores`` (stores inside an actor), ``claims`` (duplicates
within a run), ``pipeline`` (the Dataset) and ``report`` (progress, summary, JSON).
"""
