"""Syne Tune's ASHA and MOBSTER driven *directly* through their ``TrialScheduler`` API on the curves of a
learning-curve table, next to the same schedulers run through the benchmark harness
(``quicktune bench``): a check that the harness does not weaken the peers it compares against.

Why: a harness that mis-drives a baseline (wrong NaN handling, a lost promotion, a paused trial
restarted from scratch or charged twice, a config space the searcher cannot use) flatters every
comparison made with it, and the only way to see that is to drive the library the way its own
documentation does and compare.

Direct drive (this file, the part that runs in ``.venv-peers`` with ``--drive``; it imports only
syne_tune and the standard library, nothing of the harness):

- one worker, simulated time: ``suggest`` -> a new trial (``on_trial_add``) or the resume of a paused
  one; the trial then reports one epoch at a time (``on_trial_result``) from its *next* epoch on
  (a resumed trial continues from its checkpoint), each epoch charged the table's recorded cost,
  until the scheduler says PAUSE or STOP, or the trial reaches ``max_t`` (``on_trial_complete``);
- ``type="promotion"``, ``grace_period=1``, ``reduction_factor=3``, ``max_t`` = the table's last epoch,
  ``mode="max"``; the searchers are restricted to the table's configs (``restrict_configurations``);
- a NaN epoch is reported to the scheduler as the dataset's worst score (the trial goes on: a
  scheduler stops what is bad, a crash is not something it can learn from);
- no new epoch starts once the clock has reached the budget.

Budget, best/worst and regret come from the harness's own code (``DatasetCurves``: budget =
``M`` x the median cost of one full curve; ``quicktune.bench.summary``: normalized regret at
10/25/50/100 % of the budget), applied to both, on the table clock (direct drive has no overhead
clock; the harness's overhead-inclusive clock is printed too).

    nice -n 10 .venv/bin/python benchmarks/peers_direct.py --table ../shared/tables/medqt_portfolio.parquet \\
        --budget-multiple 5 --seeds 3 --out out/peers_direct/medqt

writes ``OUT/direct/runs/*.json`` and ``OUT/harness/runs/*.json`` (run records of the harness's format),
``OUT/comparison.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEDULERS = ("asha", "mobster")
# the harness's own ASHA with the paper's floor(n/eta) promotion rule (its default) and with Syne Tune's quantile rule
HARNESS_NAMES = {"asha": ["asha", "asha-quantile", "synetune-asha"], "mobster": ["synetune-mobster"]}
METRIC, RESOURCE = "score", "epoch"


# --- the driver: runs in .venv-peers (syne_tune, numpy < 2); no quicktune import ---------------------


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _space(configs: list[list[Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Syne Tune config space over the table's hps and the table's configs as points of it.

    Numeric hp: ``randint``/``uniform`` over the observed range (log when positive and spanning
    two decades or more); anything else: ``choice`` over the string forms of the observed values.
    An hp inactive in a config is the lower bound (numeric) or the extra choice ``"<inactive>"``.
    """
    from syne_tune.config_space import choice, lograndint, loguniform, randint, uniform

    names: list[str] = []
    for _, cfg in configs:
        names += [k for k in cfg if k not in names]
    space: dict[str, Any] = {}
    kinds: dict[str, tuple[str, float]] = {}
    for n in names:
        vals = [cfg[n] for _, cfg in configs if n in cfg]
        inactive = len(vals) < len(configs)
        if all(_is_num(v) for v in vals) and len({float(v) for v in vals}) > 1:
            lo, hi = float(min(vals)), float(max(vals))
            log = lo > 0 and hi / lo >= 100
            if all(float(v).is_integer() for v in vals):
                space[n] = (lograndint if log else randint)(int(lo), int(hi))
                kinds[n] = ("int", lo)
            else:
                space[n] = (loguniform if log else uniform)(lo, hi)
                kinds[n] = ("float", lo)
        else:
            cats = sorted({str(v) for v in vals}) + (["<inactive>"] if inactive else [])
            space[n] = choice(cats)
            kinds[n] = ("cat", 0.0)
    points = []
    for _, cfg in configs:
        p: dict[str, Any] = {}
        for n, (kind, lo) in kinds.items():
            if kind == "cat":
                p[n] = str(cfg[n]) if n in cfg else "<inactive>"
            elif kind == "int":
                p[n] = int(cfg.get(n, lo))
            else:
                p[n] = float(cfg.get(n, lo))
        points.append(p)
    return space, points


def _key(point: dict[str, Any]) -> str:
    return json.dumps(
        {k: (float(f"{v:.9g}") if isinstance(v, float) else v) for k, v in sorted(point.items())}, sort_keys=True
    )


def drive(ds: dict[str, Any], scheduler: str, seed: int) -> dict[str, Any]:
    """One direct-drive run; returns the observed steps (completion time on the table clock, score)."""
    from datetime import datetime

    from syne_tune.backend.trial_status import Trial
    from syne_tune.optimizer import baselines as B
    from syne_tune.optimizer.scheduler import SchedulerDecision

    configs = ds["configs"]
    space, points = _space(configs)
    by_key: dict[str, list[str]] = {}
    for (cid, _), p in zip(configs, points, strict=True):
        by_key.setdefault(_key(p), []).append(cid)
    R = int(ds["max_epochs"])
    cls = {"asha": B.ASHA, "mobster": B.MOBSTER}[scheduler]
    sched = cls(
        space,
        metric=METRIC,
        mode="max",
        resource_attr=RESOURCE,
        max_t=R,
        grace_period=1,
        reduction_factor=3,
        type="promotion",
        random_seed=seed,
        search_options={"restrict_configurations": [dict(p) for p in points], "debug_log": False},
    )
    scores, costs = ds["scores"], ds["costs"]
    worst, budget = float(ds["worst"]), float(ds["budget"])
    trials: dict[int, tuple[Trial, str]] = {}
    last: dict[int, int] = {}
    used: set[str] = set()
    out: dict[str, list[Any]] = {"time": [], "score": [], "config_id": [], "epoch": []}
    now, next_id, stop = 0.0, 0, "budget"
    while now < budget:
        try:
            sug = sched.suggest(trial_id=next_id)
        except ValueError:
            # Syne Tune 0.13.0's model-based searchers fail in suggest once restrict_configurations is
            # used up (nothing to promote and no config left): the run is over
            if len(used) < len(configs):
                raise
            sug = None
        if sug is None:
            stop = "exhausted"
            break
        if sug.spawn_new_trial_id:
            cands = [c for c in by_key.get(_key({k: sug.config[k] for k in space}), []) if c not in used]
            if not cands:
                raise RuntimeError(f"{scheduler}: suggested a config the table does not have: {sug.config}")
            cid = cands[0]
            used.add(cid)
            trial = Trial(trial_id=next_id, config=sug.config, creation_time=datetime.now())
            trials[next_id], last[next_id] = (trial, cid), 0
            sched.on_trial_add(trial)
            tid = next_id
            next_id += 1
        else:
            tid = int(sug.checkpoint_trial_id)
            trial, cid = trials[tid]
        while now < budget:
            e = last[tid] + 1
            now += float(costs[cid][e - 1])
            s = scores[cid][e - 1]
            last[tid] = e
            out["time"].append(now)
            out["score"].append(s)  # NaN stays NaN for the regret (never an incumbent)
            out["config_id"].append(cid)
            out["epoch"].append(e)
            reported = s if s is not None and math.isfinite(s) else worst
            result = {METRIC: reported, RESOURCE: e}
            decision = sched.on_trial_result(trial, result)
            if e >= R:
                sched.on_trial_complete(trial, result)
                break
            if decision != SchedulerDecision.CONTINUE:
                break
    return {**out, "stop_reason": stop}


def _drive_main() -> int:
    """stdin: {"datasets": [...], "schedulers": [...], "seeds": [...]}; stdout: one JSON line per run."""
    import logging

    logging.disable(logging.WARNING)
    job = json.loads(sys.stdin.read())
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the output
    for ds in job["datasets"]:
        for scheduler in job["schedulers"]:
            for seed in job["seeds"]:
                t0 = time.perf_counter()
                res = drive(ds, scheduler, int(seed))
                rec = {"dataset": ds["dataset"], "scheduler": scheduler, "seed": int(seed), **res}
                rec["wall_seconds"] = time.perf_counter() - t0
                print(
                    f"{ds['dataset']} {scheduler} s{seed}: {len(res['time'])} steps, {rec['wall_seconds']:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                out.write(json.dumps(rec) + "\n")
                out.flush()
    return 0


# --- the parent: runs in .venv (the harness's table loading, budget and regret) ----------------------


def _peers_python() -> str:
    return os.environ.get("QUICKTUNE_PEERS_PYTHON") or str(ROOT / ".venv-peers" / "bin" / "python")


def run_direct(
    curves_list: list[Any], budgets: dict[str, float], schedulers: list[str], seeds: list[int]
) -> list[dict]:
    """Drive ``schedulers`` on every dataset in the peers' venv; returns run records of the harness's format."""
    job = {
        "schedulers": schedulers,
        "seeds": seeds,
        "datasets": [
            {
                "dataset": c.dataset,
                "configs": [[cid, cfg] for cid, cfg in c.configs],
                "scores": {k: [None if not math.isfinite(x) else float(x) for x in v] for k, v in c.scores.items()},
                "costs": {k: [float(x) for x in v] for k, v in c.costs.items()},
                "max_epochs": c.max_epochs,
                "worst": c.worst,
                "budget": budgets[c.dataset],
            }
            for c in curves_list
        ],
    }
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run(
        [_peers_python(), str(Path(__file__).resolve()), "--drive"],
        input=json.dumps(job),
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"direct drive failed (exit code {proc.returncode}; its stderr is above)")
    info = {c.dataset: c for c in curves_list}
    records = []
    for line in proc.stdout.splitlines():
        r = json.loads(line)
        c = info[r["dataset"]]
        scores = [math.nan if s is None else s for s in r["score"]]
        records.append(
            {
                "dataset": r["dataset"],
                "optimizer": f"direct-{r['scheduler']}",
                "seed": r["seed"],
                "budget": budgets[r["dataset"]],
                "best": c.best,
                "worst": c.worst,
                "max_epochs": c.max_epochs,
                "trajectory": {
                    "time": r["time"],
                    "table_time": r["time"],
                    "score": scores,
                    "config_id": r["config_id"],
                    "epoch": r["epoch"],
                },
                "n_steps": len(r["time"]),
                "stop_reason": r["stop_reason"],
                "wall_seconds": r["wall_seconds"],
            }
        )
    return records


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:] == ["--drive"]:
        return _drive_main()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default=str(ROOT.parent / "shared" / "tables" / "medqt_portfolio.parquet"))
    ap.add_argument("--budget-multiple", type=float, default=5.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--datasets", default="", help="comma-separated (default: all)")
    ap.add_argument("--schedulers", default=",".join(SCHEDULERS))
    ap.add_argument("--no-harness", action="store_true", help="direct drive only")
    ap.add_argument("--out", default="out/peers_direct")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from quicktune.bench.runner import run_benchmark
    from quicktune.bench.simulator import DatasetCurves
    from quicktune.bench.summary import summarize
    from quicktune.lct import load_lct
    from quicktune.optimizer import registry

    registry.register("asha-quantile", "quicktune.optimizer.baselines:ASHA", promotion="quantile")

    table = load_lct(args.table)
    all_ds = sorted(table["dataset"].unique().tolist())
    datasets = [d for d in args.datasets.split(",") if d] or all_ds
    schedulers = [s for s in args.schedulers.split(",") if s]
    seeds = list(range(args.seeds))
    curves = [DatasetCurves.from_table(table, d) for d in datasets]
    budgets = {c.dataset: args.budget_multiple * c.median_curve_cost() for c in curves}
    out = Path(args.out)
    t0 = time.perf_counter()
    direct = run_direct(curves, budgets, schedulers, seeds)
    print(f"direct drive: {len(direct)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
    (out / "direct" / "runs").mkdir(parents=True, exist_ok=True)
    for r in direct:
        p = out / "direct" / "runs" / f"{r['dataset']}__{r['optimizer']}__s{r['seed']}.json"
        p.write_text(json.dumps(r))
    harness: list[dict] = []
    if not args.no_harness:
        names = [n for s in schedulers for n in HARNESS_NAMES[s]]
        t0 = time.perf_counter()
        run_benchmark(
            table,
            names,
            seeds,
            args.budget_multiple,
            out / "harness",
            meta_train="none",
            datasets=datasets,
            plots=False,
            title="harness",
        )
        from quicktune.bench.summary import load_runs

        harness = [r for r in load_runs(out / "harness") if r["optimizer"] in names and r["dataset"] in datasets]
        harness = [r for r in harness if r.get("budget_multiple") == args.budget_multiple and r["seed"] in seeds]
        print(f"harness: {len(harness)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
    table_clock = summarize(direct + harness, clock="table_time")["optimizers"]
    with_overhead = summarize(harness, clock="time")["optimizers"] if harness else {}
    cps = "/".join(f"{c:g}" for c in (0.1, 0.25, 0.5, 1.0))
    print(
        f"\nmean normalized regret at {cps} of the budget ({len(datasets)} datasets x {len(seeds)} seeds, "
        f"budget {args.budget_multiple:g} x the median full curve)\n"
    )
    print("| optimizer | table clock | harness clock with overhead |")
    print("|---|---|---|")
    for name, v in table_clock.items():
        w = with_overhead.get(name)
        fmt = "/".join(f"{x:.3f}" for x in v["regret"])
        print(f"| {name} | {fmt} | {'/'.join(f'{x:.3f}' for x in w['regret']) if w else '-'} |")
    result = {
        "command": "benchmarks/peers_direct.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "table": args.table,
        "datasets": datasets,
        "seeds": seeds,
        "budget_multiple": args.budget_multiple,
        "regret_table_clock": {k: v["regret"] for k, v in table_clock.items()},
        "regret_harness_overhead_clock": {k: v["regret"] for k, v in with_overhead.items()},
    }
    (out / "comparison.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
