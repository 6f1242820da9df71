# The Ray image for k8s/rayservice.yaml: Ray + this project + its dependencies, so the
# RayService needs no runtime_env. The rayproject/ray-ml images are discontinued: this
# starts from the plain Ray GPU image and adds what the project needs.
#
#   docker build -t your-registry.example.com/imagesearch:0.1.0-ray2.60.0-py311-gpu .
#   docker build --build-arg PREFETCH_MODELS=1 -t ... .     # models baked in (~1.5 GB more),
#                                                            # HF_HUB_OFFLINE=1 (k8s/rayservice.yaml)
#
# The Ray version here, `rayVersion` in k8s/rayservice.yaml, the image tags there and
# the ray requirement in pyproject.toml must agree (tests/repo/test_deploy_manifests.py).
FROM rayproject/ray:2.60.0-py311-gpu

# torch from PyPI's default index is the CUDA build, carrying its own CUDA runtime
# (only the NVIDIA driver comes from the node). For an older driver, pick a matching
# build instead, e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url $TORCH_INDEX_URL} "torch==${TORCH_VERSION}"

# Made by the ray user (WORKDIR alone may make it root's): pip builds the package here.
RUN mkdir -p /home/ray/imagesearch
WORKDIR /home/ray/imagesearch

# Dependencies first (the store clients included), from pyproject.toml alone, so that a
# source change does not reinstall them. The constraints keep the base image's Ray and
# the torch above.
COPY --chown=ray:users pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && python -c "import ray, torch; print(f'ray=={ray.__version__}'); print(f'torch=={torch.__version__}')" > /tmp/constraints.txt \
 && pip install --no-cache-dir -c /tmp/constraints.txt -r /tmp/requirements.txt

COPY --chown=ray:users deployments ./deployments
COPY --chown=ray:users ingress ./ingress
# imagesearch-bulk (k8s/bulk-index-rayjob.yaml) expands its sources as the CLI does.
COPY --chown=ray:users imagesearch_cli ./imagesearch_cli
COPY --chown=ray:users serve_config.yaml serve_config.stores.yaml serve_config.production.yaml ./
RUN pip install --no-cache-dir --no-deps . \
 && python -c "import ingress.app, deployments.captioner, deployments.embedder"

# Where the models are cached. With PREFETCH_MODELS=1 the models that MODELS_CONFIG
# names are fetched now, into the image (python -m ingress.tools.fetch_models: what
# from_pretrained reads, one set of PyTorch weights), and the image starts with
# HF_HUB_OFFLINE=1: no pod downloads them, and air-gapped clusters work. Without it
# the image downloads on first start (k8s/rayservice.yaml then needs a cache volume
# and HF_HUB_OFFLINE=0).
ENV HF_HOME=/home/ray/.cache/huggingface
ARG PREFETCH_MODELS=0
ARG MODELS_CONFIG=serve_config.production.yaml
RUN if [ "$PREFETCH_MODELS" = "1" ]; then \
      python -m ingress.tools.fetch_models --config "$MODELS_CONFIG"; \
    fi
ENV HF_HUB_OFFLINE=${PREFETCH_MODELS}
