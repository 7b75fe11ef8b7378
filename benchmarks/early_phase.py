"""What two optimizers did in the first part of their searches, per dataset: why one is behind early.

For each dataset of a benchmark output folder (``quicktune bench --out``) and each of two optimizers
(default ``quicktune`` vs ``quicktune-nometa``), over the seeds both ran:

- mean normalized regret at ``--fraction`` of the budget (default 10 %);
- configs tried and steps taken by then;
- the first epoch's cost and the mean cost of the first four steps, as fractions of the budget
  (an expensive first pick eats the early budget);
- the artifact's domain score at the start of the search (meta-trained optimizers only).

    .venv/bin/python benchmarks/early_phase.py out/issue14-medqt10
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def early_stats(run: Mapping[str, Any], fraction: float) -> dict[str, float]:
    """Regret at ``fraction`` of the budget, configs and steps by then, early costs / budget."""
    from quicktune.bench.summary import run_regret

    traj = run["trajectory"]
    budget = float(run["budget"])
    idx = [i for i, t in enumerate(traj["time"]) if t <= fraction * budget]
    costs = [float(c) for c in traj.get("cost", [])]
    return {
        "regret": float(run_regret(run, [fraction])[0]),
        "configs": float(len({traj["config_id"][i] for i in idx})),
        "steps": float(len(idx)),
        "first_cost": costs[0] / budget if costs else float("nan"),
        "first4_cost": float(np.mean(costs[:4])) / budget if costs else float("nan"),
        "domain": float(run["domain_score"]) if run.get("domain_score") is not None else float("nan"),
    }


def _mean(xs: Sequence[float]) -> float:
    """Mean of the finite values (NaN when none: e.g. no domain score for a non-meta optimizer)."""
    vals = [x for x in xs if np.isfinite(x)]
    return float(np.mean(vals)) if vals else float("nan")


def compare(runs: Sequence[Mapping[str, Any]], a: str, b: str, fraction: float) -> dict[str, dict[str, Any]]:
    """dataset -> {optimizer -> mean stats over the seeds both optimizers ran}."""
    by = {(r["dataset"], r["optimizer"], int(r["seed"])): r for r in runs}
    out: dict[str, dict[str, Any]] = {}
    for ds in sorted({r["dataset"] for r in runs}):
        seeds = sorted(s for (d, o, s) in by if d == ds and o == a and (ds, b, s) in by)
        if not seeds:
            continue
        row: dict[str, Any] = {"seeds": len(seeds)}
        for opt in (a, b):
            stats = [early_stats(by[(ds, opt, s)], fraction) for s in seeds]
            row[opt] = {k: _mean([st[k] for st in stats]) for k in stats[0]}
        out[ds] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="benchmark output folder (runs/*.json)")
    ap.add_argument("--a", default="quicktune")
    ap.add_argument("--b", default="quicktune-nometa")
    ap.add_argument("--fraction", type=float, default=0.1)
    args = ap.parse_args(argv)
    from quicktune.bench.summary import load_runs

    res = compare(load_runs(args.folder), args.a, args.b, args.fraction)
    if not res:
        print(f"early_phase: no dataset where both {args.a} and {args.b} ran", file=sys.stderr)
        return 2
    pct = f"{args.fraction:.0%}"
    print(
        f"| dataset | seeds | regret@{pct} {args.a} / {args.b} | configs / steps by {pct} {args.a} | "
        f"{args.b} | first epoch cost / budget | mean of first 4 steps / budget | domain score |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for ds, row in res.items():
        x, y = row[args.a], row[args.b]
        print(
            f"| {ds} | {row['seeds']} | {x['regret']:.3f} / {y['regret']:.3f} | "
            f"{x['configs']:.1f} / {x['steps']:.1f} | "
            f"{y['configs']:.1f} / {y['steps']:.1f} | {x['first_cost']:.3f} / {y['first_cost']:.3f} | "
            f"{x['first4_cost']:.3f} / {y['first4_cost']:.3f} | {x['domain']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
