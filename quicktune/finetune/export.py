"""Use a finished config: rebuild its trained model from a checkpoint, or score it on a split.

The controller calls these when it promotes the winner: ``evaluate_checkpoint`` for the test
accuracy, ``load_trained_model`` for the ``torch.nn.Module`` and the preprocessing to log as an
MLflow model. Nothing is unpickled: the weights come from the safetensors file, everything else
from the JSON manifest. StochNorm layers are plain BatchNorm at inference (same state-dict
keys), so the returned model is the plain timm architecture.
"""

from __future__ import annotations

from typing import Any

import torch

from quicktune.finetune.checkpoint import Checkpoint, CheckpointError, list_checkpoints, load_checkpoint

__all__ = ["find_checkpoint", "load_trained_model", "evaluate_checkpoint"]


def find_checkpoint(checkpoint_dir: str, which: str | int = "best") -> Checkpoint:
    """``which``: ``"best"`` (highest validation score), ``"newest"``, or an epoch number."""
    found = list_checkpoints(checkpoint_dir)
    if not found:
        raise CheckpointError(f"{checkpoint_dir}: no checkpoints")
    by_epoch = dict(found)
    if which == "newest":
        return load_checkpoint(found[-1][1])
    if which == "best":
        newest = load_checkpoint(found[-1][1], tensors=False)
        best = newest.manifest.get("best_epoch")
        if best is None or int(best) not in by_epoch:
            raise CheckpointError(f"{checkpoint_dir}: the best epoch's checkpoint ({best}) is missing")
        return load_checkpoint(by_epoch[int(best)])
    epoch = int(which)
    if epoch not in by_epoch:
        raise CheckpointError(f"{checkpoint_dir}: no checkpoint for epoch {epoch} (have {sorted(by_epoch)})")
    return load_checkpoint(by_epoch[epoch])


def load_trained_model(
    checkpoint_dir: str, which: str | int = "best", device: str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained network in eval mode and its preprocessing (a JSON-serialisable dict:
    ``image_size``, ``in_chans``, ``mean``, ``std``, ``resize`` (``"square-bilinear"``), ``classes``,
    ``model``, ``epoch``, ``val_score``). ``Preprocessing(d).transform(pil_image)`` applies it."""
    from quicktune.finetune.model import build_network, model_defaults

    ck = find_checkpoint(checkpoint_dir, which)
    m = ck.manifest
    cfg = m["resolved_config"]
    defaults = model_defaults(cfg["model"])
    net, _ = build_network(
        cfg["model"],
        int(m["num_classes"]),
        int(m["in_chans"]),
        int(m["image_size"]),
        float(cfg.get("drop", 0.0)),
        pretrained=False,
        defaults=defaults,
    )
    state = {k[len("model/") :]: v for k, v in ck.tensors.items() if k.startswith("model/")}
    net.load_state_dict(state, strict=True)
    net.to(device).eval()
    return net, checkpoint_preprocessing(m, ck.epoch)


def evaluate_checkpoint(
    checkpoint_dir: str,
    data_uri: str,
    split: str = "test",
    which: str | int = "best",
    device: str = "cpu",
    cache_dir: str | None = None,
    batch_size: int = 256,
    threads: int | None = None,
) -> dict[str, Any]:
    """Top-1/top-5/loss of a checkpoint on a split of the dataset it was trained on (the split is
    recomputed with the checkpoint's split seed, so ``test`` is the config's held-out test set)."""
    from quicktune.data import open_dataset
    from quicktune.finetune.loader import ImageSet, eval_batches
    from quicktune.finetune.precision import resolve_precision
    from quicktune.finetune.train import evaluate

    if threads:
        torch.set_num_threads(int(threads))
    net, pre = load_trained_model(checkpoint_dir, which, device)
    ds = open_dataset(data_uri, cache_dir=cache_dir, split_seed=_split_seed(checkpoint_dir))
    if [str(c) for c in ds.classes] != pre["classes"]:
        raise CheckpointError(f"{data_uri}: its classes differ from the ones the checkpoint was trained on")
    data = ImageSet(ds, ds.split(split), pre["image_size"], pre["in_chans"], pre["mean"], pre["std"], None)
    dev = torch.device(device)
    out = evaluate(net, eval_batches(data, batch_size), dev, precision=resolve_precision("auto", dev))
    return {
        "split": split,
        "epoch": pre["epoch"],
        "top1": out["top1"],
        "top5": out["top5"],
        "loss": out["loss"],
        "n": out["n"],
        "val_score": pre["val_score"],
    }


def _split_seed(checkpoint_dir: str) -> int:
    found = list_checkpoints(checkpoint_dir)
    return int(load_checkpoint(found[-1][1], tensors=False).manifest.get("split_seed", 0))


def checkpoint_preprocessing(manifest: dict[str, Any], epoch: int) -> Any:
    """The ``Preprocessing`` a checkpoint's model needs at inference, from its manifest: the one
    place it is spelled, for the exported model and for promotion's test of the winner."""
    from quicktune.finetune.transforms import Preprocessing

    score = next((r["score"] for r in manifest.get("history", []) if r["epoch"] == epoch), None)
    return Preprocessing(
        image_size=int(manifest["image_size"]),
        in_chans=int(manifest["in_chans"]),
        mean=list(manifest["mean"]),
        std=list(manifest["std"]),
        resize="square-bilinear",
        classes=list(manifest["classes"]),
        model=manifest["resolved_config"]["model"],
        epoch=epoch,
        val_score=score,
        config=manifest["config"],
    )
