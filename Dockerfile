# palijudge on NVIDIA's JAX container (CUDA, cuDNN and a GPU build of jax preinstalled).
#   bin/docker-build.sh                 # builds palijudge:latest
#   bin/docker-run.sh make train SET=set1
# The base image's jax/jaxlib are kept: pip installs palijudge with them as constraints.
# CI builds the same file on a local Debian base (.ci/docker.sh): --base palijudge-base:bookworm.
ARG BASE_IMAGE=nvcr.io/nvidia/jax:25.04-py3
FROM ${BASE_IMAGE}
# What the image runs: the workflow (Kaggle/HF downloads, shared PostgreSQL studies).
# The test suite runs on the host (make test); EXTRAS=download,postgres,test adds it.
ARG EXTRAS=download,postgres

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The users' GPU memory setting (12 GB card: no preallocation). The platform allocator
# (frees memory at once, much slower) is opt-in: bin/docker-run.sh --platform-allocator
# or a script's --platform-allocator, both XLA_PYTHON_CLIENT_ALLOCATOR=platform.
# VENV: the image's Python for `make`, outside the mounted project folder.
ENV XLA_PYTHON_CLIENT_PREALLOCATE=false \
    VENV=/opt/palijudge \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    PALIJUDGE_CONTAINER=1
# `python` is the image's python3 on every base (a plain Debian one has only python3).
ENV PATH="${VENV}/bin:${PATH}"

WORKDIR /workspace/palijudge

# Dependencies first (cached while only the code changes).
COPY pyproject.toml README.md ./
COPY src/palijudge/__init__.py src/palijudge/__init__.py
RUN python3 -m pip list --format=freeze \
      | grep -iE '^(jax|jaxlib|jax-cuda[0-9]+-(plugin|pjrt)|numpy|ml[-_]dtypes)==' \
      > /tmp/keep.txt || true; \
    python3 -m pip install -c /tmp/keep.txt -e ".[${EXTRAS}]"

COPY src/ src/
COPY playground/ playground/
COPY Makefile ./
COPY bin/ bin/

# `make` targets run here as they do on a host: $VENV/bin/python is the image's python,
# and .frozen tells the Makefile not to rebuild it when the mounted pyproject.toml changes.
RUN mkdir -p "$VENV/bin" cache dataset checkpoints experiments \
    && ln -s "$(command -v python3)" "$VENV/bin/python" \
    && touch "$VENV/.frozen" \
    && chmod -R a+rwX cache dataset checkpoints experiments \
    && python3 -c "import palijudge, jax, optuna, matplotlib, yaml; print('palijudge ok')"

CMD ["bash"]
