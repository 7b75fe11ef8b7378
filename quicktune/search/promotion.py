"""Promote a search's winner: test it, log it as an MLflow model that eats raw images, register it.

The best configuration by validation score (over all its epochs) is evaluated on the held-out
test split, wrapped with its preprocessing (:class:`RawImageClassifier`: layout, channels,
resize, normalisation inside the network), logged with ``mlflow.pytorch.log_model`` (signature,
input example, PT2 format -- a traced graph, nothing unpickled at load) in a ``promotion`` child
run of the search, registered under ``model_name`` and given ``alias`` (``champion``). The model
version's tags link it to its search. Then::

    model = mlflow.pytorch.load_model("models:/NAME@champion")
    logits = model(torch.from_numpy(images_uint8_nhwc))      # [N, H, W, C] uint8, any H x W

Memory: promotion runs in the controller pod (3Gi in ``k8s/base``), and a checkpoint holds the
optimizer state beside the model (AdamW: two more copies of every weight). :func:`load_winner`
therefore reads only the model's tensors: the safetensors file is streamed to a local temporary file
(its SHA-256 and size checked against the manifest while streaming), its JSON header is parsed, and
each ``model/`` tensor is read straight into the matching parameter of the freshly built network --
no copy of the file, of the optimizer state or of a second state dict is ever in memory. The winner
is loaded once, evaluated on the test split and wrapped. ``benchmarks/bench_promotion_memory.py``
measures the peak RSS for the largest paper model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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


# safetensors dtype names -> torch dtypes (the format's header, https://github.com/huggingface/safetensors)
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MODEL_PREFIX = "model/"  # the model's tensors in a quicktune checkpoint (quicktune.finetune.state)
_CHUNK = 8 << 20


def _finetune(module: str) -> Any:
    """``quicktune.finetune.<module>``, imported when promotion runs (as the package's own lazy imports)."""
    import importlib

    return importlib.import_module(f"quicktune.finetune.{module}")


def _local_tensors_file(uri: str, expect_sha256: str, expect_size: int, tmp: Path) -> Path:
    """The checkpoint's tensors file as a local path (S3: streamed to ``tmp``), its SHA-256 and size
    checked against the manifest in 8 MiB chunks (never the whole file in memory)."""
    from quicktune import storage

    path = storage.download_file(uri, tmp / "tensors.safetensors") if storage.is_s3(uri) else Path(uri)
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    if digest.hexdigest() != expect_sha256 or size != expect_size:
        raise PromotionError(
            f"checkpoint {uri} is corrupt: SHA-256 {digest.hexdigest()[:12]}... ({size} bytes) does not match "
            f"the manifest's {str(expect_sha256)[:12]}... ({expect_size} bytes)"
        )
    return path


def _read_model_weights(path: Path, net: torch.nn.Module) -> None:
    """Fill ``net``'s state from the ``model/`` tensors of a safetensors file, reading each one into
    its parameter's memory (strict: the same keys, shapes and dtypes; other tensors are skipped)."""
    target = net.state_dict(keep_vars=True)
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        base = 8 + n
        names = {k[len(_MODEL_PREFIX) :]: v for k, v in header.items() if k.startswith(_MODEL_PREFIX)}
        missing, unexpected = sorted(set(target) - set(names)), sorted(set(names) - set(target))
        if missing or unexpected:
            raise PromotionError(
                "the checkpoint's model tensors do not fit the network: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        with torch.no_grad():
            for key, info in names.items():
                dest = target[key].data
                dtype = _ST_DTYPES.get(info["dtype"])
                if dtype is None or list(dest.shape) != list(info["shape"]):
                    raise PromotionError(
                        f"tensor {key}: {info['dtype']} {info['shape']} in the checkpoint, "
                        f"{dest.dtype} {list(dest.shape)} in the network"
                    )
                start, end = info["data_offsets"]
                fh.seek(base + start)
                if dtype == dest.dtype and dest.is_contiguous() and dest.device.type == "cpu":
                    view = dest.view(torch.uint8) if dest.dim() else dest.reshape(1).view(torch.uint8)
                    buf = memoryview(view.numpy()).cast("B")
                    if len(buf) != end - start or fh.readinto(buf) != end - start:
                        raise PromotionError(f"tensor {key}: truncated in the checkpoint")
                else:  # another dtype or layout: read it alone and convert
                    raw = bytearray(fh.read(end - start))
                    dest.copy_(torch.frombuffer(raw, dtype=dtype).reshape(info["shape"]))


def load_winner(checkpoint_dir: str, which: str | int = "best") -> tuple[torch.nn.Module, dict[str, Any], int]:
    """The trained network (CPU, eval mode) of a checkpoint, its preprocessing (as
    :func:`quicktune.finetune.load_trained_model`) and its split seed, reading only the model's
    weights (module docstring: the optimizer state is never loaded)."""
    from quicktune import storage
    from quicktune.finetune.checkpoint import list_checkpoints, load_checkpoint

    model, export = _finetune("model"), _finetune("export")

    found = list_checkpoints(checkpoint_dir)
    if not found:
        raise PromotionError(f"{checkpoint_dir}: no checkpoints")
    by_epoch = dict(found)
    newest = load_checkpoint(found[-1][1], tensors=False)
    epoch = newest.manifest.get("best_epoch") if which == "best" else (found[-1][0] if which == "newest" else which)
    if epoch is None or int(epoch) not in by_epoch:
        raise PromotionError(f"{checkpoint_dir}: no checkpoint for epoch {epoch} (have {sorted(by_epoch)})")
    ck = load_checkpoint(by_epoch[int(epoch)], tensors=False)
    m = ck.manifest
    cfg = m["resolved_config"]
    net, _ = model.build_network(
        cfg["model"],
        int(m["num_classes"]),
        int(m["in_chans"]),
        int(m["image_size"]),
        float(cfg.get("drop", 0.0)),
        pretrained=False,
        defaults=model.model_defaults(cfg["model"]),
    )
    base = ck.uri.rsplit("/", 1)[0] if storage.is_s3(ck.uri) else str(Path(ck.uri).parent)
    with tempfile.TemporaryDirectory(prefix="qt-promote-") as tmp:
        path = _local_tensors_file(
            storage.join(base, m["tensors_file"]), str(m.get("sha256")), int(m.get("size", -1)), Path(tmp)
        )
        _read_model_weights(path, net)
    net.eval()
    pre = export.checkpoint_preprocessing(m, ck.epoch)
    return net, pre, int(newest.manifest.get("split_seed", 0))


def _test_split(
    net: torch.nn.Module, pre: Mapping[str, Any], split_seed: int, data_uri: str, device: str
) -> dict[str, Any]:
    """Top-1/top-5/loss of ``net`` on the test split it was held out from (the checkpoint's split seed)."""
    from quicktune.data import open_dataset

    loader, train, precision = _finetune("loader"), _finetune("train"), _finetune("precision")
    ds = open_dataset(data_uri, split_seed=split_seed)
    if [str(c) for c in ds.classes] != pre["classes"]:
        raise PromotionError(f"{data_uri}: its classes differ from the ones the checkpoint was trained on")
    data = loader.ImageSet(ds, ds.split("test"), pre["image_size"], pre["in_chans"], pre["mean"], pre["std"], None)
    dev = torch.device(device)
    net.to(dev)
    try:  # as quicktune.finetune.evaluate_checkpoint scores a checkpoint
        out = train.evaluate(
            net, loader.eval_batches(data, 256), dev, precision=precision.resolve_precision("auto", dev)
        )
    finally:
        net.to("cpu")
    return {"split": "test", "epoch": pre["epoch"], "top1": out["top1"], "top5": out["top5"], "loss": out["loss"]}


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
        net, pre, split_seed = load_winner(best.checkpoint_dir, "best")
        test = _test_split(net, pre, split_seed, data_uri, device)
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
