"""The epoch loop of one finetuning step: train, evaluate, checkpoint, record, epoch by epoch.

``step.py`` decides *what* to train (config, checkpoint, data, device) and builds the parts; this
module runs the epochs once everything is in place. It is where a step's learning curve and its
costs are measured, so the measuring rules live here:

- an epoch's ``cost`` is wall seconds of train + validation; ``train_cpu_seconds`` and
  ``eval_cpu_seconds`` are the step process's CPU time minus that of the threads working beside
  the epoch (the dataset freshness check, checkpoint writes), which other load on a shared machine
  does not inflate;
- a loss that explodes is a ``DivergedError`` *before* the epoch is saved, so the last good
  checkpoint stays the newest;
- the checkpoint's tensors are written while the epoch is evaluated; the manifest follows.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from quicktune.finetune.build import seed_everything
from quicktune.finetune.state import CheckpointMeta, checkpoint_tensors, rng_state
from quicktune.finetune.threadcpu import cpu_seconds

log = logging.getLogger(__name__)

__all__ = ["EpochLoop", "Marks", "best_of", "best_uri", "join_data_check"]


class StepReporting(Protocol):
    """What the loop writes into the step's report (``step._Report``)."""

    epochs: list[dict[str, Any]]
    history: list[dict[str, Any]]
    warnings: list[str]
    checkpoint: str | None
    best_checkpoint: str | None
    extra: dict[str, Any]


class Marks:
    """Accumulates wall and CPU time per phase (for RESULT["phases"] and the overhead benchmark)."""

    def __init__(self, phases: dict[str, Any]):
        self.phases, self.t, self.c = phases, time.perf_counter(), time.process_time()
        self.cpu: dict[str, float] = phases.setdefault("cpu", {})

    def __call__(self, name: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.phases[name] = round(self.phases.get(name, 0.0) + now - self.t, 6)
        self.cpu[name] = round(self.cpu.get(name, 0.0) + cpu - self.c, 6)
        self.t, self.c = now, cpu


def join_data_check(check: Any, report: StepReporting) -> None:
    """Wait for a reused dataset's freshness check (warm_cache.DatasetCheck); warn if it changed."""
    if check is not None:
        warning = check.result()
        if warning:
            report.warnings.append(warning)
            log.warning("%s", warning)


def first_epoch_task_loss(history: list[dict[str, Any]]) -> float | None:
    """Epoch 1's mean task loss (its ``train_loss`` in checkpoints older than ``train_task_loss``)."""
    for r in history:
        if int(r.get("epoch", 0)) == 1:
            value = r.get("train_task_loss", r.get("train_loss"))
            return None if value is None else float(value)
    return None


def best_of(history: list[dict[str, Any]]) -> tuple[int | None, float | None]:
    """(epoch, score) of the best validation score in ``history`` (the first on ties)."""
    best_epoch, best_score = None, None
    for r in history:
        if best_score is None or r["score"] > best_score:
            best_epoch, best_score = r["epoch"], r["score"]
    return best_epoch, best_score


def best_uri(directory: str, manifest: Mapping[str, Any]) -> str | None:
    """The manifest URI of the best epoch's checkpoint in ``directory`` (None before any epoch)."""
    from quicktune import storage

    e = manifest.get("best_epoch")
    return None if e is None else storage.join(directory, f"epoch-{int(e):04d}.json")


@dataclass
class EpochLoop:
    """Trains ``parts`` from ``start_epoch`` + 1 to a target epoch, one checkpoint per epoch.

    After :meth:`run`, ``uri``, ``manifest_bytes`` and ``rng`` describe the newest checkpoint (what
    a warm process keeps in memory); ``rng`` is None when no epoch was trained."""

    report: StepReporting
    parts: Any  # build.TrainingParts
    cfg: Mapping[str, Any]
    dev: torch.device
    train_set: Any  # loader.ImageSet
    val_set: Any
    num_classes: int
    num_workers: int
    eval_batch_size: int
    checkpoint_dir: str
    seed: int
    run_meta: CheckpointMeta
    mark: Callable[[str], None]
    data_check: Any = None  # warm_cache.DatasetCheck of a reused dataset, joined before the first save
    uri: str = ""
    manifest_bytes: bytes = b""
    rng: Any = None
    _beside: list[Any] = field(default_factory=list)

    def run(self, start_epoch: int, to_epoch: int) -> None:
        """Train epochs ``start_epoch + 1 .. to_epoch``; every finished epoch is in the report."""
        self._beside = [self.data_check.thread] if self.data_check is not None else []
        self.report.extra["phases"].setdefault("overlapped", {})
        best_epoch, best_score = best_of(self.report.history)
        first_loss = first_epoch_task_loss(self.report.history)
        for epoch in range(start_epoch + 1, to_epoch + 1):
            best_epoch, best_score, first_loss = self._epoch(epoch, best_epoch, best_score, first_loss)

    def _epoch(
        self, epoch: int, best_epoch: int | None, best_score: float | None, first_loss: float | None
    ) -> tuple[int | None, float | None, float | None]:
        from quicktune.finetune import checkpoint as ck, train as train_mod
        from quicktune.finetune.divergence import loss_exploded
        from quicktune.finetune.loader import epoch_seed, eval_batches, train_batches

        parts, dev, report, beside = self.parts, self.dev, self.report, self._beside
        optimizer = parts.optimizer
        bs = int(self.cfg["batch_size"])
        seed_everything(epoch_seed(self.seed, epoch))
        lr = float(optimizer.param_groups[0]["lr"]) / float(optimizer.param_groups[0].get("lr_scale", 1.0))
        t0, c0, b0 = time.perf_counter(), time.process_time(), cpu_seconds(beside)
        stats = train_mod.train_one_epoch(
            parts.net,
            train_batches(self.train_set, bs, self.seed, epoch, self.num_workers, pin_memory=dev.type == "cuda"),
            optimizer,
            parts.loss_fn,
            dev,
            parts.regs,
            mixup=parts.mixup,
            num_classes=self.num_classes,
            clip_grad=float(self.cfg["clip_grad"]),
            scaler=parts.scaler,
            precision=parts.precision,
        )
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t1, c1, b1 = time.perf_counter(), time.process_time(), cpu_seconds(beside)
        self.mark("train")
        report.extra["scaler_skipped_steps"] += int(stats["scaler_skipped_steps"])
        exploded = loss_exploded(stats["train_task_loss"], first_loss, self.num_classes)
        if exploded is not None:  # this epoch is not saved: the last good checkpoint stays
            raise train_mod.DivergedError(f"epoch {epoch}: {exploded} (lr={lr:.3g}, {parts.precision})")
        if first_loss is None:
            first_loss = stats["train_task_loss"]
        # the checkpoint's tensors are written while the epoch is evaluated (evaluation reads the
        # weights, never writes them); the manifest follows once they are stored (ck.TensorsWrite)
        rng = rng_state(dev)
        write = ck.TensorsWrite(self.checkpoint_dir, epoch, checkpoint_tensors(parts, rng))
        beside.append(write.thread)
        try:
            ev = train_mod.evaluate(
                parts.net, eval_batches(self.val_set, self.eval_batch_size), dev, precision=parts.precision
            )
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t2, c2, b2 = time.perf_counter(), time.process_time(), cpu_seconds(beside)
            self.mark("eval")
            if not math.isfinite(ev["loss"]):
                raise train_mod.DivergedError(
                    f"epoch {epoch}: the validation loss is {ev['loss']} (train loss {stats['train_loss']:.4g}, "
                    f"lr={lr:.3g}, {parts.precision})"
                )
            parts.scheduler.step(epoch, ev["top1"])
            record = {
                "epoch": epoch,
                "score": ev["top1"],
                "top5": ev["top5"],
                "val_loss": ev["loss"],
                "train_loss": stats["train_loss"],
                "train_task_loss": stats["train_task_loss"],
                "scaler_skipped_steps": int(stats["scaler_skipped_steps"]),
                "train_seconds": round(t1 - t0, 6),
                "eval_seconds": round(t2 - t1, 6),
                # CPU seconds of this process (all its threads but those working beside the epoch):
                # unlike wall time, not inflated when other work shares the machine, so campaigns on
                # shared CPUs keep a comparable cost
                "train_cpu_seconds": round((c1 - c0) - (b1 - b0), 6),
                "eval_cpu_seconds": round((c2 - c1) - (b2 - b1), 6),
                "lr": lr,
                "train_images": stats["train_images"],
            }
            record["cost"] = record["train_seconds"] + record["eval_seconds"]
            if best_score is None or record["score"] > best_score:
                best_epoch, best_score = epoch, record["score"]
            history = report.history + [record]
            self.mark("scheduler")
            if self.data_check is not None:  # a reused dataset's freshness check, joined before the first save
                join_data_check(self.data_check, report)
                self.data_check = None
                self.mark("data")
            meta = replace(self.run_meta, history=history, best_epoch=best_epoch, best_score=best_score)
            uri, manifest_bytes = write.commit(meta.manifest(parts, rng))
        except BaseException:
            write.abandon()
            raise
        overlapped = report.extra["phases"].setdefault("overlapped", {})
        overlapped["checkpoint_tensors"] = round(overlapped.get("checkpoint_tensors", 0.0) + write.seconds, 6)
        ck.prune(self.checkpoint_dir, {epoch, best_epoch})
        self.mark("checkpoint_save")
        report.history = history
        report.epochs.append(record)
        report.checkpoint = uri
        report.best_checkpoint = best_uri(self.checkpoint_dir, {"best_epoch": best_epoch})
        self.uri, self.manifest_bytes, self.rng = uri, manifest_bytes, rng
        log.info(
            "epoch %d: val top-1 %.4f, loss %.4f, train loss %.4f, %.1fs",
            epoch,
            ev["top1"],
            ev["loss"],
            stats["train_loss"],
            record["cost"],
        )
        return best_epoch, best_score, first_loss
