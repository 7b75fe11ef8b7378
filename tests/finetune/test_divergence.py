"""When a config is ``diverged``: the pure rules (no CUDA needed), then real steps on real digits.

The real cases: ``lr=1e6`` SGD on the pretrained ``tf_efficientnet_lite0`` (issue 16: train and
val losses of ~1e10, all finite, once reported ``ok``) and the same model at a sane lr, which must
stay ``ok`` (the rule must not fire on ordinary training). Cost: ~30 s on a contended 2-core box.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from quicktune.finetune.divergence import (
    CHANCE_FACTOR,
    EXPLOSION_FACTOR,
    MAX_NONFINITE_STREAK,
    MIN_SCALE,
    NonFiniteGuard,
    loss_exploded,
)
from quicktune.finetune.result import validate_result
from quicktune.finetune.step import run_step

LOG10 = math.log(10)


# --------------------------------------------------------------------------------------------
# the exploded-loss rule
# --------------------------------------------------------------------------------------------
def test_a_loss_past_the_chance_bound_is_diverged_even_in_the_first_epoch():
    assert loss_exploded(1.1e10, None, 10) is not None
    assert loss_exploded(CHANCE_FACTOR * LOG10 * 1.01, None, 10) is not None
    assert loss_exploded(CHANCE_FACTOR * LOG10 * 0.99, None, 10) is None
    # the bound scales with the classes: 1000 classes allow a larger loss than 2
    assert loss_exploded(200.0, None, 2) is not None and loss_exploded(200.0, None, 1000) is None
    assert "log(10)" in loss_exploded(1e4, None, 10)
    assert loss_exploded(float("nan"), None, 10) is not None and loss_exploded(float("inf"), 2.0, 10) is not None


def test_a_loss_past_the_multiple_of_the_first_epoch_is_diverged_only_when_worse_than_chance():
    first = 0.05  # a pretrained model on an easy task
    # 110x the first epoch and worse than a uniform guess (log 10 = 2.30): diverged
    assert loss_exploded(EXPLOSION_FACTOR * first * 1.1, first, 10) is not None
    assert loss_exploded(EXPLOSION_FACTOR * first * 0.9, first, 10) is None  # 90x: not yet
    # 100x a tiny first-epoch loss that is still better than chance: a spike, not divergence
    assert loss_exploded(0.2, 0.001, 10) is None
    assert loss_exploded(2.0, 0.5, 10) is None  # 4x: ordinary
    assert loss_exploded(60.0, 0.5, 10) is not None  # 120x and far worse than chance
    assert "first epoch" in loss_exploded(60.0, 0.5, 10)


# --------------------------------------------------------------------------------------------
# the non-finite rule: a CUDA-free unit test of the fp16 policy
# --------------------------------------------------------------------------------------------
def test_fp16_overflow_is_skipped_not_diverged():
    guard = NonFiniteGuard(scaled=True)
    scale = 2.0**16
    # the first steps overflow while the scaler searches its level: finite loss, skipped steps
    for _ in range(6):
        scale /= 2
        assert guard.observe(True, step_skipped=True, scale=scale) is None
    # a few non-finite losses (an outlier batch), each skipped, then training goes on
    for _ in range(MAX_NONFINITE_STREAK - 1):
        scale /= 2
        assert guard.observe(False, step_skipped=True, scale=max(scale, MIN_SCALE)) is None
    for _ in range(50):
        assert guard.observe(True, step_skipped=False, scale=max(scale, MIN_SCALE)) is None
    assert guard.skipped == 6 + MAX_NONFINITE_STREAK - 1 and guard.nonfinite == MAX_NONFINITE_STREAK - 1
    assert guard.observe(False, step_skipped=True, scale=64.0) is None  # the streak was reset by finite losses


def test_a_non_finite_loss_that_persists_after_the_skips_is_diverged():
    guard = NonFiniteGuard(scaled=True)
    reasons = [guard.observe(False, step_skipped=True, scale=2.0**10) for _ in range(MAX_NONFINITE_STREAK)]
    assert reasons[:-1] == [None] * (MAX_NONFINITE_STREAK - 1)
    assert reasons[-1] is not None and f"{MAX_NONFINITE_STREAK} consecutive" in reasons[-1]


def test_a_scale_below_the_floor_is_diverged():
    guard = NonFiniteGuard(scaled=True)
    scale, reason = 2.0**16, None
    steps = 0
    while reason is None:
        scale /= 2
        steps += 1
        reason = guard.observe(True, step_skipped=True, scale=scale)  # finite losses, overflowing gradients
        assert steps < 100
    assert steps == 17 and scale < MIN_SCALE and "scale" in reason and guard.skipped == 17


def test_without_a_scaler_the_first_non_finite_loss_is_diverged():
    guard = NonFiniteGuard(scaled=False)
    assert guard.observe(True) is None
    assert guard.observe(False) is not None
    assert guard.skipped == 0


# --------------------------------------------------------------------------------------------
# real steps
# --------------------------------------------------------------------------------------------
LITE0 = {"model": "tf_efficientnet_lite0", "opt": "sgd", "momentum": 0.9, "batch_size": 16}


@pytest.fixture(scope="module")
def small_digits(tiny_image_folder, tmp_path_factory) -> Path:
    """12 real digits images per class (120: 72 train, 24 val) from the conftest folder."""
    dest = tmp_path_factory.mktemp("small") / "digits"
    for cls in sorted(p for p in Path(tiny_image_folder).iterdir() if p.is_dir()):
        (dest / cls.name).mkdir(parents=True)
        for f in sorted(cls.glob("*.png"))[:12]:
            shutil.copy(f, dest / cls.name / f.name)
    return dest


def _step(cfg, data, ckdir: Path, **kw):
    return run_step(
        cfg, str(data), 2, str(ckdir), image_size=32, max_epochs=10, cache_dir=str(ckdir.parent / "cache"), **kw
    )


def test_lr_1e6_sgd_on_pretrained_lite0_is_diverged(small_digits, tmp_path):
    """Issue 16's case on real digits: finite losses of ~1e9-1e10, top-1 at chance, was ``ok``."""
    out = tmp_path / "r.json"
    res = _step(dict(LITE0, lr=1e6), small_digits, tmp_path / "ck", out=str(out))
    assert res["status"] == "diverged", res
    assert "log(10)" in res["message"] and "epoch 1" in res["message"], res["message"]
    assert res["epochs"] == [] and res["checkpoint"] is None  # the exploded epoch is not saved
    assert not (tmp_path / "ck").exists() or not list((tmp_path / "ck").iterdir())
    on_disk = json.loads(out.read_text())
    validate_result(on_disk)
    assert on_disk["status"] == "diverged" and on_disk["precision"] == "fp32"


def test_the_same_model_at_a_sane_lr_is_ok(small_digits, tmp_path):
    res = _step(dict(LITE0, lr=0.01), small_digits, tmp_path / "ck")
    assert res["status"] == "ok", res["message"]
    first = res["epochs"][0]["train_task_loss"]
    assert all(math.isfinite(e["train_task_loss"]) and e["train_task_loss"] < 2 * first for e in res["epochs"])
    assert res["epochs"][0]["train_task_loss"] == pytest.approx(res["epochs"][0]["train_loss"])  # no regularizer
