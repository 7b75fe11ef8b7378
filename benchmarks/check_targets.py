"""Checks Quick-Tune against its own ablation and the peers, run by run, on the targets of issue 14.

Reads finished benchmark runs (``quicktune bench`` / ``bench_regret.py`` output folders; several
folders may be given, e.g. the Quick-Tune runs and the peers' runs of the same table, budget and
seeds), keeps the (dataset, seed) problems that *every* optimizer solved, and prints:

- mean normalized regret ± one standard error at 10 / 25 / 50 / 100 % of the budget;
- the paired difference ``quicktune - X`` per problem (mean ± SE, won / tied / lost) for every X;
- the targets, each PASS or FAIL with its numbers:
  ``quicktune <= quicktune-nometa`` at 10 % and 25 %; ``quicktune <= 1.1 x the best peer`` at 10 %;
  ``quicktune <= every peer`` at 25, 50 and 100 % (a peer is any optimizer but the Quick-Tune
  variants);
- the same per dataset at 10 %, to show *where* a target is missed.

Why a script: the targets compare means over the *same* problems; mixing a 10-seed peer table with a
2-seed Quick-Tune table (as an older report had to) compares different problems.

    .venv/bin/python benchmarks/check_targets.py out/issue14-medqt10 out/bench-peers/medqt \\
        --json benchmarks/results/targets_medqt.json

``--clock time`` (default) charges the optimizer's overhead; ``table_time`` does not.
``--reference OLD.json`` takes the means of the optimizers the folders lack (e.g. the peers, after a
change of Quick-Tune alone) from an earlier ``--json`` of exactly the same problems.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINTS = (0.1, 0.25, 0.5, 1.0)
OURS = "quicktune"
ABLATION = "quicktune-nometa"


def _mean_se(xs: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=float)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
    return float(a.mean()), se


def regret_matrix(runs: Sequence[Mapping[str, Any]], clock: str) -> dict[str, dict[tuple[str, int], np.ndarray]]:
    """optimizer -> (dataset, seed) -> regret at CHECKPOINTS, over the problems every optimizer solved.
    A problem solved twice by one optimizer (two folders) is an error: the folders overlap; so is one
    solved under two budgets (runs of different benchmarks)."""
    from quicktune.bench.summary import problem, run_regret

    per: dict[str, dict[tuple[str, int], np.ndarray]] = {}
    budgets: dict[tuple[str, int], tuple[float, str]] = {}
    for run in runs:
        key = (problem(run), int(run["seed"]))
        budget = float(run["budget"])
        seen = budgets.setdefault(key, (budget, str(run["optimizer"])))
        if not math.isclose(seen[0], budget, rel_tol=1e-9):
            raise ValueError(
                f"{key}: {run['optimizer']} ran with budget {budget:.6g}, {seen[1]} with {seen[0]:.6g}: "
                f"not the same benchmark (table or --budget-multiple differ)"
            )
        slot = per.setdefault(str(run["optimizer"]), {})
        if key in slot:
            raise ValueError(f"{run['optimizer']} solved {key} twice: give folders that do not overlap")
        slot[key] = run_regret(run, CHECKPOINTS, clock)
    if not per:
        return {}
    common = set.intersection(*(set(v) for v in per.values()))
    return {name: {k: v[k] for k in sorted(common)} for name, v in per.items()}


def check(runs: Sequence[Mapping[str, Any]], clock: str = "time", peer_margin: float = 1.1) -> dict[str, Any]:
    """The table, the paired differences and the targets (see the module docstring)."""
    mat = regret_matrix(runs, clock)
    if OURS not in mat:
        raise ValueError(f"no {OURS} runs among {sorted(mat)}")
    problems = list(mat[OURS])
    if not problems:
        raise ValueError("no (dataset, seed) problem was solved by every optimizer")
    means = {name: [_mean_se([v[p][i] for p in problems]) for i in range(len(CHECKPOINTS))] for name, v in mat.items()}
    paired: dict[str, list[dict[str, Any]]] = {}
    for name in mat:
        if name == OURS:
            continue
        rows = []
        for i in range(len(CHECKPOINTS)):
            d = [mat[OURS][p][i] - mat[name][p][i] for p in problems]
            m, se = _mean_se(d)
            rows.append(
                {
                    "mean": m,
                    "se": se,
                    "won": int(sum(x < -1e-12 for x in d)),
                    "tied": int(sum(abs(x) <= 1e-12 for x in d)),
                    "lost": int(sum(x > 1e-12 for x in d)),
                }
            )
        paired[name] = rows
    datasets = sorted({p[0] for p in problems})
    per_dataset = {
        ds: {name: float(np.mean([v[p][0] for p in problems if p[0] == ds])) for name, v in mat.items()}
        for ds in datasets
    }
    return {
        "clock": clock,
        "checkpoints": list(CHECKPOINTS),
        "problems": len(problems),
        "datasets": datasets,
        "seeds": sorted({p[1] for p in problems}),
        "mean": {n: [{"mean": m, "se": s} for m, s in v] for n, v in means.items()},
        "paired_vs": paired,
        "targets": targets_of(means, peer_margin),
        "regret_at_10pct_per_dataset": per_dataset,
    }


def targets_of(means: Mapping[str, Sequence[tuple[float, float]]], peer_margin: float = 1.1) -> list[dict[str, Any]]:
    """The targets from the mean regrets at CHECKPOINTS (optimizer -> [(mean, se), ...])."""
    peers = [n for n in means if not n.startswith("quicktune")]
    ours = [m for m, _ in means[OURS]]
    targets: list[dict[str, Any]] = []

    def target(text: str, ours_value: float, bound: float) -> None:
        targets.append({"target": text, "ours": ours_value, "other": bound, "pass": bool(ours_value <= bound)})

    if ABLATION in means:
        for i in (0, 1):
            target(f"{OURS} <= {ABLATION} at {CHECKPOINTS[i]:.0%}", ours[i], means[ABLATION][i][0])
    if peers:
        best_early = min(peers, key=lambda n: means[n][0][0])
        target(
            f"{OURS} <= {peer_margin} x the best peer ({best_early}) at 10%",
            ours[0],
            peer_margin * means[best_early][0][0],
        )
        for i in (1, 2, 3):
            best_there = min(peers, key=lambda n: means[n][i][0])
            target(
                f"{OURS} <= every peer at {CHECKPOINTS[i]:.0%} (best peer there: {best_there})",
                ours[i],
                means[best_there][i][0],
            )
    return targets


def with_reference(res: dict[str, Any], ref: Mapping[str, Any], peer_margin: float = 1.1) -> dict[str, Any]:
    """``res`` with the means of the optimizers it lacks taken from an earlier result ``ref`` (this
    script's ``--json``) of the *same* problems (datasets, seeds, clock and count must match: an
    error otherwise), and the targets recomputed. Paired differences stay those of the runs given
    (a stored mean has no per-problem values). Why: rerunning every peer after a change of
    Quick-Tune alone costs hours of CPU and gives the same peer numbers."""
    for key in ("datasets", "seeds", "clock", "problems", "checkpoints"):
        if res[key] != ref[key]:
            raise ValueError(f"--reference solved other problems: {key} {ref[key]!r} here {res[key]!r}")
    out = dict(res)
    out["mean"] = {**{n: v for n, v in ref["mean"].items() if n not in res["mean"]}, **res["mean"]}
    out["reference_optimizers"] = sorted(n for n in ref["mean"] if n not in res["mean"])
    per = {}
    for ds, row in res["regret_at_10pct_per_dataset"].items():
        per[ds] = {**{n: v for n, v in ref["regret_at_10pct_per_dataset"][ds].items() if n not in row}, **row}
    out["regret_at_10pct_per_dataset"] = per
    means = {n: [(c["mean"], c["se"]) for c in v] for n, v in out["mean"].items()}
    out["targets"] = targets_of(means, peer_margin)
    return out


def format_report(res: Mapping[str, Any]) -> str:
    """Markdown: the table, the paired differences, the targets, the 10 % regret per dataset."""
    cps = " | ".join(f"{c:.0%}" for c in res["checkpoints"])
    lines = [
        f"{res['problems']} problems ({len(res['datasets'])} datasets x seeds {res['seeds']}), clock `{res['clock']}`",
        "",
        f"| optimizer | {cps} |",
        "|---|" + "---|" * len(res["checkpoints"]),
    ]
    order = sorted(res["mean"], key=lambda n: res["mean"][n][-1]["mean"])
    refs = set(res.get("reference_optimizers", ()))
    for n in order:
        cells = " | ".join(f"{c['mean']:.3f} ± {c['se']:.3f}" for c in res["mean"][n])
        lines.append(f"| `{n}`{' (ref)' if n in refs else ''} | {cells} |")
    lines += ["", f"Paired, `{OURS}` minus each (mean ± SE; won/tied/lost):", "", f"| vs | {cps} |"]
    lines.append("|---|" + "---|" * len(res["checkpoints"]))
    for n in order:
        if n in res["paired_vs"]:
            cells = " | ".join(
                f"{r['mean']:+.3f} ± {r['se']:.3f} ({r['won']}/{r['tied']}/{r['lost']})" for r in res["paired_vs"][n]
            )
            lines.append(f"| `{n}` | {cells} |")
    lines += ["", "| target | ours | bound | |", "|---|---|---|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['target']} | {t['ours']:.3f} | {t['other']:.3f} | {'PASS' if t['pass'] else 'FAIL'} |")
    names = sorted(next(iter(res["regret_at_10pct_per_dataset"].values())))
    lines += ["", "Regret at 10 % per dataset:", "", "| dataset | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---|" * len(names))
    for ds, row in res["regret_at_10pct_per_dataset"].items():
        lines.append(f"| {ds} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="benchmark output folders (each with runs/*.json)")
    ap.add_argument("--clock", default="time", choices=["time", "table_time"])
    ap.add_argument("--optimizers", default=None, help="comma-separated: only these optimizers")
    ap.add_argument("--json", default=None, help="also write the result here")
    ap.add_argument(
        "--reference",
        default=None,
        help="an earlier --json of the same problems: the means of optimizers not in FOLDERS come from "
        "it (marked 'ref' in the table; no paired differences for them)",
    )
    args = ap.parse_args(argv)
    from quicktune.bench.summary import load_runs

    runs = [r for f in args.folders for r in load_runs(f)]
    if args.optimizers:
        keep = set(args.optimizers.split(","))
        runs = [r for r in runs if r["optimizer"] in keep]
    try:
        res = check(runs, args.clock)
        if args.reference:
            res = with_reference(res, json.loads(Path(args.reference).read_text()))
    except ValueError as exc:
        print(f"check_targets: {exc}", file=sys.stderr)
        return 2
    res["folders"] = list(args.folders)
    print(format_report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
