"""Shared pytest fixtures. Keep each fixture documented and cheap until a test asks for it.

Servers (session-scoped, started lazily - only when a test requests them):
  s3_server        real SeaweedFS S3 (``quicktune.testing.SeaweedS3``) with authentication on
  s3_env           function-scoped: points AWS_* / MLFLOW_S3_ENDPOINT_URL at ``s3_server``
  mlflow_server    real MLflow server (sqlite backend, artifacts in ``s3://mlflow/artifacts``)

Data:
  tiny_image_folder  a real-image dataset written with ``quicktune data import digits``:
                     10 classes x 30 images, 16x16 grayscale PNG (session-scoped, read-only by convention)

Always on:
  * torch uses one thread (the CI machine has 2 cores shared by parallel work);
  * HF_HUB_OFFLINE=1: nothing may download weights during tests.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # no 1 s IMDS probes when credentials are missing


# --------------------------------------------------------------------------------------------
# always on
# --------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _torch_single_thread():
    """One intra-op thread per test process (oversubscribing 2 cores slows training 10-30x)."""
    import torch

    torch.set_num_threads(1)
    yield


# --------------------------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server for the whole session; credentials are random per session."""
    from quicktune.testing import SeaweedS3

    with SeaweedS3(
        tmp_path_factory.mktemp("seaweedfs"), access_key="qt-" + secrets.token_hex(4), secret_key=secrets.token_hex(16)
    ) as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Environment for code under test that uses the standard AWS configuration chain."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    return s3_server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_server):
    """An MLflow tracking server for the whole session, artifacts proxied to ``s3://mlflow/artifacts``."""
    from quicktune.testing import MlflowServer

    with MlflowServer(tmp_path_factory.mktemp("mlflow"), s3_server, bucket="mlflow") as server:
        yield server


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
TINY_CLASSES = 10
TINY_PER_CLASS = 30
TINY_SIZE = 16


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory) -> Path:
    """Real digits (scikit-learn) as an image folder: 10 classes x 30 images, 16x16 grayscale PNG."""
    from quicktune.cli import main

    dest = tmp_path_factory.mktemp("data") / "digits"
    rc = main(["data", "import", "digits", str(dest), "--max-per-class", str(TINY_PER_CLASS), "--size", str(TINY_SIZE)])
    assert rc == 0
    return dest
