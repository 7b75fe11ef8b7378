"""Precision (fp32 / fp16 + GradScaler / bf16) and the step's device index.

Real steps on real digits (conftest ``tiny_image_folder``) with test_vit at 16 px, in fp16 and
bf16 on the CPU (torch autocasts there too): the GradScaler path, its skipped steps and its
checkpointed state are the ones a GPU runs. The ``cuda:N`` plumbing cannot run without a GPU: it is
checked by recording which device the torch.cuda calls receive (labelled as such below).
Cost: ~40 s on a contended 2-core box.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import quicktune.finetune.precision as precision_mod
from quicktune.finetune import checkpoint as ck
from quicktune.finetune.precision import autocast, make_scaler, resolve_precision
from quicktune.finetune.step import run_step

CFG = {"model": "test_vit", "lr": 0.001, "batch_size": 16, "opt": "adamw"}


def test_auto_is_bf16_on_capable_cuda_fp16_on_older_cuda_fp32_on_cpu():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda:1", bf16_supported=True) == "bf16"
    assert resolve_precision("auto", "cuda:0", bf16_supported=False) == "fp16"
    for p in ("fp32", "fp16", "bf16"):
        assert resolve_precision(p, "cpu") == p and resolve_precision(p, "cuda", bf16_supported=False) == p
    with pytest.raises(ValueError, match="fp8"):
        resolve_precision("fp8", "cpu")


def test_only_fp16_gets_a_grad_scaler_and_autocast_follows_the_precision():
    cpu = torch.device("cpu")
    assert make_scaler(cpu, "fp32") is None and make_scaler(cpu, "bf16") is None
    assert isinstance(make_scaler(cpu, "fp16"), torch.amp.GradScaler)
    lin = torch.nn.Linear(4, 4)
    for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast(cpu, p):
            assert lin(torch.randn(2, 4)).dtype == dtype


def _step(data, ckdir: Path, to_epoch: int, **kw):
    return run_step(
        CFG,
        str(data),
        to_epoch,
        str(ckdir),
        image_size=16,
        max_epochs=4,
        cache_dir=str(ckdir.parent / "cache"),
        **kw,
    )


def _weights(ckdir: Path) -> dict[str, torch.Tensor]:
    found = dict(ck.list_checkpoints(str(ckdir)))
    return {k: v for k, v in ck.load_checkpoint(found[max(found)]).tensors.items() if k.startswith("model/")}


@pytest.mark.slow  # ~30 s: fp16 on the CPU is slow
def test_fp16_overflowed_steps_are_skipped_not_diverged_and_resume_is_exact(tiny_image_folder, tmp_path, monkeypatch):
    """A GradScaler started at 2**20 overflows fp16 for sure: the first steps are skipped (the
    scaler halves its scale each time), training goes on, the step is ``ok``. The scaler's state is
    checkpointed: 1 + 1 epochs equal 2 (a fresh scaler would skip again after the resume)."""
    monkeypatch.setattr(precision_mod, "FP16_INIT_SCALE", 2.0**20)
    straight = _step(tiny_image_folder, tmp_path / "a", 2, precision="fp16", out=str(tmp_path / "r.json"))
    assert straight["status"] == "ok", straight["message"]
    assert straight["precision"] == "fp16"
    skipped = straight["scaler_skipped_steps"]
    steps = sum(e["train_images"] for e in straight["epochs"]) // 16
    assert 1 <= skipped < steps, (skipped, steps)
    assert skipped == sum(e["scaler_skipped_steps"] for e in straight["epochs"])
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert on_disk["precision"] == "fp16" and on_disk["scaler_skipped_steps"] == skipped
    manifest = json.loads(Path(straight["checkpoint"]).read_text())
    assert manifest["precision"] == "fp16" and manifest["scaler"]["scale"] == 2.0**20 / 2**skipped
    one = _step(tiny_image_folder, tmp_path / "b", 1, precision="fp16")
    two = _step(tiny_image_folder, tmp_path / "b", 2, precision="fp16")
    assert one["status"] == two["status"] == "ok"
    assert [e["train_loss"] for e in one["epochs"] + two["epochs"]] == [e["train_loss"] for e in straight["epochs"]]
    assert one["scaler_skipped_steps"] + two["scaler_skipped_steps"] == skipped
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bf16_trains_on_the_cpu_and_resumes_exactly(tiny_image_folder, tmp_path):
    straight = _step(tiny_image_folder, tmp_path / "a", 2, precision="bf16")
    assert straight["status"] == "ok" and straight["precision"] == "bf16", straight["message"]
    assert straight["scaler_skipped_steps"] == 0
    assert straight["epochs"][1]["train_loss"] < straight["epochs"][0]["train_loss"]  # it learns
    one = _step(tiny_image_folder, tmp_path / "b", 1, precision="bf16")
    two = _step(tiny_image_folder, tmp_path / "b", 2, precision="bf16")
    assert [e["train_loss"] for e in one["epochs"] + two["epochs"]] == [e["train_loss"] for e in straight["epochs"]]
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # resuming in another precision works, with a warning that it is not bit-exact
    three = _step(tiny_image_folder, tmp_path / "b", 3, precision="fp32")
    assert three["status"] == "ok" and any("bf16" in w and "bit-exact" in w for w in three["warnings"])


def test_auto_on_the_cpu_is_fp32_and_a_bad_precision_or_device_fails_clearly(tiny_image_folder, tmp_path):
    res = _step(tiny_image_folder, tmp_path / "a", 1)
    assert res["status"] == "ok" and res["precision"] == "fp32" and res["scaler_skipped_steps"] == 0
    bad = _step(tiny_image_folder, tmp_path / "b", 1, precision="fp8")
    assert bad["status"] == "failed" and "fp8" in bad["message"]
    if not torch.cuda.is_available():
        res = _step(tiny_image_folder, tmp_path / "c", 1, device="cuda:1")
        assert res["status"] == "failed" and "CUDA is not available" in res["message"]


def test_cli_precision_flag(tmp_path):
    from quicktune.finetune.entry import build_step_parser

    p = build_step_parser()
    assert p.parse_args([]).precision == "auto" and p.parse_args(["--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        p.parse_args(["--precision", "fp8"])


# --------------------------------------------------------------------------------------------
# cuda:N plumbing, without a GPU: which device do the torch.cuda calls receive? (recorded fakes)
# --------------------------------------------------------------------------------------------
def test_peak_memory_and_rng_state_use_the_steps_device_not_device_0(monkeypatch):
    from quicktune.finetune import state, step
    from quicktune.finetune.build import build_training
    from quicktune.finetune.config import resolve_config
    from quicktune.finetune.model import model_defaults

    seen: list[tuple[str, object]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: seen.append(("peak", d)) or 2**20)
    assert step._peak_memory_mb("cuda:3") == 1.0
    assert seen == [("peak", torch.device("cuda:3"))]

    cfg = resolve_config(CFG)
    parts = build_training(cfg, model_defaults("test_vit"), 10, 1, 16, torch.device("cpu"), 0, 4, None, [])
    assert "rng/cuda" not in state.checkpoint_tensors(parts)  # a CPU step saves no CUDA RNG state
    parts.device = torch.device("cuda:2")  # pretend the step ran on cuda:2
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d="cuda": seen.append(("rng", d)) or torch.zeros(8))
    assert "rng/cuda" in state.checkpoint_tensors(parts)
    assert seen[-1] == ("rng", torch.device("cuda:2"))
