"""What a finetuning step trains with: network, regularizers, optimizer, scheduler, loss, mixup.

Why a module of its own: the same construction serves a config's first step, every resumed step
(which then loads the checkpoint's states into the parts) and the knob tests, and it is where
the config's knobs become objects. :func:`build_training` returns a typed :class:`TrainingParts`
instead of a dict, so that a reader (and a type checker) sees what a step holds.

Construction is deterministic: the network's initialisation is seeded from the step seed alone
(:func:`epoch_seed_init`), so a resumed step builds the same parts before loading the states.
"""

from __future__ import annotations

import copy
import random
import warnings as warnings_mod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from quicktune.finetune.config import parse_betas

if TYPE_CHECKING:  # pragma: no cover
    from quicktune.finetune.train import Regularizers

__all__ = ["TrainingParts", "build_training", "compute_relationship", "epoch_seed_init", "seed_everything"]


@dataclass
class TrainingParts:
    """Everything one step trains with, built by :func:`build_training`.

    ``net``/``optimizer``/``scheduler``/``scaler``/``regs`` carry the state a checkpoint saves and
    a resumed step restores (:mod:`quicktune.finetune.state`); the rest is fixed by the config."""

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a timm scheduler (PlateauLRScheduler keeps extra state, see state.scheduler_state)
    scaler: torch.amp.GradScaler | None  # fp16 only (quicktune.finetune.precision)
    regs: Regularizers
    mixup: Any | None  # timm.data.Mixup when mixup/cutmix are on
    loss_fn: Any
    precision: str  # fp32, fp16 or bf16 (resolved: never auto)
    device: torch.device  # the step's device (cuda:N: its RNG state is the one a checkpoint saves)
    freeze: dict[str, int] = field(default_factory=dict)  # apply_freezing's counts
    stoch_norm_layers: int = 0
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)


def seed_everything(value: int) -> None:
    """Seed python, numpy and torch at once (every epoch and the initialisation reseed from the step seed)."""
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def build_training(
    cfg: Mapping[str, Any],
    defaults: Mapping[str, Any],
    num_classes: int,
    in_chans: int,
    image_size: int,
    dev: torch.device,
    seed: int,
    max_epochs: int,
    weights_config: str | Mapping[str, Any] | None,
    warnings: list[str] | None = None,
    precision: str = "auto",
) -> TrainingParts:
    """Network (seeded init), StochNorm, freezing, regularizers, optimizer, scheduler, loss, mixup.

    Built the same way on every step of a config (a resumed step then loads the checkpoint's
    states into these parts, see :mod:`quicktune.finetune.state`). Knobs that cannot apply
    (co-tuning without a pretrained head, StochNorm without BatchNorm) append to ``warnings``.
    ``precision`` (fp32/fp16/bf16/auto, see :mod:`quicktune.finetune.precision`) decides the
    autocast dtype and whether a GradScaler is made."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    from quicktune.finetune.freezing import apply_freezing, head_parameter_names
    from quicktune.finetune.model import build_network
    from quicktune.finetune.regularizers import (
        BatchSpectralShrinkage,
        DeltaRegularization,
        SPRegularization,
        convert_to_stoch_norm,
    )
    from quicktune.finetune.train import Regularizers

    warnings = warnings if warnings is not None else []
    seed_everything(epoch_seed_init(seed))
    want_source = cfg["cotuning_reg"] > 0
    net, source_head = build_network(
        cfg["model"],
        num_classes,
        in_chans,
        image_size,
        float(cfg["drop"]),
        pretrained=bool(defaults["pretrained"]),
        defaults=defaults,
        weights_config=weights_config,
        keep_source_head=want_source,
    )
    if want_source and source_head is None:
        warnings.append(
            f"cotuning_reg={cfg['cotuning_reg']} ignored: {cfg['model']} has no pretrained source head "
            f"(random init in this hub)"
        )
    stoch = 0
    if cfg["stoch_norm"]:
        stoch = convert_to_stoch_norm(net)
        if stoch == 0:
            warnings.append(f"stoch_norm ignored: {cfg['model']} has no BatchNorm layers")
    net.to(dev)
    if source_head is not None:
        source_head.to(dev)
    freeze = apply_freezing(net, float(cfg["pct_to_freeze"]), bool(cfg["linear_probing"]))

    regs = Regularizers()
    head = head_parameter_names(net)
    if cfg["sp_reg"] > 0:
        regs.sp = SPRegularization([(n, p) for n, p in net.named_parameters() if n not in head], cfg["sp_reg"])
    if cfg["delta_reg"] > 0:
        regs.delta = DeltaRegularization(copy.deepcopy(net), cfg["delta_reg"])
    if cfg["bss_reg"] > 0:
        regs.bss = BatchSpectralShrinkage(cfg["bss_reg"])
    if want_source and source_head is not None:
        regs.cotuning_weight, regs.source_head = float(cfg["cotuning_reg"]), source_head

    opt, momentum = cfg["opt"], float(cfg["momentum"])
    if opt == "sgd" and momentum == 0:
        opt = "momentum"  # Nesterov needs momentum > 0: 'sgd' with momentum 0 is plain SGD
    kwargs: dict[str, Any] = {"opt": opt, "lr": float(cfg["lr"]), "weight_decay": float(cfg["weight_decay"])}
    if opt in ("sgd", "momentum"):
        kwargs["momentum"] = momentum
    else:
        kwargs["betas"] = parse_betas(cfg["opt_betas"])
    if cfg["layer_decay"] > 0:
        kwargs["layer_decay"] = float(cfg["layer_decay"])
    optimizer = create_optimizer_v2(net, **kwargs)
    if regs.source_head is not None:
        optimizer.add_param_group(
            {
                "params": list(regs.source_head.parameters()),
                "lr": float(cfg["lr"]),
                "weight_decay": float(cfg["weight_decay"]),
            }
        )
    sched_kwargs: dict[str, Any] = dict(
        sched=cfg["sched"],
        num_epochs=int(max_epochs),
        warmup_epochs=int(cfg["warmup_epochs"]),
        warmup_lr=float(cfg["warmup_lr"]),
        min_lr=0.0,
        decay_rate=float(cfg["decay_rate"]),
        decay_epochs=int(cfg["decay_epochs"]),
        decay_milestones=[int(cfg["decay_epochs"]), 2 * int(cfg["decay_epochs"])],
        patience_epochs=int(cfg["patience_epochs"]),
        plateau_mode="max",
        step_on_epochs=True,
    )
    with warnings_mod.catch_warnings():
        # timm deprecates PlateauLRScheduler because *its* state_dict drops the patience counters;
        # this step saves the full ReduceLROnPlateau state itself (see quicktune.finetune.state.scheduler_state).
        warnings_mod.filterwarnings("ignore", message="PlateauLRScheduler is deprecated", category=FutureWarning)
        scheduler, _ = create_scheduler_v2(optimizer, **sched_kwargs)

    mixup = None
    if (cfg["mixup"] > 0 or cfg["cutmix"] > 0) and cfg["mixup_prob"] > 0:
        mixup = Mixup(
            mixup_alpha=float(cfg["mixup"]),
            cutmix_alpha=float(cfg["cutmix"]),
            prob=float(cfg["mixup_prob"]),
            switch_prob=0.5,
            mode="batch",
            label_smoothing=float(cfg["smoothing"]),
            num_classes=num_classes,
        )
        loss_fn: Any = SoftTargetCrossEntropy()
    elif cfg["smoothing"] > 0:
        loss_fn = LabelSmoothingCrossEntropy(smoothing=float(cfg["smoothing"]))
    else:
        loss_fn = torch.nn.CrossEntropyLoss()
    from quicktune.finetune.precision import make_scaler, resolve_precision

    precision = resolve_precision(precision, dev)
    scaler = make_scaler(dev, precision)
    return TrainingParts(
        net=net,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        regs=regs,
        mixup=mixup,
        loss_fn=loss_fn,
        precision=precision,
        device=dev,
        freeze=freeze,
        stoch_norm_layers=stoch,
        optimizer_kwargs=kwargs,
        scheduler_kwargs=sched_kwargs,
    )


def epoch_seed_init(seed: int) -> int:
    """The seed of a config's network initialisation (an "epoch 0" distinct from every epoch's seed)."""
    from quicktune.finetune.loader import epoch_seed

    return epoch_seed(seed, 0, "init")


@torch.no_grad()
def compute_relationship(
    net: torch.nn.Module,
    source_head: torch.nn.Module,
    train_set: Any,
    num_classes: int,
    dev: torch.device,
    batch_size: int,
) -> torch.Tensor:
    """Co-tuning's p(y_source | y_target) from the pretrained model on the (unaugmented) training images."""
    from quicktune.finetune.model import apply_source_head
    from quicktune.finetune.regularizers import category_relationship

    was_training = net.training
    net.eval()
    source_head.eval()
    probs = []
    for i in range(0, len(train_set), batch_size):
        x = train_set.plain_batch(torch.arange(i, min(len(train_set), i + batch_size))).to(dev)
        feats = net.forward_head(net.forward_features(x), pre_logits=True)
        probs.append(torch.softmax(apply_source_head(source_head, feats).float(), dim=1).cpu())
    net.train(was_training)
    return category_relationship(torch.cat(probs), train_set.labels, num_classes)
