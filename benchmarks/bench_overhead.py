"""Optimizer overhead: median seconds per ask+tell after 100 and 500 observations, one CPU thread.

The optimizer is driven on a synthetic learning-curve table (200 configs x 20 epochs of one
held-out dataset, so 500 observations fit): it asks, the table answers, it is told; the
ask+tell pairs numbered ``[n, n + window)`` are timed for each ``n`` in ``--at``. Wall-clock
seconds (what the benchmark charges), the calling thread's CPU seconds and the whole process's CPU
seconds (both insensitive to other processes competing for the cores) are reported.

    .venv/bin/python benchmarks/bench_overhead.py --out benchmarks/results/overhead.json

Target (issue 2): <= 0.5 s per ask+tell at 500 observations.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path


def measure(name: str, at: list[int], window: int, seed: int, meta_epochs: int) -> dict:
    import torch

    from quicktune.bench.runner import is_meta_trained
    from quicktune.bench.simulator import DatasetCurves, _lookup, make_candidates
    from quicktune.bench.synthetic import make_synthetic_table
    from quicktune.optimizer.registry import make_optimizer

    torch.set_num_threads(1)
    table = make_synthetic_table(n_datasets=3, n_configs=200, max_epochs=20, seed=7)
    curves = DatasetCurves.from_table(table, "synth00")
    opts = {"meta_features": curves.meta_features}
    if is_meta_trained(name):
        from quicktune.optimizer.metatrain import meta_train

        opts["artifact"] = meta_train(table, exclude=["synth00"], epochs=meta_epochs)
    opt = make_optimizer(name, make_candidates(curves), curves.max_epochs, seed=seed, **opts)
    done: dict[str, int] = {}
    wall: list[float] = []
    cpu: list[float] = []
    pcpu: list[float] = []
    n_obs = 0
    last = max(at) + window
    while n_obs < last:
        w0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
        s = opt.ask()
        if s is None:
            raise RuntimeError(f"{name} ran out of configs after {n_obs} observations")
        w1, c1, p1 = time.perf_counter(), time.thread_time(), time.process_time()
        score, cost, status = _lookup(curves, done, s.config_id, s.epoch)
        if status != "invalid":
            done[s.config_id] = s.epoch
        w2, c2, p2 = time.perf_counter(), time.thread_time(), time.process_time()
        opt.tell(s.config_id, s.epoch, score, cost, status)
        w3, c3, p3 = time.perf_counter(), time.thread_time(), time.process_time()
        wall.append((w1 - w0) + (w3 - w2))
        cpu.append((c1 - c0) + (c3 - c2))
        pcpu.append((p1 - p0) + (p3 - p2))
        n_obs += 1
        if n_obs % 50 == 0:
            print(f"  {name}: {n_obs} observations, last ask+tell {wall[-1]:.3f} s", file=sys.stderr, flush=True)
    out = {}
    for n in at:
        ws, cs = wall[n : n + window], cpu[n : n + window]
        out[str(n)] = {
            "median_wall_s": statistics.median(ws),
            "median_cpu_s": statistics.median(cs),
            "median_process_cpu_s": statistics.median(pcpu[n : n + window]),
            "max_wall_s": max(ws),
            "n_timed": len(ws),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--optimizer", action="append", default=[], help="optimizer(s) to time (default: quicktune)")
    ap.add_argument("--at", default="100,500", help="observation counts at which to time")
    ap.add_argument("--window", type=int, default=20, help="ask+tell pairs timed at each count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--meta-train-epochs", type=int, default=10, help="meta-training epochs for meta-trained methods")
    ap.add_argument("--out", default="benchmarks/results/overhead.json")
    args = ap.parse_args(argv)
    at = [int(x) for x in args.at.split(",") if x.strip()]
    names = args.optimizer or ["quicktune"]
    results = {}
    for name in names:
        t0 = time.perf_counter()
        results[name] = measure(name, at, args.window, args.seed, args.meta_train_epochs)
        results[name]["total_seconds"] = time.perf_counter() - t0
    doc = {
        "command": " ".join([".venv/bin/python", "benchmarks/bench_overhead.py", *(argv or sys.argv[1:])]),
        "threads": 1,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "window": args.window,
        "results": results,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    head = "| optimizer | " + " | ".join(f"median s/ask+tell @{n} obs (wall / CPU)" for n in at) + " |"
    print(head)
    print("|---|" + "---|" * len(at))
    for name, r in results.items():
        cells = [f"{r[str(n)]['median_wall_s']:.3f} / {r[str(n)]['median_cpu_s']:.3f}" for n in at]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
