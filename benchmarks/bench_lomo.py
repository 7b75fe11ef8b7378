"""Leave-one-model-out and leave-one-source-out on the shipped meta-dataset table (issue 14).

Leave-one-dataset-out flatters meta-learning on this table: the class subsets of a source
(``digits-c01234`` beside ``digits``) stay in meta-training. Two stricter questions:

- **lomo**: meta-train without every curve of model m (all tasks), search on the tasks whose pool
  contains m (the whole pool, m included), for every m. Does the descriptor encoding let the
  optimizer judge a model it never saw? ``quicktune`` (descriptor) vs ``quicktune-onehot`` (the
  unseen model encodes as all zeros) vs ``quicktune-nometa``. The evaluated task's curves of the
  other models stay in meta-training (a new model on known tasks).
- **loso**: meta-train without every task of source s, search on each task of s (a new task, no
  sibling seen): ``quicktune`` vs ``quicktune-nometa`` and the baselines.

Both go through ``quicktune.bench.runner.run_benchmark`` (``meta_train="lomo"`` / ``"loso"``); runs
land in ``--out`` (one JSON each, reused when the command is repeated). Seeds go outer (one pass
per seed; with ``--jobs 1`` the meta-trainings are cached across passes, ``--jobs N`` redoes them in
each pass). The JSON written to ``--json-dir`` (``lomo.json``, ``lomo_loso.json``; rewritten after
each seed) holds, per part and optimizer, the mean normalized regret at 10/25/50/100 % of the budget
with its standard error (over the (task, seed) problems, after averaging a task's searches over the
held-out units that searched it: under lomo a non-meta method's search does not depend on the unit),
the same per held-out unit, the paired difference to ``quicktune-nometa``, and for lomo whether the
held-out model owns the task's best config, the share of searched epochs spent on it and how
often the final incumbent is one of its configs.

    nice -n 10 .venv/bin/python benchmarks/bench_lomo.py --parts lomo --seeds 3
    nice -n 10 .venv/bin/python benchmarks/bench_lomo.py --parts loso --seeds 3
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LOMO_OPTIMIZERS = ["quicktune", "quicktune-onehot", "quicktune-nometa"]
LOSO_OPTIMIZERS = ["quicktune", "quicktune-nometa", "dyhpo", "random", "asha"]
CHECKPOINTS = [0.1, 0.25, 0.5, 1.0]
REFERENCE = "quicktune-nometa"


def _mean_se(x: Sequence[float]) -> dict[str, Any]:
    """Mean, standard error (None with fewer than two values) and count."""
    a = np.asarray(x, dtype=float)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else None
    return {"mean": float(a.mean()) if len(a) else None, "se": se, "n": len(a)}


def regret_frame(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (run, checkpoint): optimizer, held_out, dataset, seed, fraction, regret."""
    from quicktune.bench.summary import run_regret

    rows = []
    for r in runs:
        reg = run_regret(r, CHECKPOINTS, "time")
        for f, v in zip(CHECKPOINTS, reg, strict=True):
            rows.append((r["optimizer"], str(r.get("held_out")), r["dataset"], int(r["seed"]), f, float(v)))
    return pd.DataFrame(rows, columns=["optimizer", "held_out", "dataset", "seed", "fraction", "regret"])


def aggregate(df: pd.DataFrame, optimizers: Sequence[str]) -> dict[str, Any]:
    """Mean +- standard error per optimizer and checkpoint, overall and per held-out unit, and the
    paired difference to ``REFERENCE``."""
    out: dict[str, Any] = {"overall": {}, "per_unit": {}, "paired_vs_nometa": {}}
    # per_unit: mean +- se over the unit's (task, seed) searches; paired_vs_nometa_per_search: over
    # every (unit, task, seed) search (under lomo the reference's search is shared by the units)
    # overall: average over the units that searched a (task, seed), then mean +- se over (task, seed)
    per_problem = df.groupby(["optimizer", "dataset", "seed", "fraction"])["regret"].mean().reset_index()
    for name in optimizers:
        sub = per_problem[per_problem["optimizer"] == name]
        out["overall"][name] = [_mean_se(sub[sub["fraction"] == f]["regret"].tolist()) for f in CHECKPOINTS]
        if name != REFERENCE and REFERENCE in optimizers:
            a = sub.set_index(["dataset", "seed", "fraction"])["regret"]
            ref = per_problem[per_problem["optimizer"] == REFERENCE].set_index(["dataset", "seed", "fraction"])
            d = (a - ref["regret"]).dropna().reset_index()
            out["paired_vs_nometa"][name] = [_mean_se(d[d["fraction"] == f]["regret"].tolist()) for f in CHECKPOINTS]
    # per search: each (unit, task, seed) search against the reference's search of that (task, seed)
    ref_ts = per_problem[per_problem["optimizer"] == REFERENCE].set_index(["dataset", "seed", "fraction"])["regret"]
    out["paired_vs_nometa_per_search"] = {}
    for name in optimizers:
        if name == REFERENCE or REFERENCE not in optimizers:
            continue
        sub = df[df["optimizer"] == name]
        diff = (
            sub["regret"].to_numpy()
            - ref_ts.reindex(pd.MultiIndex.from_frame(sub[["dataset", "seed", "fraction"]])).to_numpy()
        )
        sub = sub.assign(diff=diff).dropna(subset=["diff"])
        out["paired_vs_nometa_per_search"][name] = [
            _mean_se(sub[sub["fraction"] == f]["diff"].tolist()) for f in CHECKPOINTS
        ]
    if "quicktune" in optimizers and "quicktune-onehot" in optimizers:  # the encoding ablation, same searches
        key = ["held_out", "dataset", "seed", "fraction"]
        a = df[df["optimizer"] == "quicktune"].set_index(key)["regret"]
        b = df[df["optimizer"] == "quicktune-onehot"].set_index(key)["regret"]
        d = (a - b).dropna().reset_index()
        out["descriptor_minus_onehot_per_search"] = [
            _mean_se(d[d["fraction"] == f]["regret"].tolist()) for f in CHECKPOINTS
        ]
    for unit, g in df.groupby("held_out"):
        out["per_unit"][unit] = {
            name: [_mean_se(g[(g["optimizer"] == name) & (g["fraction"] == f)]["regret"].tolist()) for f in CHECKPOINTS]
            for name in optimizers
            if (g["optimizer"] == name).any()
        }
    return out


def lomo_diagnostics(runs: Sequence[Mapping[str, Any]], table: pd.DataFrame) -> dict[str, Any]:
    """Per (held-out model, task): does the model own the task's best config; per optimizer, the share
    of searched epochs on the held-out model's configs and how often the final incumbent is one of them."""
    model_of = {(str(d), str(c)): str(m) for d, c, m in table[["dataset", "config_id", "hp.model"]].itertuples(False)}
    best_model = {}
    for d, g in table.groupby("dataset"):
        i = g["score"].idxmax()
        best_model[str(d)] = str(table.loc[i, "hp.model"])
    owns = {}
    share: dict[str, list[float]] = defaultdict(list)
    inc_is_m: dict[str, list[float]] = defaultdict(list)
    reg_when_owns: dict[str, list[float]] = defaultdict(list)
    reg_otherwise: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        m, d, name = str(r["held_out"]), str(r["dataset"]), r["optimizer"]
        owns[f"{m} / {d}"] = best_model[d] == m
        tr = r["trajectory"]
        cids = [str(c) for c in tr["config_id"]]
        on_m = [model_of.get((d, c)) == m for c in cids]
        share[name].append(float(np.mean(on_m)) if on_m else 0.0)
        scores = [
            s if s is not None and not (isinstance(s, float) and math.isnan(s)) else -math.inf for s in tr["score"]
        ]
        if scores and max(scores) > -math.inf:
            inc_is_m[name].append(float(on_m[int(np.argmax(scores))]))
        (reg_when_owns if best_model[d] == m else reg_otherwise)[name].append(float(r["final_regret"]))
    return {
        "best_config_model": best_model,
        "held_out_owns_best": owns,
        "share_of_epochs_on_held_out_model": {k: _mean_se(v) for k, v in share.items()},
        "final_incumbent_is_held_out_model": {k: _mean_se(v) for k, v in inc_is_m.items()},
        "final_regret_when_held_out_owns_best": {k: _mean_se(v) for k, v in reg_when_owns.items()},
        "final_regret_otherwise": {k: _mean_se(v) for k, v in reg_otherwise.items()},
    }


def domain_scores(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted({r["optimizer"] for r in runs}):
        s = [r["domain_score"] for r in runs if r["optimizer"] == name and r.get("domain_score") is not None]
        ms = [
            r["domain_model_score"] for r in runs if r["optimizer"] == name and r.get("domain_model_score") is not None
        ]
        if s:
            out[name] = {"domain_score": _mean_se(s), "model_score": _mean_se(ms)}
    return out


def _fmt(c: Mapping[str, Any], spec: str = ".3f") -> str:
    if c["mean"] is None:
        return "-"
    return f"{c['mean']:{spec}}" + (f" ± {c['se']:.3f}" if c["se"] is not None else "")


def format_table(agg: Mapping[str, Any], optimizers: Sequence[str]) -> str:
    lines = ["| optimizer | 10 % | 25 % | 50 % | 100 % |", "|---|---|---|---|---|"]
    for name in optimizers:
        cells = [_fmt(c) for c in agg["overall"][name]]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    for name, cells in agg["paired_vs_nometa"].items():
        lines.append(f"| `{name}` − nometa (paired) | " + " | ".join(_fmt(c, "+.3f") for c in cells) + " |")
    return "\n".join(lines)


def split_by_owns_best(df: pd.DataFrame, owns: Mapping[str, bool], optimizers: Sequence[str]) -> dict[str, Any]:
    """Regret and paired difference to ``REFERENCE`` at every checkpoint, separately for the searches
    whose held-out model owns the task's best config and the others (``owns``: the
    ``"<model> / <task>"`` keys of :func:`lomo_diagnostics`). The reference's search of a (task, seed)
    does not depend on the held-out model; it is compared with every unit's search of it."""
    ref = df[df["optimizer"] == REFERENCE].groupby(["dataset", "seed", "fraction"])["regret"].mean()
    key = df["held_out"].astype(str) + " / " + df["dataset"].astype(str)
    df = df.assign(owns=key.map(lambda k: bool(owns.get(k, False))))
    out: dict[str, Any] = {}
    for flag, label in ((True, "owns_best"), (False, "otherwise")):
        part: dict[str, Any] = {}
        for name in optimizers:
            if name == REFERENCE:
                continue
            sub = df[(df["optimizer"] == name) & (df["owns"] == flag)]
            if sub.empty:
                continue
            paired = (
                sub["regret"].to_numpy()
                - ref.reindex(pd.MultiIndex.from_frame(sub[["dataset", "seed", "fraction"]])).to_numpy()
            )
            sub = sub.assign(diff=paired)
            part[name] = {
                "regret": [_mean_se(sub[sub["fraction"] == f]["regret"].tolist()) for f in CHECKPOINTS],
                "minus_reference": [_mean_se(sub[sub["fraction"] == f]["diff"].dropna().tolist()) for f in CHECKPOINTS],
            }
        out[label] = part
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from quicktune.bench.runner import run_benchmark
    from quicktune.lct import load_lct
    from quicktune.metadataset import shipped_table_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default=None, help="learning-curve table (default: the shipped meta-dataset)")
    ap.add_argument("--parts", default="lomo,loso", help="comma-separated: lomo, loso")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget-multiple", type=float, default=2.0)
    ap.add_argument("--meta-train-epochs", type=int, default=10)
    ap.add_argument(
        "--lomo-datasets",
        default="digits,fashion-mnist,lfw",
        help="tasks searched under lomo (by default one per source but mnist5k, for time; 'all' for every "
        "task); "
        "meta-training always uses every task",
    )
    ap.add_argument("--loso-datasets", default="all", help="tasks searched under loso ('all': every task)")
    ap.add_argument("--jobs", type=int, default=1, help="held-out units run in parallel processes")
    ap.add_argument("--overhead-clock", choices=["wall", "cpu"], default="cpu")
    ap.add_argument("--out", default="out/lomo", help="run folder (one sub-folder per part)")
    ap.add_argument(
        "--json-dir", default="benchmarks/results", help="writes lomo.json (lomo part) and lomo_loso.json (loso part)"
    )
    ap.add_argument(
        "--summarize-only",
        action="store_true",
        help="run nothing: rewrite the JSON from the finished runs in --out (the first --seeds seeds)",
    )
    args = ap.parse_args(argv)

    table_path = args.table or str(shipped_table_path())
    table = load_lct(table_path)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    result: dict[str, Any] = {
        "command": "benchmarks/bench_lomo.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "table": Path(table_path).name,
        "seeds": args.seeds,
        "budget_multiple": args.budget_multiple,
        "meta_train_epochs": args.meta_train_epochs,
        "overhead_clock": args.overhead_clock,
        "checkpoints": CHECKPOINTS,
        "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "parts": {},
    }
    for part in parts:
        if part not in ("lomo", "loso"):
            ap.error(f"unknown part {part!r} (lomo, loso)")
        optimizers = LOMO_OPTIMIZERS if part == "lomo" else LOSO_OPTIMIZERS
        chosen = args.lomo_datasets if part == "lomo" else args.loso_datasets
        datasets = None if chosen == "all" else [d.strip() for d in chosen.split(",") if d.strip()]
        t0 = time.time()
        if args.summarize_only:
            _write_part(args, part, optimizers, datasets, args.seeds, t0, table, result)
            continue
        done = [0]

        def on_run(rec: dict, part: str = part, done: list[int] = done) -> None:
            done[0] += 1
            print(
                f"[{part} {done[0]}] {rec.get('held_out')} / {rec['dataset']} {rec['optimizer']} s{rec['seed']}: "
                f"regret {rec['final_regret']:.3f} ({rec['wall_seconds']:.1f} s)",
                flush=True,
            )

        # seeds outer (one pass per seed, meta-trainings cached in the process across passes): a run
        # stopped early still has complete seeds, and the JSON is rewritten after every pass
        for seed in range(args.seeds):
            run_benchmark(
                table,
                optimizers,
                [seed],
                args.budget_multiple,
                Path(args.out) / part,
                meta_train=part,
                datasets=datasets,
                jobs=args.jobs,
                overhead_clock=args.overhead_clock,
                title=f"{part}, meta-dataset",
                meta_train_options={"epochs": args.meta_train_epochs},
                on_run=on_run,
            )
            _write_part(args, part, optimizers, datasets, seed + 1, t0, table, result)
    return 0


def _write_part(
    args: argparse.Namespace,
    part: str,
    optimizers: Sequence[str],
    datasets: Sequence[str] | None,
    n_seeds: int,
    t0: float,
    table: pd.DataFrame,
    result: dict[str, Any],
) -> None:
    """Aggregate the part's runs of the first ``n_seeds`` seeds and (re)write its JSON."""
    from quicktune.bench.summary import load_runs

    # only this command's runs (the folder may hold runs of other settings)
    want = {"budget_multiple": args.budget_multiple, "overhead_clock": args.overhead_clock}
    runs = [
        r
        for r in load_runs(Path(args.out) / part)
        if r["optimizer"] in optimizers
        and int(r["seed"]) < n_seeds
        and (datasets is None or r["dataset"] in datasets)
        and all(r["settings"].get(k) == v for k, v in want.items())
        and r["settings"].get("meta_train_options") == {"epochs": args.meta_train_epochs}
    ]
    df = regret_frame(runs)
    agg = aggregate(df, optimizers)
    entry: dict[str, Any] = {
        "optimizers": optimizers,
        "datasets": sorted({r["dataset"] for r in runs}),
        "held_out_units": sorted({str(r.get("held_out")) for r in runs}),
        "n_runs": len(runs),
        "seeds_done": n_seeds,
        # a --summarize-only pass ran nothing: no wall time of its own to report
        "wall_seconds": None if args.summarize_only else round(time.time() - t0, 1),
        "run_wall_seconds": round(sum(float(r.get("wall_seconds", 0.0)) for r in runs), 1),
        **agg,
        "domain": domain_scores(runs),
    }
    if part == "lomo":
        entry["diagnostics"] = lomo_diagnostics(runs, table)
        entry["split_by_owns_best"] = split_by_owns_best(df, entry["diagnostics"]["held_out_owns_best"], optimizers)
    result["parts"][part] = entry
    print(
        f"\n{part}: {len(runs)} runs, {entry['wall_seconds']} s\n" + format_table(agg, optimizers) + "\n",
        flush=True,
    )
    path = Path(args.json_dir) / ("lomo.json" if part == "lomo" else "lomo_loso.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "parts": {part: entry}}, indent=1, default=float))


if __name__ == "__main__":
    sys.exit(main())
