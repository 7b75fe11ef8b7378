"""Throughput and fixed overhead of ``quicktune step`` vs a plain hand-written timm/torch loop.

Same model (from the hub, same weights), same data (1,500 training images of a packaged dataset
at 32 px), same settings (AdamW, lr 1e-3, batch 32, no augmentation, one CPU thread):

* images/second of training: ``train_images / train_seconds`` of a ``quicktune step`` epoch vs
  the plain loop's epoch (target ratio >= 0.95);
* fixed per-step overhead: wall time of a resumed ``quicktune step --to-epoch 2`` process minus
  its epoch's train + eval seconds, i.e. process start, imports, data loading, model build,
  checkpoint load and save (target < 10% of the epoch). The step's own phase timings
  (RESULT["phases"]) break it down. The same for the second request of a warm
  ``quicktune step --worker`` process (no process start or imports; data, build, checkpoints),
  and for the local backend's default path: a resumed step forked from its warm fork server
  (``quicktune.backends.local.forkserver``), timed from ``start()`` to the step's exit record.

Every measurement is a separate process; runs are interleaved (step, plain, step, ...) and the
median of ``--repeats`` is reported, because the machine is shared. The 1-minute load average
is recorded before each run.

    .venv/bin/python benchmarks/bench_step.py --out benchmarks/results/bench_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable


def prepare_data(dest: Path, dataset: str, per_class: int) -> Path:
    if not dest.exists():
        subprocess.run(
            [PY, "-m", "quicktune.cli", "data", "import", dataset, str(dest), "--max-per-class", str(per_class)],
            check=True,
        )
    return dest


def plain_loop(data: str, model: str, image_size: int, batch_size: int, lr: float, out: str) -> None:
    """The reference: what one would write by hand with timm and torch (runs in its own process)."""
    t_start = time.perf_counter()
    import numpy as np
    import torch
    from PIL import Image

    from quicktune.hub import create_model, model_info

    torch.set_num_threads(1)
    torch.manual_seed(0)
    root = Path(data)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    # the same 60/20/20 split as the step: take the dataset's own split indices
    from quicktune.data import open_dataset

    ds = open_dataset(data, cache_dir=str(Path(out).parent / "cache"))
    train_idx = ds.split("train")
    cfg = model_info(model).pretrained_cfg()
    mean, std = cfg["mean"], cfg["std"]
    gray = ds.num_channels == 1

    def load(path):
        im = Image.open(path).convert("RGB").resize((image_size, image_size), Image.BILINEAR)
        if gray:
            im = im.convert("L")
        a = (
            np.asarray(im, dtype=np.float32)[None] / 255.0
            if gray
            else np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
        )
        c = a.shape[0]
        return (a - np.array(mean[:c], dtype=np.float32)[:, None, None]) / np.array(std[:c], dtype=np.float32)[
            :, None, None
        ]

    x = torch.from_numpy(np.stack([load(root / ds.paths[i]) for i in train_idx]))
    y = torch.as_tensor(np.asarray(ds.labels)[train_idx], dtype=torch.long)
    net = create_model(model, num_classes=len(classes), in_chans=1 if gray else 3, image_size=image_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    loss_fn = torch.nn.CrossEntropyLoss()
    t_ready = time.perf_counter()
    net.train()
    perm = torch.randperm(len(x))
    n_seen = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(x) - batch_size + 1, batch_size):
        idx = perm[i : i + batch_size]
        loss = loss_fn(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n_seen += len(idx)
    train_seconds, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    Path(out).write_text(
        json.dumps(
            {
                "train_seconds": train_seconds,
                "train_images": n_seen,
                "train_cpu_seconds": train_cpu,
                "setup_seconds": t_ready - t_start,
                "loss": float(loss.detach()),
            }
        )
    )


def run_step(
    data: str, model: str, image_size: int, batch_size: int, lr: float, ckdir: str, to_epoch: int, out: str, cache: str
) -> dict:
    cfg = Path(out).with_suffix(".cfg.json")
    cfg.write_text(json.dumps({"model": model, "lr": lr, "batch_size": batch_size, "opt": "adamw"}))
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run(
        [
            PY,
            "-m",
            "quicktune.cli",
            "step",
            "--config",
            str(cfg),
            "--data",
            data,
            "--to-epoch",
            str(to_epoch),
            "--checkpoint-dir",
            ckdir,
            "--out",
            out,
            "--image-size",
            str(image_size),
            "--threads",
            "1",
            "--cache-dir",
            cache,
        ],
        check=True,
        capture_output=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    res = json.loads(Path(out).read_text())
    assert res["status"] == "ok", res["message"]
    res["process_wall_seconds"], res["process_cpu_seconds"] = wall, cpu
    return res


def worker_steps(
    data: str, model: str, image_size: int, batch_size: int, lr: float, ckdir: str, out_prefix: str, cache: str
) -> tuple[dict, float]:
    """Two steps (fresh to epoch 1, resume to epoch 2) through one warm ``quicktune step --worker``;
    returns the second RESULT and the wall seconds from sending its request to reading the answer."""
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "quicktune.cli",
            "step",
            "--worker",
            "--image-size",
            str(image_size),
            "--threads",
            "1",
            "--cache-dir",
            cache,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    cfg = {"model": model, "lr": lr, "batch_size": batch_size, "opt": "adamw"}
    wall = 0.0
    try:
        for epoch in (1, 2):
            req = {
                "id": str(epoch),
                "config": cfg,
                "data": data,
                "to_epoch": epoch,
                "checkpoint_dir": ckdir,
                "out": f"{out_prefix}-{epoch}.json",
            }
            t0 = time.perf_counter()
            proc.stdin.write(json.dumps(req) + "\n")
            proc.stdin.flush()
            answer = json.loads(proc.stdout.readline())
            wall = time.perf_counter() - t0
            assert answer.get("status") == "ok", answer
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
    return json.loads(Path(f"{out_prefix}-2.json").read_text()), wall


def forked_steps(
    data: str, model: str, image_size: int, batch_size: int, lr: float, ckdir: str, workdir: str, cache: str
) -> tuple[dict, float]:
    """Two steps (fresh to epoch 1, resume to epoch 2) through ``LocalBackend`` with its fork server;
    returns the second RESULT and the wall seconds from ``start()`` to its exit record."""
    from quicktune.backends.base import StepRequest
    from quicktune.backends.local import LocalBackend

    backend = LocalBackend(workdir, max_workers=1, threads_per_worker=1)
    cfg = {"model": model, "lr": lr, "batch_size": batch_size, "opt": "adamw"}
    wall = 0.0
    try:
        for epoch in (1, 2):
            req = StepRequest(
                search_id="bench",
                config_id="c",
                config=cfg,
                data_uri=data,
                to_epoch=epoch,
                checkpoint_dir=ckdir,
                seed=0,
                device="cpu",
                image_size=image_size,
            )
            t0 = time.perf_counter()
            sid = backend.start(req)
            while not (backend.step_dir(sid) / "exit.json").exists():
                time.sleep(0.01)
            wall = time.perf_counter() - t0
            assert backend.poll(sid).state == "succeeded", backend.logs(sid)
            assert json.loads((backend.step_dir(sid) / "launch.json").read_text())["via"] == "fork-server"
        return backend.result(sid), wall
    finally:
        backend.close()


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--per-class", type=int, default=250, help="250 x 10 classes -> 1,500 training images")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_step.json"))
    ap.add_argument("--plain", metavar="OUT", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        plain_loop(args.data, args.model, args.image_size, args.batch_size, args.lr, args.plain)
        return 0

    work = Path(args.workdir or tempfile.mkdtemp(prefix="qt-bench-step-"))
    data = str(prepare_data(work / f"{args.dataset}-{args.per_class}", args.dataset, args.per_class))
    cache = str(work / "cache")
    rows = []
    for r in range(args.repeats):
        ck = str(work / f"ck{r}")
        shutil.rmtree(ck, ignore_errors=True)
        load1 = os.getloadavg()[0]
        first = run_step(
            data, args.model, args.image_size, args.batch_size, args.lr, ck, 1, str(work / f"r{r}a.json"), cache
        )
        resumed = run_step(
            data, args.model, args.image_size, args.batch_size, args.lr, ck, 2, str(work / f"r{r}b.json"), cache
        )
        plain_out = work / f"plain{r}.json"
        t0 = time.perf_counter()
        subprocess.run(
            [
                PY,
                __file__,
                "--plain",
                str(plain_out),
                "--data",
                data,
                "--model",
                args.model,
                "--image-size",
                str(args.image_size),
                "--batch-size",
                str(args.batch_size),
                "--lr",
                str(args.lr),
            ],
            check=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        plain = json.loads(plain_out.read_text())
        plain["process_wall_seconds"] = time.perf_counter() - t0
        shutil.rmtree(ck + "w", ignore_errors=True)
        warm, warm_wall = worker_steps(
            data, args.model, args.image_size, args.batch_size, args.lr, ck + "w", str(work / f"w{r}"), cache
        )
        we = warm["epochs"][0]
        shutil.rmtree(ck + "f", ignore_errors=True)
        forked, forked_wall = forked_steps(
            data, args.model, args.image_size, args.batch_size, args.lr, ck + "f", str(work / f"fork{r}"), cache
        )
        fe = forked["epochs"][0]
        fork_epoch = fe["train_seconds"] + fe["eval_seconds"]
        warm_cpu = {k: v for k, v in warm["phases"]["cpu"].items() if k not in ("train", "eval", "scheduler")}
        warm_overhead_cpu = sum(warm_cpu.values())
        warm_epoch_cpu = sum(warm["phases"]["cpu"].get(k, 0.0) for k in ("train", "eval", "scheduler"))
        e = resumed["epochs"][0]
        step_ips = e["train_images"] / e["train_seconds"]
        plain_ips = plain["train_images"] / plain["train_seconds"]
        overhead = resumed["process_wall_seconds"] - e["train_seconds"] - e["eval_seconds"]
        # CPU seconds are less sensitive to other processes on a shared machine (one thread: CPU ~ wall when idle)
        pc = resumed["phases"]["cpu"]
        cpu_epoch = pc["train"] + pc["eval"] + pc.get("scheduler", 0.0)
        overhead_cpu = resumed["process_cpu_seconds"] - cpu_epoch
        rows.append(
            {
                "repeat": r,
                "loadavg_1m": round(load1, 2),
                "step_images_per_s": step_ips,
                "plain_images_per_s": plain_ips,
                "ratio": step_ips / plain_ips,
                "epoch_train_seconds": e["train_seconds"],
                "epoch_eval_seconds": e["eval_seconds"],
                "train_images": e["train_images"],
                "resumed_process_wall_seconds": resumed["process_wall_seconds"],
                "fresh_process_wall_seconds": first["process_wall_seconds"],
                "overhead_seconds": overhead,
                "overhead_pct_of_epoch": 100 * overhead / (e["train_seconds"] + e["eval_seconds"]),
                "overhead_cpu_seconds": overhead_cpu,
                "epoch_cpu_seconds": cpu_epoch,
                "overhead_cpu_pct_of_epoch": 100 * overhead_cpu / cpu_epoch,
                "plain_train_cpu_seconds": plain["train_cpu_seconds"],
                "step_images_per_cpu_s": e["train_images"] / pc["train"],
                "plain_images_per_cpu_s": plain["train_images"] / plain["train_cpu_seconds"],
                "ratio_cpu": (e["train_images"] / pc["train"]) / (plain["train_images"] / plain["train_cpu_seconds"]),
                "worker_overhead_seconds": warm_wall - we["train_seconds"] - we["eval_seconds"],
                "worker_overhead_pct_of_epoch": 100
                * (warm_wall - we["train_seconds"] - we["eval_seconds"])
                / (we["train_seconds"] + we["eval_seconds"]),
                "worker_overhead_cpu_seconds": warm_overhead_cpu,
                "worker_overhead_cpu_pct_of_epoch": 100 * warm_overhead_cpu / warm_epoch_cpu,
                "forked_overhead_seconds": forked_wall - fork_epoch,
                "forked_overhead_pct_of_epoch": 100 * (forked_wall - fork_epoch) / fork_epoch,
                "phases": {k: v for k, v in resumed.get("phases", {}).items() if k != "cpu"},
                "phases_cpu": resumed.get("phases", {}).get("cpu", {}),
                "plain_setup_seconds": plain["setup_seconds"],
            }
        )
        print(
            f"repeat {r}: step {step_ips:.1f} img/s, plain {plain_ips:.1f} img/s, ratio {step_ips / plain_ips:.3f}, "
            f"overhead {overhead:.2f} s = {rows[-1]['overhead_pct_of_epoch']:.1f}% of the epoch; warm worker "
            f"{rows[-1]['worker_overhead_pct_of_epoch']:.1f}% wall, "
            f"{rows[-1]['worker_overhead_cpu_pct_of_epoch']:.1f}% CPU; "
            f"forked (local backend) {rows[-1]['forked_overhead_pct_of_epoch']:.1f}% wall (load {load1:.1f})",
            flush=True,
        )

    def med(k):
        return statistics.median(row[k] for row in rows)

    summary = {
        "model": args.model,
        "dataset": args.dataset,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "train_images": rows[0]["train_images"],
        "repeats": args.repeats,
        "step_images_per_s": med("step_images_per_s"),
        "plain_images_per_s": med("plain_images_per_s"),
        "ratio": med("ratio"),
        "ratio_target": 0.95,
        "overhead_seconds": med("overhead_seconds"),
        "epoch_train_seconds": med("epoch_train_seconds"),
        "overhead_pct_of_epoch": med("overhead_pct_of_epoch"),
        "overhead_target_pct": 10.0,
        "overhead_cpu_seconds": med("overhead_cpu_seconds"),
        "overhead_cpu_pct_of_epoch": med("overhead_cpu_pct_of_epoch"),
        "epoch_cpu_seconds": med("epoch_cpu_seconds"),
        "worker_overhead_seconds": med("worker_overhead_seconds"),
        "worker_overhead_pct_of_epoch": med("worker_overhead_pct_of_epoch"),
        "worker_overhead_cpu_seconds": med("worker_overhead_cpu_seconds"),
        "worker_overhead_cpu_pct_of_epoch": med("worker_overhead_cpu_pct_of_epoch"),
        "ratio_cpu": med("ratio_cpu"),
        "forked_overhead_seconds": med("forked_overhead_seconds"),
        "forked_overhead_pct_of_epoch": med("forked_overhead_pct_of_epoch"),
        "phases_median": {k: statistics.median(r["phases"].get(k, 0.0) for r in rows) for k in rows[0]["phases"]},
        "phases_cpu_median": {
            k: statistics.median(r["phases_cpu"].get(k, 0.0) for r in rows) for k in rows[0]["phases_cpu"]
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "rows": rows,
    }
    print()
    print(
        "| model | px | train images | quicktune step img/s | plain loop img/s | ratio (>= 0.95) | overhead s "
        "| overhead % of epoch (< 10) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.model} | {args.image_size} | {summary['train_images']} | {summary['step_images_per_s']:.1f} | "
        f"{summary['plain_images_per_s']:.1f} | {summary['ratio']:.3f} | {summary['overhead_seconds']:.2f} | "
        f"{summary['overhead_pct_of_epoch']:.1f} |"
    )
    print(
        f"CPU-time view (robust to other load): ratio {summary['ratio_cpu']:.3f}, "
        f"overhead {summary['overhead_cpu_seconds']:.2f} "
        f"CPU s = {summary['overhead_cpu_pct_of_epoch']:.1f}% of the epoch's {summary['epoch_cpu_seconds']:.1f} CPU s"
    )
    print(
        f"warm worker (quicktune step --worker, 2nd request): "
        f"overhead {summary['worker_overhead_seconds']:.2f} s wall = "
        f"{summary['worker_overhead_pct_of_epoch']:.1f}% of the epoch, "
        f"{summary['worker_overhead_cpu_seconds']:.2f} CPU s = "
        f"{summary['worker_overhead_cpu_pct_of_epoch']:.1f}%"
    )
    print(
        f"local backend, step forked from the fork server (2nd step): "
        f"overhead {summary['forked_overhead_seconds']:.2f} s "
        f"wall = {summary['forked_overhead_pct_of_epoch']:.1f}% of the epoch"
    )
    print("step phases (median wall s):", {k: round(v, 2) for k, v in summary["phases_median"].items()})
    print("step phases (median CPU s):", {k: round(v, 2) for k, v in summary["phases_cpu_median"].items()})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
