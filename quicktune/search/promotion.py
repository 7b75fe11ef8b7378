"""Promote a search's winner: test it, log it as an MLflow model that eats raw images, register it.

The best configuration by validation score (over all its epochs) is evaluated on the held-out
test split, wrapped with its preprocessing (:class:`RawImageClassifier`: layout, channels,
resize, normalisation inside the network), logged with ``mlflow.pytorch.log_model`` (signature,
input example, PT2 format -- a traced graph, nothing unpickled at load) in a ``promotion`` child
run of the search, registered under ``model_name`` and given ``alias`` (``champion``). The model
version's tags link it to its search. Then::

    model = mlflow.pytorch.load_model("models:/NAME@champion")
    logits = model(torch.from_numpy(images_uint8_nhwc))      # [N, H, W, C] uint8, any H x W
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from quicktune.tracking.layout import ConfigRecord, SearchTracker
from quicktune.tracking.names import InvalidNameError, check_search_id
from quicktune.tracking.schema import (
    ARTIFACT_MODEL,
    ARTIFACT_PREPROCESSING,
    METRIC_TEST_LOSS,
    METRIC_TEST_TOP1,
    METRIC_TEST_TOP5,
    METRIC_VAL_SCORE,
    TAG_CHAMPION,
    TAG_CHAMPION_VERSION,
    TAG_CONFIG_ID,
    TAG_CONFIG_RUN_ID,
    TAG_MODEL,
    TAG_PARENT_RUN_ID,
    TAG_SEARCH_ID,
    TAG_TEST_ACCURACY,
    TAG_VAL_SCORE,
)

log = logging.getLogger(__name__)
_LUMA = (0.299, 0.587, 0.114)  # PIL's RGB -> L weights, as in training


class PromotionError(RuntimeError):
    """The search has nothing to promote, or its winner cannot be loaded or registered."""


class RawImageClassifier(torch.nn.Module):
    """A trained network plus the preprocessing it was trained with, so callers feed raw images.

    Input: ``[N, H, W, C]`` (``layout="NHWC"``) or ``[N, C, H, W]`` (``"NCHW"``), ``uint8`` in
    0..255 or float in 0..1, with C in {1, 3, 4} (alpha is dropped, gray is replicated or RGB
    turned to luminance to match the channels the network was trained on). Any H x W: images are
    resized (bilinear) to the training size, then normalised with the training mean/std.
    Output: logits ``[N, num_classes]`` in the order of ``classes``.
    """

    mean: torch.Tensor  # buffers (registered in __init__), typed for the checker
    std: torch.Tensor
    luma: torch.Tensor

    def __init__(self, net: torch.nn.Module, preprocessing: Mapping[str, Any], layout: str = "NHWC") -> None:
        super().__init__()
        if layout not in ("NHWC", "NCHW"):
            raise ValueError(f"layout must be NHWC or NCHW, got {layout!r}")
        self.net = net
        self.layout = layout
        self.image_size = int(preprocessing["image_size"])
        self.in_chans = int(preprocessing["in_chans"])
        self.classes = [str(c) for c in preprocessing["classes"]]
        mean = torch.tensor(list(preprocessing["mean"])[: self.in_chans], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(list(preprocessing["std"])[: self.in_chans], dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("luma", torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0
        else:
            x = x.to(torch.float32)
        if x.dim() == 3:  # a single gray image batch without channel axis: [N, H, W]
            x = x.unsqueeze(-1) if self.layout == "NHWC" else x.unsqueeze(1)
        if self.layout == "NHWC":
            x = x.permute(0, 3, 1, 2)
        c = x.shape[1]
        if c == 4:
            x = x[:, :3]
            c = 3
        if self.in_chans == 1 and c == 3:
            x = (x * self.luma).sum(dim=1, keepdim=True)
        elif self.in_chans == 3 and c == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(
            x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
        )
        x = (x - self.mean) / self.std
        return self.net(x)


@dataclass
class Promotion:
    search_id: str
    model_name: str
    alias: str
    version: str
    model_uri: str  # models:/NAME@alias
    run_id: str  # the promotion run holding the logged model
    config_id: str
    config: dict[str, Any]
    val_score: float
    test: dict[str, Any] = field(default_factory=dict)

    @property
    def test_accuracy(self) -> float:
        return float(self.test.get("top1", math.nan))


def best_record(records: Mapping[str, ConfigRecord]) -> ConfigRecord:
    scored = [r for r in records.values() if r.epochs and math.isfinite(r.best_score)]
    if not scored:
        raise PromotionError("no configuration of this search finished an epoch: nothing to promote")
    return max(scored, key=lambda r: (r.best_score, -r.last_epoch))


def _example_images(data_uri: str, n: int = 4, seed: int = 0) -> np.ndarray:
    """A few real test images as a uint8 ``[N, H, W, 3]`` array (the model's input example)."""
    from quicktune.data import open_dataset

    ds = open_dataset(data_uri, split_seed=seed)
    idx = list(ds.split("test"))[:n] or list(range(min(n, len(ds))))
    imgs = [ds.load_image(int(i)).convert("RGB") for i in idx]
    size = imgs[0].size
    return np.stack([np.asarray(im.resize(size) if im.size != size else im, dtype=np.uint8) for im in imgs])


def promote(
    search_id: str,
    tracking_uri: str | None = None,
    model_name: str | None = None,
    alias: str = "champion",
    experiment: str = "quicktune",
    tracker: SearchTracker | None = None,
    device: str = "cpu",
    data_uri: str | None = None,
) -> Promotion:
    """Test, log, register and alias the best configuration of ``search_id`` (see module doc)."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from quicktune.finetune import evaluate_checkpoint, load_trained_model

    try:  # it goes into an MLflow filter string and the default model name
        check_search_id(search_id)
    except InvalidNameError as exc:
        raise PromotionError(str(exc)) from None
    tracker = tracker or SearchTracker(tracking_uri, experiment=experiment)
    tracker.check_reachable()
    parent = tracker.find_search(search_id)
    if parent is None:
        raise PromotionError(
            f"no search {search_id!r} in experiment {tracker.experiment_name!r} "
            f"of {tracker.tracking_uri or 'the default tracking store'}"
        )
    spec = tracker.spec(parent.info.run_id) or {}
    data_uri = data_uri or spec.get("data_uri")
    if not data_uri:
        raise PromotionError(f"search {search_id!r} records no data_uri; pass data_uri")
    model_name = model_name or f"quicktune-{search_id}"
    best = best_record(tracker.load_configs(parent.info.run_id))
    if not best.checkpoint_dir:
        raise PromotionError(f"config {best.config_id} has no checkpoint directory recorded")
    try:
        test = evaluate_checkpoint(best.checkpoint_dir, data_uri, split="test", device=device)
        net, pre = load_trained_model(best.checkpoint_dir, "best", device="cpu")
    except Exception as exc:
        raise PromotionError(f"cannot load the winner {best.config_id} from {best.checkpoint_dir}: {exc}") from exc
    wrapper = RawImageClassifier(net, pre, layout="NHWC").eval()
    example = _example_images(data_uri, seed=int(spec.get("seed", 0) or 0))
    with torch.no_grad():
        out = wrapper(torch.from_numpy(example))
    channels = int(example.shape[-1])
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, channels), "images")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(out.shape[1])), "logits")]),
    )

    run_id = tracker.create_promotion_run(parent.info.run_id, parent.info.experiment_id, search_id, best.config_id)
    tracker.log_params(
        run_id,
        {
            "config_id": best.config_id,
            "model_name": model_name,
            "alias": alias,
            "source_run_id": best.run_id,
            "checkpoint_epoch": pre.get("epoch"),
        },
    )
    tracker.log_metrics(
        run_id,
        {
            METRIC_TEST_TOP1: test["top1"],
            METRIC_TEST_TOP5: test["top5"],
            METRIC_TEST_LOSS: test["loss"],
            METRIC_VAL_SCORE: best.best_score,
        },
        step=int(pre.get("epoch") or 0),
    )
    tracker.log_json(run_id, dict(pre), ARTIFACT_PREPROCESSING)

    previous_uri = mlflow.get_tracking_uri()
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(run_id=run_id, experiment_id=parent.info.experiment_id):
            info = tracker.call(
                "log model",
                mlflow.pytorch.log_model,
                wrapper,
                name=ARTIFACT_MODEL,
                signature=signature,
                input_example=example,
                serialization_format="pt2",
                registered_model_name=model_name,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                metadata={
                    "classes": wrapper.classes,
                    "preprocessing": json.loads(json.dumps(dict(pre), default=str)),
                    "input": "uint8 images [N, H, W, C], C in {1, 3, 4}; output: logits",
                },
            )
    finally:
        mlflow.set_tracking_uri(previous_uri)
    version = str(info.registered_model_version)
    tracker.set_model_alias(model_name, alias, version)
    tracker.set_model_version_tags(
        model_name,
        version,
        {
            TAG_SEARCH_ID: search_id,
            TAG_PARENT_RUN_ID: parent.info.run_id,
            TAG_CONFIG_ID: best.config_id,
            TAG_CONFIG_RUN_ID: best.run_id,
            TAG_TEST_ACCURACY: f"{test['top1']:.6f}",
            TAG_VAL_SCORE: f"{best.best_score:.6f}",
            TAG_MODEL: str(best.config.get("model", "")),
        },
    )
    tracker.set_tags(parent.info.run_id, {TAG_CHAMPION: f"models:/{model_name}@{alias}", TAG_CHAMPION_VERSION: version})
    tracker.terminate(run_id, "FINISHED")
    return Promotion(
        search_id=search_id,
        model_name=model_name,
        alias=alias,
        version=version,
        model_uri=f"models:/{model_name}@{alias}",
        run_id=run_id,
        config_id=best.config_id,
        config=best.config,
        val_score=best.best_score,
        test=dict(test),
    )


def predict_classes(model: torch.nn.Module, images: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Class names for raw uint8 NHWC images with a loaded champion model."""
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(images)))
    return [classes[int(i)] for i in logits.argmax(dim=1)]
