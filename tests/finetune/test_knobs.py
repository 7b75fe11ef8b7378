"""Every knob of the search space changes training (none is silently ignored), plus a specific
check per knob where one is cheap (frozen tensors unchanged, per-group learning rates, penalty
terms > 0, StochNorm layers in place, the lr trajectory of each scheduler, ...).

Real digits images (conftest ``tiny_image_folder``), ``test_vit`` at 32 px for most knobs,
``test_efficientnet`` (BatchNorm) for StochNorm, ``tf_efficientnet_lite0`` with its real
ImageNet weights for co-tuning. One short epoch each. Cost: ~40-80 s on a contended 2-core box.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from quicktune.finetune import checkpoint as ck
from quicktune.finetune.build import build_training
from quicktune.finetune.config import InvalidConfigError, resolve_config
from quicktune.finetune.step import run_step
from quicktune.finetune.train import Regularizers, train_one_epoch

BASE = {"model": "test_vit", "lr": 0.001, "batch_size": 32, "opt": "adamw"}
BN_MODEL = {"models": {"test_efficientnet": {"source": "none"}}}


def _train(data, tmp_path_factory, cfg, to_epoch=1, image_size=32, **kw):
    d = tmp_path_factory.mktemp("ck")
    res = run_step(
        cfg, str(data), to_epoch, str(d), image_size=image_size, max_epochs=10, cache_dir=str(d.parent / "cache"), **kw
    )
    assert res["status"] == "ok", res["message"]
    found = dict(ck.list_checkpoints(str(d)))
    t = ck.load_checkpoint(found[max(found)]).tensors
    return res, {k[6:]: v for k, v in t.items() if k.startswith("model/")}


@pytest.fixture(scope="module")
def baseline(tiny_image_folder, tmp_path_factory):
    return _train(tiny_image_folder, tmp_path_factory, BASE)


def _differs(a, b) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_baseline_is_deterministic(tiny_image_folder, tmp_path_factory, baseline):
    # Without this, "differs from the baseline" would prove nothing.
    _, again = _train(tiny_image_folder, tmp_path_factory, BASE)
    assert not _differs(baseline[1], again)


KNOB_CHANGES = [
    ("layer_decay", {"layer_decay": 0.65}),
    ("sp_reg", {"sp_reg": 0.1, "lr": 0.01}),
    ("delta_reg", {"delta_reg": 0.1}),
    ("bss_reg", {"bss_reg": 0.1}),
    ("mixup", {"mixup": 0.4}),
    ("cutmix", {"cutmix": 1.0}),
    ("smoothing", {"smoothing": 0.1}),
    ("drop", {"drop": 0.3}),
    ("trivial_augment", {"data_augmentation": "trivial_augment"}),
    ("random_augment", {"data_augmentation": "random_augment"}),
    ("auto_augment", {"data_augmentation": "auto_augment"}),
    ("opt_sgd", {"opt": "sgd", "momentum": 0.9}),
    ("opt_momentum", {"opt": "momentum", "momentum": 0.9}),
    ("opt_adamp", {"opt": "adamp"}),
    ("opt_betas", {"opt_betas": "0.0 0.99"}),
    ("lr", {"lr": 0.005}),
    ("weight_decay", {"weight_decay": 0.1, "lr": 0.01}),
    ("clip_grad", {"clip_grad": 0.01}),
    ("batch_size", {"batch_size": 16}),
    ("warmup", {"warmup_epochs": 2, "warmup_lr": 1e-5}),
    ("sched_step", {"sched": "step", "decay_epochs": 1, "decay_rate": 0.1}),
]


@pytest.mark.parametrize("name, change", KNOB_CHANGES, ids=[k for k, _ in KNOB_CHANGES])
def test_knob_changes_training(tiny_image_folder, tmp_path_factory, baseline, name, change):
    # sched_step / warmup act from epoch 1 on (step with decay_epochs=1 decays before epoch 2):
    to_epoch = 2 if name == "sched_step" else 1
    base = baseline if to_epoch == 1 else _train(tiny_image_folder, tmp_path_factory, BASE, to_epoch=2)
    res, weights = _train(tiny_image_folder, tmp_path_factory, {**BASE, **change}, to_epoch=to_epoch)
    assert _differs(base[1], weights), f"{name} did not change the trained weights"


PAIRS = [  # knobs that only act together with another: compare against that other setting
    ("ra_num_ops", {"data_augmentation": "random_augment"}, {"ra_num_ops": 3}),
    ("ra_magnitude", {"data_augmentation": "random_augment"}, {"ra_magnitude": 17}),
    ("auto_augment_policy", {"data_augmentation": "auto_augment", "auto_augment": "v0"}, {"auto_augment": "original"}),
    ("mixup_prob", {"mixup": 0.4}, {"mixup_prob": 0.5}),
    ("momentum", {"opt": "momentum", "momentum": 0.9}, {"momentum": 0.5}),
    ("sgd_vs_momentum", {"opt": "momentum", "momentum": 0.9}, {"opt": "sgd"}),
    ("adam_vs_adamw", {"opt": "adam", "weight_decay": 0.01}, {"opt": "adamw"}),
]


@pytest.mark.parametrize("name, first, second", PAIRS, ids=[p[0] for p in PAIRS])
def test_dependent_knob_changes_training(tiny_image_folder, tmp_path_factory, name, first, second):
    _, a = _train(tiny_image_folder, tmp_path_factory, {**BASE, **first})
    _, b = _train(tiny_image_folder, tmp_path_factory, {**BASE, **first, **second})
    assert _differs(a, b), f"{name} did not change the trained weights"


# ---------------------------------------------------------------------------------------------
# Specific checks, on the objects the step builds (no training loop needed for most)
# ---------------------------------------------------------------------------------------------
def _parts(overrides, model="test_vit", num_classes=10, in_chans=1, image_size=32, max_epochs=10, wc=None):
    cfg = resolve_config({**BASE, "model": model, **overrides})
    from quicktune.finetune.model import model_defaults

    defaults = model_defaults(cfg["model"], wc)
    return cfg, build_training(cfg, defaults, num_classes, in_chans, image_size, torch.device("cpu"), 0, max_epochs, wc)


def _batches(n=4, bs=16, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 1, size, size, generator=g), torch.randint(0, 10, (bs,), generator=g)) for _ in range(n)]


def _initial_state(overrides, **kw):
    _, parts = _parts(overrides, **kw)
    return {k: v.clone() for k, v in parts.net.state_dict().items()}, parts


def test_pct_to_freeze_keeps_first_tensors_fixed(tiny_image_folder, tmp_path_factory):
    init, parts = _initial_state({"pct_to_freeze": 0.6})
    frozen = [n for n, p in parts.net.named_parameters() if not p.requires_grad]
    assert frozen and parts.freeze["frozen_tensors"] == len(frozen)
    names = [n for n, _ in parts.net.named_parameters()]
    assert names[: len(frozen)] == frozen  # counted from the input side
    _, trained = _train(tiny_image_folder, tmp_path_factory, {**BASE, "pct_to_freeze": 0.6})
    for n in frozen:
        assert torch.equal(init[n], trained[n]), n
    assert any(not torch.equal(init[n], trained[n]) for n in names if n not in frozen)


def test_linear_probing_trains_only_the_head(tiny_image_folder, tmp_path_factory):
    init, parts = _initial_state({"linear_probing": True, "pct_to_freeze": 0.2})
    trainable = {n for n, p in parts.net.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    _, trained = _train(tiny_image_folder, tmp_path_factory, {**BASE, "linear_probing": True})
    changed = {n for n, _ in parts.net.named_parameters() if not torch.equal(init[n], trained[n])}
    assert changed == {"head.weight", "head.bias"}


def test_layer_decay_gives_per_layer_learning_rates():
    _, parts = _parts({"layer_decay": 0.65})
    lrs = sorted({round(g["lr"], 12) for g in parts.optimizer.param_groups})
    assert len(lrs) > 3 and lrs[-1] == pytest.approx(0.001)  # the head gets the full lr
    assert lrs[0] < 0.001 * 0.65**2
    _, flat = _parts({})
    assert {g["lr"] for g in flat.optimizer.param_groups} == {0.001}


@pytest.mark.parametrize("knob", ["sp_reg", "delta_reg", "bss_reg"])
def test_regularizer_penalty_is_positive_after_updates(knob):
    _, parts = _parts({knob: 0.01})
    regs: Regularizers = parts.regs
    stats = train_one_epoch(parts.net, _batches(), parts.optimizer, parts.loss_fn, torch.device("cpu"), regs)
    assert stats["train_steps"] == 4
    x = _batches(1)[0][0]
    if knob == "sp_reg":
        assert regs.sp is not None and float(regs.sp.penalty().detach()) > 0
    elif knob == "delta_reg":
        from quicktune.finetune.model import forward_with_features

        with torch.no_grad():
            _, feats = forward_with_features(parts.net.eval(), x)
            assert regs.delta is not None and float(regs.delta(feats, x)) > 0
        # the source model is frozen and stays at the starting weights
        assert all(not p.requires_grad for p in regs.delta.source.parameters())
    else:
        from quicktune.finetune.model import forward_with_features

        with torch.no_grad():
            _, feats = forward_with_features(parts.net, x)
            assert regs.bss is not None and float(regs.bss.penalty(feats)) > 0


def test_stoch_norm_replaces_batchnorm_and_changes_training(tiny_image_folder, tmp_path_factory):
    from quicktune.finetune.regularizers import StochNorm2d, _stoch_norm_act_class

    _, plain = _parts({}, model="test_efficientnet", wc=BN_MODEL)
    _, parts = _parts({"stoch_norm": True}, model="test_efficientnet", wc=BN_MODEL)
    stoch_types = (StochNorm2d, _stoch_norm_act_class()[1])
    bns = [m for m in plain.net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    converted = [m for m in parts.net.modules() if isinstance(m, stoch_types)]
    assert parts.stoch_norm_layers == len(bns) == len(converted) > 0
    # same state-dict keys as the plain model (exported models load into the plain architecture)
    assert set(parts.net.state_dict()) == set(plain.net.state_dict())
    # eval: identical to BatchNorm; train: a random mix of batch and moving statistics
    x = torch.randn(8, 1, 32, 32)
    parts.net.load_state_dict(plain.net.state_dict())
    torch.testing.assert_close(parts.net.eval()(x), plain.net.eval()(x))
    parts.net.train()
    torch.manual_seed(1)
    y1 = parts.net(x)
    torch.manual_seed(2)
    y2 = parts.net(x)
    assert not torch.allclose(y1, y2)
    base = _train(tiny_image_folder, tmp_path_factory, {**BASE, "model": "test_efficientnet"}, weights_config=BN_MODEL)
    sn = _train(
        tiny_image_folder,
        tmp_path_factory,
        {**BASE, "model": "test_efficientnet", "stoch_norm": True},
        weights_config=BN_MODEL,
    )
    assert _differs(base[1], sn[1])


@pytest.mark.slow
def test_cotuning_uses_pretrained_source_head(tiny_image_folder, tmp_path_factory):
    lite = {"model": "tf_efficientnet_lite0", "lr": 0.001, "batch_size": 32, "opt": "adamw"}
    _, parts = _parts({"cotuning_reg": 1.0}, model="tf_efficientnet_lite0", image_size=16)
    regs = parts.regs
    assert regs.source_head is not None and regs.source_head.out_features == 1000
    in_opt = {id(p) for g in parts.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in regs.source_head.parameters())  # the source head trains too
    base_res, base_w = _train(tiny_image_folder, tmp_path_factory, lite, image_size=16)
    res, w = _train(tiny_image_folder, tmp_path_factory, {**lite, "cotuning_reg": 1.0}, image_size=16)
    assert not res["warnings"]
    assert _differs(base_w, w)
    found = dict(ck.list_checkpoints(res["checkpoint"].rsplit("/", 1)[0]))
    t = ck.load_checkpoint(found[max(found)]).tensors
    rel = t["cotuning/relationship"]
    assert tuple(rel.shape) == (10, 1000)
    torch.testing.assert_close(rel.sum(1), torch.ones(10))
    assert any(k.startswith("source_head/") for k in t)


def test_cotuning_without_pretrained_head_warns(tiny_image_folder, tmp_path_factory):
    res, _ = _train(tiny_image_folder, tmp_path_factory, {**BASE, "cotuning_reg": 1.0})
    assert any("cotuning_reg" in w and "ignored" in w for w in res["warnings"])


def test_optimizers_are_timms():
    import timm.optim

    expect = {
        "sgd": (torch.optim.SGD, True),
        "momentum": (torch.optim.SGD, False),
        "adam": (torch.optim.Adam, None),
        "adamw": (torch.optim.AdamW, None),
        "adamp": (timm.optim.AdamP, None),
    }
    for name, (cls, nesterov) in expect.items():
        _, parts = _parts({"opt": name, "momentum": 0.8, "opt_betas": "0.0 0.99"})
        opt = parts.optimizer
        assert isinstance(opt, cls), name
        g = opt.param_groups[0]
        if nesterov is not None:
            assert g["nesterov"] is nesterov and g["momentum"] == 0.8
        else:
            assert tuple(g["betas"]) == (0.0, 0.99)
    _, plain = _parts({"opt": "sgd", "momentum": 0.0})  # Nesterov needs momentum: plain SGD
    assert plain.optimizer.param_groups[0]["momentum"] == 0.0


def _lr_trajectory(overrides, metrics, max_epochs=10):
    _, parts = _parts(overrides, max_epochs=max_epochs)
    opt, sched = parts.optimizer, parts.scheduler
    lrs = [opt.param_groups[0]["lr"]]
    for epoch, m in enumerate(metrics, start=1):
        sched.step(epoch, m)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def test_scheduler_trajectories():
    flat = [0.5] * 8
    cos = _lr_trajectory({"sched": "cosine"}, flat)
    assert cos[0] == pytest.approx(0.001) and all(a > b for a, b in itertools.pairwise(cos))
    step = _lr_trajectory({"sched": "step", "decay_epochs": 2, "decay_rate": 0.5}, flat)
    assert (
        step[:2] == pytest.approx([0.001] * 2)
        and step[2] == pytest.approx(0.0005)
        and step[4] == pytest.approx(0.00025)
    )
    multi = _lr_trajectory({"sched": "multistep", "decay_epochs": 2, "decay_rate": 0.1}, flat)
    # timm's MultiStepLRScheduler counts milestones as bisect_right(milestones, t + 1): with
    # decay_epochs=2 the 2nd epoch already runs decayed, the 4th decayed twice (StepLR: t // d).
    assert multi[0] == pytest.approx(0.001) and multi[1] == pytest.approx(1e-4) and multi[3] == pytest.approx(1e-5)
    assert multi[2] == pytest.approx(1e-4) and multi[7] == pytest.approx(1e-5)  # only two milestones: d and 2d
    plateau = _lr_trajectory({"sched": "plateau", "patience_epochs": 1}, [0.5, 0.5, 0.5, 0.5])
    assert plateau[0] == pytest.approx(0.001) and min(plateau) < 0.001
    rising = _lr_trajectory({"sched": "plateau", "patience_epochs": 1}, [0.1, 0.2, 0.3, 0.4])
    assert rising == pytest.approx([0.001] * 5)  # improving validation score: no decay
    warm = _lr_trajectory({"sched": "cosine", "warmup_epochs": 2, "warmup_lr": 1e-5}, flat)
    assert warm[0] == pytest.approx(1e-5) and warm[0] < warm[1] < warm[2] and warm[2] == pytest.approx(cos[2])
    assert _lr_trajectory({"sched": "cosine", "warmup_epochs": 2, "warmup_lr": 1e-6}, flat)[0] == pytest.approx(1e-6)


def test_mixup_and_losses_are_timms():
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    _, p = _parts({"mixup": 0.4, "cutmix": 1.0, "mixup_prob": 0.5, "smoothing": 0.1})
    assert isinstance(p.mixup, Mixup) and isinstance(p.loss_fn, SoftTargetCrossEntropy)
    assert p.mixup.mixup_alpha == 0.4 and p.mixup.cutmix_alpha == 1.0 and p.mixup.mix_prob == 0.5
    assert p.mixup.label_smoothing == 0.1
    _, p = _parts({"smoothing": 0.1})
    assert p.mixup is None and isinstance(p.loss_fn, LabelSmoothingCrossEntropy)
    _, p = _parts({"mixup": 0.4, "mixup_prob": 0.0})
    assert p.mixup is None


def test_drop_rate_reaches_timm():
    _, p = _parts({"drop": 0.3})
    drops = [m.p for m in p.net.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    assert drops == [0.3] and p.net.head_drop.p == 0.3  # the classifier's dropout only
    _, p = _parts({})
    assert not [m.p for m in p.net.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]


def test_config_defaults_and_errors():
    full = resolve_config({"model": "test_vit"})
    assert full["opt"] == "adamw" and full["clip_grad"] == 0.0 and full["data_augmentation"] == "none"
    with pytest.raises(InvalidConfigError, match="mixup_prob"):
        resolve_config({"model": "test_vit", "mixup_prob": 2})
    with pytest.raises(InvalidConfigError, match="batch_size"):
        resolve_config({"model": "test_vit", "batch_size": 0})
    # every knob of both built-in spaces is understood, with the spaces' value types
    from quicktune.space import load_space

    for ref in ("builtin:paper", "builtin:cpu"):
        space = load_space(ref)
        import numpy as np

        rng = np.random.default_rng(0)
        for _ in range(50):
            resolve_config(
                space.sample(rng) if hasattr(space, "sample") else {p.name: p.sample(rng) for p in space.params}
            )


def _cpu_models():
    from quicktune.space import load_space

    return list(load_space("builtin:cpu")["model"].choices)


ALL_ON = {
    "pct_to_freeze": 0.2,
    "layer_decay": 0.75,
    "sp_reg": 0.01,
    "delta_reg": 0.01,
    "bss_reg": 0.01,
    "cotuning_reg": 1.0,
    "stoch_norm": True,
    "mixup": 0.4,
    "cutmix": 0.5,
    "mixup_prob": 1.0,
    "smoothing": 0.1,
    "drop": 0.2,
    "clip_grad": 1.0,
    "opt": "adamp",
    "opt_betas": "0.9 0.99",
    "weight_decay": 0.01,
    "sched": "multistep",
    "decay_epochs": 2,
    "decay_rate": 0.5,
    "warmup_epochs": 1,
    "warmup_lr": 1e-6,
    "batch_size": 16,
}


@pytest.mark.parametrize("model", _cpu_models())
def test_every_cpu_hub_model_takes_every_knob(model):
    # The meta-dataset campaign samples any knob with any model of the CPU hub: each must build and train.
    cfg, parts = _parts(ALL_ON, model=model, image_size=32)
    regs = parts.regs
    assert regs.sp is not None and regs.delta is not None and regs.bss is not None
    if model == "tf_efficientnet_lite0":  # the one model with real pretrained weights offline
        assert regs.source_head is not None
    x, y = _batches(1, bs=8)[0]
    regs.relationship = torch.full((10, 1000), 1e-3) if regs.source_head is not None else None
    stats = train_one_epoch(
        parts.net,
        [(x, y)],
        parts.optimizer,
        parts.loss_fn,
        torch.device("cpu"),
        regs,
        mixup=parts.mixup,
        num_classes=10,
        clip_grad=1.0,
    )
    assert stats["train_steps"] == 1 and stats["train_loss"] == stats["train_loss"]  # finite
    parts.scheduler.step(1, 0.5)


def test_every_classifier_timm_resets_stays_trainable():
    # Distilled ViTs (and VOLO's aux_head) have two classifiers; both are new for the target classes.
    import timm

    from quicktune.finetune.freezing import apply_freezing

    net = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=10, img_size=32)
    apply_freezing(net, 1.0, linear_probing=True)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {
        "head.weight",
        "head.bias",
        "head_dist.weight",
        "head_dist.bias",
    }
