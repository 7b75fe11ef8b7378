"""Promotion: the winner of a real search, tested, logged with its preprocessing, registered with the
``champion`` alias on the real MLflow server (artifacts in SeaweedFS), loaded back and used.

Cost: ~60-120 s on 2 busy cores (a 2-step search through the CLI, one model export, one reload).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from quicktune.search.promotion import RawImageClassifier

HERE = Path(__file__).parents[1]  # tests/: the shared spaces


def _test_images(folder):
    from quicktune.data import open_dataset

    ds = open_dataset(str(folder))
    idx = [int(i) for i in ds.split("test")]
    images = np.stack([np.asarray(ds.load_image(i).convert("RGB"), dtype=np.uint8) for i in idx])
    return images, np.asarray([int(ds.labels[i]) for i in idx]), [str(c) for c in ds.classes]


@pytest.fixture(scope="module")
def promoted(mlflow_server, tiny_image_folder, tmp_path_factory):
    """``quicktune search ... --model-name NAME`` as a user runs it (a subprocess), on the servers."""
    tmp = tmp_path_factory.mktemp("promote")
    name = f"digits-{uuid.uuid4().hex[:6]}"
    search_id = f"p-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, **mlflow_server.env}
    cmd = [
        sys.executable,
        "-m",
        "quicktune.cli",
        "search",
        "--data",
        str(tiny_image_folder),
        "--budget",
        "5m",
        "--space",
        str(HERE / "tiny_space.yaml"),
        "--workers",
        "2",
        "--max-epochs",
        "2",
        "--image-size",
        "16",
        "--budget-epochs",
        "3",
        "--search-id",
        search_id,
        "--model-name",
        name,
        "--experiment",
        "promote-tests",
        "--tracking-uri",
        mlflow_server.tracking_uri,
        "--workdir",
        str(tmp / "work"),
        "--no-progress",
        "--json",
    ]
    out = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    doc = json.loads(out.stdout[out.stdout.index("{") :])
    return dict(doc=doc, name=name, search_id=search_id, env=env, tmp=tmp)


@pytest.mark.slow
@pytest.mark.servers
def test_search_cli_registers_the_champion_and_it_predicts(promoted, mlflow_server, tiny_image_folder, monkeypatch):
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    for k, v in mlflow_server.env.items():
        monkeypatch.setenv(k, v)
    doc, name = promoted["doc"], promoted["name"]
    assert doc["status"] == "succeeded" and doc["model_name"] == name and doc["model_version"] == "1"
    client = MlflowClient(mlflow_server.tracking_uri)
    mv = client.get_model_version_by_alias(name, "champion")
    assert mv.version == "1"
    assert mv.tags["quicktune.search_id"] == promoted["search_id"]
    assert mv.tags["quicktune.parent_run_id"] == doc["parent_run_id"]
    assert mv.tags["quicktune.config_id"] == doc["best_config_id"]
    assert float(mv.tags["quicktune.test_accuracy"]) == pytest.approx(doc["test_accuracy"])
    promo_run = client.get_run(mv.run_id)
    assert promo_run.data.tags["mlflow.parentRunId"] == doc["parent_run_id"]
    assert promo_run.data.tags["quicktune.role"] == "promotion"
    assert promo_run.data.metrics["test_top1"] == pytest.approx(doc["test_accuracy"])

    mlflow.set_tracking_uri(mlflow_server.tracking_uri)
    model = mlflow.pytorch.load_model(f"models:/{name}@champion")
    images, labels, classes = _test_images(tiny_image_folder)
    with torch.no_grad():
        logits = model(torch.from_numpy(images))
    assert tuple(logits.shape) == (len(images), len(classes))
    accuracy = float((logits.argmax(1).numpy() == labels).mean())
    assert accuracy > 2 * (1 / len(classes)), f"accuracy {accuracy} is not above chance"
    # the registered model does the recorded test accuracy on the raw images of the test split
    assert accuracy == pytest.approx(doc["test_accuracy"], abs=0.1)
    # any image size: resizing happens inside the model
    big = np.repeat(np.repeat(images[:4], 2, axis=1), 2, axis=2)
    with torch.no_grad():
        assert tuple(model(torch.from_numpy(np.ascontiguousarray(big))).shape) == (4, len(classes))
    info = mlflow.models.get_model_info(f"models:/{name}@champion")
    assert info.signature is not None and info.signature.inputs.inputs[0].shape == (-1, -1, -1, 3)
    assert info.metadata["classes"] == classes


@pytest.mark.slow
@pytest.mark.servers
def test_promote_command_adds_a_version_with_another_alias(promoted, mlflow_server):
    from mlflow import MlflowClient

    cmd = [
        sys.executable,
        "-m",
        "quicktune.cli",
        "promote",
        promoted["search_id"],
        "--model-name",
        promoted["name"],
        "--alias",
        "staging",
        "--experiment",
        "promote-tests",
        "--tracking-uri",
        mlflow_server.tracking_uri,
        "--json",
    ]
    out = subprocess.run(cmd, env=promoted["env"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(mlflow_server.tracking_uri)
    assert client.get_model_version_by_alias(promoted["name"], "staging").version == "2"
    assert client.get_model_version_by_alias(promoted["name"], "champion").version == "1"


def test_promote_command_names_a_missing_search(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "quicktune.cli",
        "promote",
        "no-such-search",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 3 and "no search 'no-such-search'" in out.stderr


# --- the preprocessing wrapper (no servers) ------------------------------------------------------
class _Identity(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)


def _pre(in_chans=3, size=8):
    return {
        "image_size": size,
        "in_chans": in_chans,
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
        "classes": ["a", "b"],
    }


def test_wrapper_matches_the_training_preprocessing():
    """Raw images through the wrapper == the step's own PIL preprocessing (same size: exact)."""
    from PIL import Image

    from quicktune.finetune.transforms import Preprocessing

    rng = np.random.default_rng(0)
    for in_chans in (1, 3):
        pre = _pre(in_chans)
        img = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        expected = Preprocessing(pre).transform(Image.fromarray(img)).flatten()
        got = RawImageClassifier(_Identity(), pre)(torch.from_numpy(img[None]))[0]
        assert torch.allclose(got, expected, atol=0.02), (in_chans, (got - expected).abs().max())


def test_wrapper_accepts_layouts_dtypes_and_channels():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(2, 12, 10, 3), dtype=np.uint8)
    nhwc = RawImageClassifier(_Identity(), _pre())(torch.from_numpy(img))
    nchw = RawImageClassifier(_Identity(), _pre(), layout="NCHW")(torch.from_numpy(img).permute(0, 3, 1, 2) / 255.0)
    assert nhwc.shape == (2, 3 * 8 * 8) and torch.allclose(nhwc, nchw, atol=1e-5)
    rgba = np.concatenate([img, np.full((2, 12, 10, 1), 255, np.uint8)], axis=-1)
    assert torch.allclose(RawImageClassifier(_Identity(), _pre())(torch.from_numpy(rgba)), nhwc)
    gray = RawImageClassifier(_Identity(), _pre(in_chans=3))(torch.from_numpy(img[..., :1]))
    assert gray.shape == (2, 3 * 8 * 8)
    with pytest.raises(ValueError, match="layout"):
        RawImageClassifier(_Identity(), _pre(), layout="HWC")
