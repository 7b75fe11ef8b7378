"""One finetuning step: advance one config from its newest checkpoint to ``to_epoch``.

This is the unit of work the optimizer schedules (freeze-thaw): resume exactly where the config
stopped, train epoch by epoch, evaluate on the validation split after each epoch, checkpoint,
and report. Every outcome ends in a RESULT dict (``quicktune.finetune.result``) with a status:

- ``ok``: trained (or already trained) to ``to_epoch``;
- ``invalid``: a deterministic error that would happen again on every attempt, so the search
  must not retry it: the config cannot be trained (unknown knob or model, bad value), the model
  cannot take the image size, or the data cannot be used (``DatasetError``: a corrupt image, a
  single class, a bad split file; not an S3 outage). RESULT's ``invalid_kind`` says which
  (``config``, ``image_size`` or ``data``): a ``data`` error fails every config alike;
- ``diverged``: the training loss became NaN/inf (in fp16: persistently, after the GradScaler's
  skips) or exploded past a documented bound (``quicktune.finetune.divergence``); the last good
  checkpoint stays and the exploded epoch is not saved;
- ``oom``: out of memory (CUDA or host);
- ``failed``: anything else (bad data, corrupt checkpoints, storage errors, bugs); the message
  says what, the full traceback goes to the log (stderr).

Exact resume: the checkpoint holds the model, optimizer, scheduler and grad-scaler states and
the RNG states; besides, every epoch reseeds python/numpy/torch and draws its data order from
``(seed, epoch)`` alone, so "2 epochs, then 2 more" trains on the same batches with the same
augmentations as "4 epochs" and ends with the same weights.

Warm processes (``quicktune.finetune.warm_cache``, on in the warm workers): the opened dataset, its
decoded images and the last config's parts stay in memory between steps; a step continues from
memory only when the checkpoint folder's newest manifest is byte for byte the one this process
wrote (RESULT ``memory: true``), else it restores from the checkpoint. Same batches, same
weights, same checkpoints as a cold step.

Schedule length: the lr schedule spans ``max_epochs`` (the search's epoch budget, from the
controller; default 50 as in the paper's learning curves). The first step records it (and the
image size and seed) in the checkpoint; later steps use the recorded values so that a config
never sees its schedule change, and warn when asked for different ones.

Precision (``quicktune.finetune.precision``): ``auto`` is bf16 on CUDA devices that compute it
natively, fp16 + GradScaler on older ones, fp32 on the CPU; RESULT records the precision and the
optimizer steps the scaler skipped. Devices: every CUDA call (peak memory, RNG state, sync) names
the step's own ``cuda:N``. Threads and DataLoader workers: ``quicktune.finetune.resources``.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from quicktune.finetune.build import build_training, compute_relationship
from quicktune.finetune.config import InvalidConfigError, resolve_config
from quicktune.finetune.epochs import EpochLoop, Marks, best_uri, join_data_check
from quicktune.finetune.model import UnknownModelError
from quicktune.finetune.state import CheckpointMeta, restore_state, set_rng_state

log = logging.getLogger(__name__)

DEFAULT_MAX_EPOCHS = 50
CPU_IMAGE_SIZE = 32

__all__ = ["run_step", "DEFAULT_MAX_EPOCHS", "CPU_IMAGE_SIZE", "StepError", "ImageSizeError"]


class StepError(RuntimeError):
    """The step cannot run as asked (bad arguments, checkpoint of another config, ...)."""


class ImageSizeError(StepError):
    """The model cannot take images of the requested size (e.g. convnext_atto at 16 px, a ViT
    whose patch size does not divide it): deterministic, reported as ``invalid``."""


def _invalid_kind(exc: BaseException) -> str | None:
    """``config``/``image_size``/``data`` when ``exc`` is deterministic (retrying cannot help),
    else None. A ``DatasetError`` caused by an unreachable S3 endpoint, a timeout or a generic
    storage failure (e.g. a 5xx answer) may be transient: not invalid."""
    from quicktune import storage
    from quicktune.data import DatasetError, errors

    if isinstance(exc, (InvalidConfigError, UnknownModelError)):
        return "config"
    if isinstance(exc, ImageSizeError):
        return "image_size"
    if isinstance(exc, getattr(errors, "InvalidDatasetError", ())):  # the data themselves are wrong
        return "data"
    if isinstance(exc, DatasetError):
        link: BaseException | None = exc.__cause__
        for _ in range(8):
            if link is None:
                break
            if isinstance(link, (ConnectionError, TimeoutError)) or type(link) is storage.StorageError:
                return None
            link = link.__cause__
        return "data"
    return None


@dataclass
class _Report:
    epochs: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    meta_features: dict[str, Any] = field(default_factory=dict)
    num_params: int | None = None
    checkpoint: str | None = None
    best_checkpoint: str | None = None
    message: str = ""
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------
def run_step(
    config: Mapping[str, Any],
    data_uri: str,
    to_epoch: int,
    checkpoint_dir: str,
    out: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    image_size: int | None = None,
    cache_dir: str | None = None,
    max_epochs: int | None = None,
    threads: int | None = 1,
    split_seed: int = 0,
    num_workers: int | None = None,
    deterministic: bool = False,
    weights_config: str | Mapping[str, Any] | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Train ``config`` up to epoch ``to_epoch`` (1-based), resuming from ``checkpoint_dir``.

    Returns the RESULT dict and, when ``out`` is given, writes it there atomically (local path or
    s3:// URI). Never raises for a training problem: the status says how it went. ``threads``
    sets torch's CPU threads (1 by default: several steps share a machine's cores; None leaves
    torch's setting alone); ``num_workers`` None = from the CPU limit
    (``resources.default_workers``); ``precision`` fp32/fp16/bf16/auto (``quicktune.finetune.precision``).
    """
    from quicktune.finetune.result import make_result, write_result

    t_start = time.perf_counter()
    report = _Report(device=str(device))
    status, message = "ok", ""
    try:
        _run(
            report,
            config,
            data_uri,
            int(to_epoch),
            checkpoint_dir,
            device,
            int(seed),
            image_size,
            cache_dir,
            max_epochs,
            threads,
            int(split_seed),
            num_workers,
            deterministic,
            weights_config,
            precision,
        )
        message = report.message
    except Exception as exc:  # noqa: BLE001 - classified below; the step reports every failure as a status
        status, message = _classify(exc, device, report)
    if status in ("oom",) and str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    result = make_result(
        status,
        message,
        report.epochs,
        peak_memory_mb=_peak_memory_mb(device),
        meta_features=report.meta_features,
        num_params=report.num_params,
        checkpoint=report.checkpoint,
        best_checkpoint=report.best_checkpoint,
        history=report.history,
        step_seconds=round(time.perf_counter() - t_start, 4),
        warnings=report.warnings,
        device=str(device),
        **report.extra,
    )
    if out is not None:
        write_result(out, result)
    return result


def _classify(exc: Exception, device: str, report: _Report) -> tuple[str, str]:
    """(status, message) of a step that raised ``exc`` (see the module docstring)."""
    kind = _invalid_kind(exc)
    if kind is not None:
        report.extra["invalid_kind"] = kind
        log.error("finetuning step is invalid (%s): %s", kind, exc)
        return "invalid", str(exc)
    if isinstance(exc, _diverged_type()):
        kept = "kept the last good checkpoint" if report.checkpoint else "no checkpoint was written"
        return "diverged", f"{exc}; {kept}"
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return "oom", f"out of memory on {device}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    log.error("finetuning step failed:\n%s", traceback.format_exc())
    return "failed", f"{type(exc).__name__}: {exc}"


def _diverged_type():
    from quicktune.finetune.train import DivergedError

    return DivergedError


def _peak_memory_mb(device: str) -> float:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        try:
            dev = torch.device(device)
        except RuntimeError:  # a malformed device string: the step already failed on it
            return 0.0
        return round(torch.cuda.max_memory_allocated(dev) / 2**20, 2)  # the step's cuda:N, not device 0
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 2)  # Linux: KiB


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------
def _run(
    report: _Report,
    config: Mapping[str, Any],
    data_uri: str,
    to_epoch: int,
    checkpoint_dir: str,
    device: str,
    seed: int,
    image_size: int | None,
    cache_dir: str | None,
    max_epochs: int | None,
    threads: int | None,
    split_seed: int,
    num_workers: int | None,
    deterministic: bool,
    weights_config,
    precision: str = "auto",
) -> None:
    from quicktune.finetune import checkpoint as ck, warm_cache
    from quicktune.finetune.loader import ImageSet, effective_batch_size
    from quicktune.finetune.model import model_defaults
    from quicktune.finetune.precision import resolve_precision
    from quicktune.finetune.resources import cpu_limit, default_workers
    from quicktune.finetune.transforms import build_policy

    cfg = resolve_config(config)
    if to_epoch < 1:
        raise StepError(f"--to-epoch must be >= 1, got {to_epoch}")
    dev = _prepare_device(device, precision, threads, deterministic)
    phases: dict[str, Any] = report.extra.setdefault("phases", {})
    mark = Marks(phases)
    defaults = model_defaults(cfg["model"], weights_config)  # imports timm (the bulk of start-up)
    mark("setup")

    # --- the checkpoint decides image size, schedule length and seed of a resumed config; a warm
    # process continues from the state in its memory only when that is the newest checkpoint
    memory = _verified_memory(warm_cache.take_training(checkpoint_dir), checkpoint_dir)
    if memory is not None:
        ckpt, problems = ck.Checkpoint(memory.epoch, memory.manifest_uri, json.loads(memory.manifest_bytes), {}), []
    else:
        ckpt, problems = ck.load_newest(checkpoint_dir)
    mark("checkpoint_load")
    for p in problems:
        report.warnings.append(f"skipped a bad checkpoint: {p}")
        log.warning("skipped a bad checkpoint: %s", p)
    image_size, max_epochs, seed, split_seed, start_epoch = _resume_settings(
        report, ckpt, config, checkpoint_dir, image_size, max_epochs, seed, split_seed, precision, dev, defaults
    )
    if image_size < 8:
        raise ImageSizeError(f"image size {image_size} px is too small (>= 8)")
    if to_epoch > max_epochs:
        report.warnings.append(f"to_epoch {to_epoch} is beyond the schedule length max_epochs={max_epochs}")

    ds, data_check = warm_cache.open_dataset(data_uri, cache_dir, split_seed)
    mark("data")
    report.meta_features = dict(ds.meta_features())
    classes = [str(c) for c in ds.classes]
    num_classes, in_chans = len(classes), int(ds.num_channels)
    if ckpt is not None:
        m = ckpt.manifest
        if m.get("classes") != classes or m.get("in_chans") != in_chans:
            raise StepError(
                f"{data_uri}: classes/channels differ from the ones this config's checkpoint was trained on"
            )
        if m.get("data_fingerprint") not in (None, getattr(ds, "fingerprint", None)):
            report.warnings.append(
                f"{data_uri}: the dataset changed since this config's last checkpoint "
                f"(fingerprint {m.get('data_fingerprint')} -> {ds.fingerprint})"
            )
    precision = resolve_precision(precision, dev)
    signature = {
        "config": dict(config),
        "weights_config": json.dumps(weights_config, sort_keys=True, default=str),
        "device": str(dev),
        "image_size": int(image_size),
        "max_epochs": int(max_epochs),
        "seed": int(seed),
        "split_seed": int(split_seed),
        "precision": precision,
        "classes": classes,
        "in_chans": in_chans,
    }
    if memory is not None and dict(memory.signature) != signature:
        log.info("kept training state of %s was built differently: restoring from the checkpoint", checkpoint_dir)
        memory = None
        warm_cache.free_gpu()
        ckpt, problems = ck.load_newest(checkpoint_dir)  # the same newest checkpoint, now with its tensors
        if ckpt is None or ckpt.epoch != start_epoch:
            raise StepError(f"{checkpoint_dir}: the newest checkpoint changed while this step started; retry")
    if to_epoch <= start_epoch:
        join_data_check(data_check, report)
        if memory is not None:
            warm_cache.remember_training(memory)  # still the newest state
        report.message = f"already trained to epoch {start_epoch} (asked for {to_epoch}); nothing to do"
        return

    # --- model, regularizers, optimizer, schedule (built the same way on every step, or kept)
    if memory is not None:
        parts, build_warnings = memory.parts, list(memory.warnings)
        report.warnings.extend(build_warnings)
        report.extra["memory"] = True
    else:
        before = len(report.warnings)
        parts = build_training(
            cfg,
            defaults,
            num_classes,
            in_chans,
            image_size,
            dev,
            seed,
            max_epochs,
            weights_config,
            report.warnings,
            precision=precision,
        )
        build_warnings = report.warnings[before:]
    report.extra["precision"] = parts.precision
    report.extra["scaler_skipped_steps"] = 0
    mark("build")
    net, regs = parts.net, parts.regs
    report.num_params = int(sum(p.numel() for p in net.parameters()))
    if ckpt is None:  # a config's first step: can the model take this size at all?
        _check_input_size(net, cfg["model"], in_chans, image_size, dev)
    mean, std = defaults["mean"], defaults["std"]
    bs = int(cfg["batch_size"])

    policy = build_policy(cfg, image_size, mean)
    train_set = ImageSet(ds, ds.split("train"), image_size, in_chans, mean, std, policy)
    val_set = ImageSet(ds, ds.split("val"), image_size, in_chans, mean, std, None)
    if len(train_set) == 0 or len(val_set) == 0:
        raise StepError(
            f"{data_uri}: the train or validation split is empty (train {len(train_set)}, val {len(val_set)} images)"
        )
    if parts.mixup is not None and effective_batch_size(len(train_set), bs) % 2:
        raise InvalidConfigError(f"knob 'batch_size': mixup/cutmix need an even batch size, got {bs}")
    if num_workers is None:
        num_workers = default_workers(cpu_limit(), dev.type, policy is not None)
    report.extra["threads"] = torch.get_num_threads()
    report.extra["workers"] = int(num_workers) if policy is not None else 0  # no augmentation: no DataLoader
    eval_bs = max(32, min(512, 2 * bs))

    mark("data")
    if memory is not None:
        set_rng_state(memory.rng, dev)  # what restore_state would set from the same checkpoint
    elif ckpt is not None:
        restore_state(ckpt, parts)
    elif regs.cotuning_weight > 0 and regs.source_head is not None:
        regs.relationship = compute_relationship(net, regs.source_head, train_set, num_classes, dev, eval_bs)
    if regs.relationship is not None:
        regs.relationship = regs.relationship.to(dev)
    mark("checkpoint_load")

    # --- epochs
    run_meta = CheckpointMeta(
        config=dict(config),
        resolved_config=dict(cfg),
        classes=classes,
        in_chans=in_chans,
        image_size=image_size,
        max_epochs=max_epochs,
        seed=seed,
        split_seed=split_seed,
        mean=list(defaults["mean"]),
        std=list(defaults["std"]),
        pretrained=bool(defaults["pretrained"]),
        data_uri=str(data_uri),
        data_fingerprint=getattr(ds, "fingerprint", None),
    )
    loop = EpochLoop(
        report=report,
        parts=parts,
        cfg=cfg,
        dev=dev,
        train_set=train_set,
        val_set=val_set,
        num_classes=num_classes,
        num_workers=int(num_workers),
        eval_batch_size=eval_bs,
        checkpoint_dir=checkpoint_dir,
        seed=seed,
        run_meta=run_meta,
        mark=mark,
        data_check=data_check,
    )
    loop.run(start_epoch, to_epoch)
    if loop.rng is not None:  # trained and saved: a warm process keeps the state (warm_cache; else a no-op)
        warm_cache.remember_training(
            warm_cache.TrainingMemory(
                checkpoint_dir,
                to_epoch,
                loop.uri,
                loop.manifest_bytes,
                signature,
                parts,
                loop.rng,
                tuple(build_warnings),
            )
        )


def _prepare_device(device: str, precision: str, threads: int | None, deterministic: bool) -> torch.device:
    """The step's torch device, checked (CUDA present, index in range, known precision) and set up
    (CPU threads; on CUDA: current device, cuDNN/TF32 determinism, peak-memory counter reset)."""
    from quicktune.finetune.precision import PRECISIONS

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise StepError(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise StepError(f"device {device!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if precision not in PRECISIONS:
        raise StepError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if threads is not None and threads > 0:
        torch.set_num_threads(int(threads))
    if dev.type == "cuda":
        if dev.index is not None:
            torch.cuda.set_device(dev)  # kernels, cuDNN handles and caches on the step's device
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = bool(deterministic)
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic
        torch.cuda.reset_peak_memory_stats(dev)
    return dev


def _resume_settings(
    report: _Report,
    ckpt: Any,
    config: Mapping[str, Any],
    checkpoint_dir: str,
    image_size: int | None,
    max_epochs: int | None,
    seed: int,
    split_seed: int,
    precision: str,
    dev: torch.device,
    defaults: Mapping[str, Any],
) -> tuple[int, int, int, int, int]:
    """(image_size, max_epochs, seed, split_seed, start_epoch) of this step. A resumed config keeps
    what its first step recorded in the checkpoint (asking for other values is a warning, not a
    change: a config never sees its schedule change); a new one takes the asked values or defaults.
    Fills the report's history and checkpoint URIs from the checkpoint."""
    from quicktune.finetune.precision import resolve_precision

    start_epoch = 0
    if ckpt is not None:
        m = ckpt.manifest
        if m.get("config") != dict(config):
            raise StepError(
                f"{checkpoint_dir} holds checkpoints of another config ({m.get('config')}); "
                f"use one checkpoint folder per config"
            )
        for name, asked, stored in (
            ("image_size", image_size, m["image_size"]),
            ("max_epochs", max_epochs, m["max_epochs"]),
            ("seed", seed, m["seed"]),
            ("split_seed", split_seed, m["split_seed"]),
        ):
            if asked is not None and int(asked) != int(stored) and not (name in ("seed", "split_seed") and asked == 0):
                report.warnings.append(f"{name}={asked} ignored: this config was started with {name}={stored}")
        image_size, max_epochs, seed, split_seed = m["image_size"], m["max_epochs"], m["seed"], m["split_seed"]
        stored_precision = m.get("precision")
        if stored_precision not in (None, resolve_precision(precision, dev)):
            report.warnings.append(
                f"precision {resolve_precision(precision, dev)} differs from the {stored_precision} this config's "
                f"checkpoint was trained in: resume is not bit-exact"
            )
        start_epoch = ckpt.epoch
        report.history = list(m.get("history", []))
        report.checkpoint = ckpt.uri
        report.best_checkpoint = best_uri(checkpoint_dir, m)
    else:
        image_size = (
            int(image_size) if image_size else (CPU_IMAGE_SIZE if dev.type == "cpu" else defaults["input_size"])
        )
        max_epochs = int(max_epochs) if max_epochs else DEFAULT_MAX_EPOCHS
    return int(image_size), int(max_epochs), int(seed), int(split_seed), int(start_epoch)


def _verified_memory(memory, checkpoint_dir: str):
    """``memory`` (a warm_cache.TrainingMemory) when the folder's newest checkpoint is exactly the
    one it wrote, else None (its GPU memory freed): the checkpoint decides where training resumes."""
    if memory is None:
        return None
    from quicktune.finetune import checkpoint as ck, warm_cache

    try:
        newest = ck.newest_manifest(checkpoint_dir)
    except Exception as exc:  # noqa: BLE001 - the cold path reads the folder again and reports it
        log.info("cannot check %s against the kept training state: %s", checkpoint_dir, exc)
        newest = None
    if newest == (memory.epoch, memory.manifest_uri, memory.manifest_bytes):
        return memory
    log.info(
        "kept training state of %s (epoch %d) is not its newest checkpoint (%s): restoring from the checkpoint",
        checkpoint_dir,
        memory.epoch,
        "none" if newest is None else f"epoch {newest[0]}",
    )
    del memory
    warm_cache.free_gpu()
    return None


@torch.no_grad()
def _check_input_size(net: torch.nn.Module, model: str, in_chans: int, image_size: int, dev: torch.device) -> None:
    """One forward pass of two blank images in eval mode (no RNG drawn, no statistic updated), so
    that a size the architecture cannot take is an ``invalid`` step at once (ImageSizeError)
    instead of a crash inside the first epoch that the search would retry as transient."""
    was_training = net.training
    net.eval()
    try:
        net(torch.zeros(2, in_chans, image_size, image_size, device=dev))
    except (torch.OutOfMemoryError, MemoryError):
        raise
    except (RuntimeError, AssertionError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ImageSizeError(
            f"model {model} cannot take {image_size} px images ({reason}); "
            f"use a larger --image-size or leave this model out of the space"
        ) from None
    finally:
        net.train(was_training)
