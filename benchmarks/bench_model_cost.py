"""Per-epoch-like cost of each model of a hub on the CPU, against what the cost model predicts.

For every model of ``builtin:paper`` (and ``builtin:cpu`` with ``--space builtin:cpu``): a randomly
initialised timm model (10 classes, 3 channels; fixed-input-size models built for the resolution),
one untimed warm-up batch, then forward + backward + SGD step over ``--batches`` batches of ``--batch``
random images at ``--size`` px, one CPU thread. The timed seconds are the "measured cost". Beside it:
parameters, GMACs at that resolution (``quicktune.hub.descriptor``), and the shipped prior's predicted
per-epoch seconds (``quicktune.search.prior.explain_prior``) both at the measured resolution and at each
model's native size (what ``quicktune prior --space builtin:paper --json`` prints). Spearman rank
correlations with the measured cost are printed and written to the JSON.

    nice -n 10 .venv/bin/python benchmarks/bench_model_cost.py --out benchmarks/results/model_cost.json
    # after re-meta-training: the same timings, new predictions
    .venv/bin/python benchmarks/bench_model_cost.py --space builtin:paper --space builtin:cpu \
        --measured benchmarks/results/model_cost.json --out benchmarks/results/model_cost.json

Target (issue 14): 24 distinct predicted costs on builtin:paper, Spearman >= 0.9 with the measured cost.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(x: list[float]) -> np.ndarray:
        x_arr = np.asarray(x, dtype=np.float64)
        order = np.argsort(x_arr, kind="stable")
        r = np.empty(len(x_arr))
        r[order] = np.arange(len(x_arr), dtype=np.float64)
        for v in np.unique(x_arr):  # ties: the mean rank
            idx = x_arr == v
            r[idx] = r[idx].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def measure(name: str, size: int, batch: int, batches: int) -> float:
    import torch

    from quicktune.hub import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=3, pretrained=False, image_size=size)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up: allocations, lazy init
    t0 = time.perf_counter()
    for _ in range(batches):
        step()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", action="append", help="builtin:paper (default) and/or builtin:cpu")
    ap.add_argument("--size", type=int, default=64, help="resolution in px (default 64)")
    ap.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    ap.add_argument("--batches", type=int, default=2, help="timed batches (default 2)")
    ap.add_argument("--out", default="benchmarks/results/model_cost.json")
    ap.add_argument(
        "--measured",
        default=None,
        help="reuse the measured seconds of an earlier --out (same --size, --batch and --batches: checked) "
        "and recompute only the predictions: after re-meta-training, the timings do not change, and a "
        "busy machine would make new ones noisy",
    )
    args = ap.parse_args(argv)

    import torch

    from quicktune.hub import describe
    from quicktune.search.prior import explain_prior
    from quicktune.space import load_space

    torch.set_num_threads(1)
    result: dict = {
        "setting": {
            "resolution_px": args.size,
            "batch": args.batch,
            "timed_batches": args.batches,
            "warmup_batches": 1,
            "what": "forward + backward + SGD step, random init, 10 classes, 1 CPU thread",
            "torch": torch.__version__,
            "machine": platform.machine(),
        },
        "spaces": {},
    }
    earlier: dict = {}
    if args.measured:
        earlier = json.loads(Path(args.measured).read_text())
        for key, want in (("resolution_px", args.size), ("batch", args.batch), ("timed_batches", args.batches)):
            if earlier["setting"][key] != want:
                ap.error(f"--measured was timed with {key}={earlier['setting'][key]}, not {want}")
        result["setting"]["measured_from"] = Path(args.measured).name
        result["setting"]["torch"] = earlier["setting"]["torch"]
    for space_ref in args.space or ["builtin:paper"]:
        space = load_space(space_ref)
        at_size = {r["model"]: r for r in explain_prior(space, image_size=args.size)["models"]}
        native = {r["model"]: r for r in explain_prior(space)["models"]}
        rows = []
        timed = earlier.get("spaces", {}).get(space_ref, {}).get("models", [])
        reuse = {r["model"]: r["measured_seconds"] for r in timed}
        if earlier and set(reuse) != set(at_size):
            ap.error(f"--measured has other models for {space_ref}: {sorted(set(reuse) ^ set(at_size))}")
        for name in at_size:
            sec = reuse[name] if earlier else measure(name, args.size, args.batch, args.batches)
            d = describe(name, args.size)
            rows.append(
                {
                    "model": name,
                    "measured_seconds": sec,
                    "params": d.params,
                    "gmacs_at_size": d.gmacs,
                    "arch_type": d.arch_type,
                    "predicted_epoch_seconds_at_size": at_size[name]["predicted_epoch_seconds"],
                    "predicted_epoch_seconds_native": native[name]["predicted_epoch_seconds"],
                    "native_size": native[name]["image_size"],
                }
            )
            print(f"{name:44s} {sec:8.3f} s  {d.gmacs:8.4f} GMACs  {d.params / 1e6:7.1f} M", file=sys.stderr)
        measured = [r["measured_seconds"] for r in rows]
        corr = {
            "prior_at_size_vs_measured": spearman([r["predicted_epoch_seconds_at_size"] for r in rows], measured),
            "prior_native_vs_measured": spearman([r["predicted_epoch_seconds_native"] for r in rows], measured),
            "params_vs_measured": spearman([float(r["params"]) for r in rows], measured),
            "gmacs_vs_measured": spearman([r["gmacs_at_size"] for r in rows], measured),
        }
        distinct = {
            "at_size": len({r["predicted_epoch_seconds_at_size"] for r in rows}),
            "native": len({r["predicted_epoch_seconds_native"] for r in rows}),
        }
        result["spaces"][space_ref] = {"models": rows, "spearman": corr, "distinct_predicted_costs": distinct}
        print(f"{space_ref}: {len(rows)} models; distinct predicted costs {distinct}", file=sys.stderr)
        for k, v in corr.items():
            print(f"  Spearman {k}: {v:.3f}", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
