"""The meta-learning curve: does Quick-Tune find good configs faster the more tasks a team has
already searched? (issue 15: the product's central claim, "the more you search, the faster it finds").

A team's history is replayed on a learning-curve table. Tasks arrive one at a time in a random
order; before task ``k`` the surrogate is meta-trained on the tasks ``1..k-1`` already seen, and a
simulated search (the ``quicktune bench`` simulator, :func:`quicktune.bench.runner.run_one`) runs on
task ``k``; ``quicktune-nometa`` runs on the same task and seed beside it. The output is the mean
normalized regret at 10 / 25 / 50 / 100 % of the budget against ``k``, over ``--orders`` random
orders x ``--seeds`` search seeds, with standard errors and the paired difference to nometa.

What is honest (and what the script enforces):

- **Never task k or its siblings.** Tasks of one *source* (``digits``, ``digits-c01234`` and
  ``digits-c56789`` are subsets of one dataset: :func:`quicktune.metadataset.info.source_of`) are
  near-copies, so the meta-training set for task ``k`` leaves out every task of ``k``'s source,
  also when they came earlier in the order. A history of ``k-1`` tasks therefore teaches with
  ``k-1`` minus the siblings seen so far (recorded per run as ``trained_on``).
- **Nothing to learn from = nometa.** When that set is empty (``k = 1``, or only siblings so far)
  the ``quicktune`` arm *is* ``quicktune-nometa`` (the same run is reused, ``trained_on = []``).
- **"With the shipped table".** When the history is the shipped table itself (the default:
  ``--history-table`` not given), a "shipped background" arm would be the history again (leak), so
  only the history arm runs. With ``--history-table H`` (a team's own table, e.g. the partial v2
  campaign table), ``--table`` is the shipped *background*, and three arms run: ``history``
  (``H``'s tasks ``1..k-1``), ``history+shipped`` (those plus the background's tasks) and
  ``shipped`` (background only: flat in ``k``, the reference); the background's tasks of task
  ``k``'s source are dropped too, and its task names get a ``shipped:`` prefix so that a history
  task of the same name stays a different task.

Meta-trainings are cached by their exact training set (shared by seeds, and by orders that reach
the same set); nometa runs by (task, seed). Budget per task: ``--budget-multiple`` x the median cost
of one full curve of that task (as in ``bench_regret.py``: 2 on the real-curve table). The optimizer
overhead is charged as thread CPU time (``overhead_clock="cpu"``: the wall clock of a shared VM would
charge other people's load); the regret is reported on that clock and on the pure table clock.

    nice -n 10 .venv/bin/python benchmarks/bench_metalearning_curve.py --orders 6 --seeds 2 \\
        --meta-train-epochs 5 --out benchmarks/results/metalearning_curve.json \\
        --plot docs/img/metalearning_curve.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CHECKPOINTS = [0.1, 0.25, 0.5, 1.0]
NOMETA = "quicktune-nometa"
BACKGROUND_PREFIX = "shipped:"


def default_source() -> Callable[[str], str]:
    """Task name -> source, by the packaged dataset names (``fashion-mnist-c02346`` -> ``fashion-mnist``)."""
    from quicktune.data.packaged import LOADERS
    from quicktune.metadataset.info import source_of

    names = sorted(LOADERS)
    return lambda task: source_of(task.removeprefix(BACKGROUND_PREFIX), names)


def spread_over_sources(tasks: Sequence[str], source: Callable[[str], str]) -> list[str]:
    """``tasks`` round-robin over their sources (the first of each source by name, then the second...),
    so that the first N of them are as unrelated as the table allows."""
    rank: dict[str, int] = {}
    keyed = []
    for t in sorted(tasks):
        rank[source(t)] = rank.get(source(t), -1) + 1
        keyed.append((rank[source(t)], t))
    return [t for _, t in sorted(keyed)]


def random_orders(tasks: Sequence[str], n: int, seed: int = 0) -> list[list[str]]:
    """``n`` random orders of ``tasks`` (distinct while possible), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    out: list[list[str]] = []
    for _ in range(n):
        for _try in range(50):
            order = [tasks[i] for i in rng.permutation(len(tasks))]
            if order not in out:
                break
        out.append(order)
    return out


def training_set(
    order: Sequence[str], k: int, arm: str, background: Sequence[str], source: Callable[[str], str]
) -> list[str]:
    """The tasks the ``arm`` meta-trains on before task ``order[k-1]`` (k from 1): the history
    ``order[:k-1]`` and/or the background, always without task k's source."""
    src = source(order[k - 1])
    hist = [t for t in order[: k - 1] if source(t) != src] if arm in ("history", "history+shipped") else []
    bg = [t for t in background if source(t) != src] if arm in ("shipped", "history+shipped") else []
    return sorted(hist + bg)


def _regrets(rec: Mapping[str, Any]) -> dict[str, list[float]]:
    from quicktune.bench.summary import run_regret

    out = {}
    for clock in ("time", "table_time"):
        out[clock] = [float(x) for x in run_regret(rec, CHECKPOINTS, clock)]
    return out


def _mean_se(values: Sequence[Sequence[float]]) -> dict[str, Any]:
    a = np.asarray(values, dtype=float)
    n = len(a)
    mean = a.mean(axis=0) if n else np.full(len(CHECKPOINTS), math.nan)
    se = a.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.full(len(CHECKPOINTS), math.nan)
    return {"n": n, "mean": [round(float(x), 5) for x in mean], "se": [round(float(x), 5) for x in se]}


def play(
    history: pd.DataFrame,
    background: pd.DataFrame | None = None,
    orders: int = 4,
    seeds: int = 2,
    budget_multiple: float = 2.0,
    meta_train_options: Mapping[str, Any] | None = None,
    source: Callable[[str], str] | None = None,
    order_seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Replay ``orders`` random orders of ``history``'s tasks x ``seeds`` search seeds; return the
    JSON document (settings, every run, and the curve: mean/SE regret per arm and k)."""
    import torch

    from quicktune.bench.runner import TABLE_IMAGE_SIZE, run_one, table_descriptors
    from quicktune.bench.simulator import DatasetCurves
    from quicktune.optimizer.metatrain import meta_train

    torch.set_num_threads(1)
    source = source or default_source()
    tasks = sorted(history["dataset"].unique().tolist())
    bg_tasks: list[str] = []
    table = history
    if background is not None:
        background = background.assign(dataset=BACKGROUND_PREFIX + background["dataset"].astype(str))
        bg_tasks = sorted(background["dataset"].unique().tolist())
        table = pd.concat([history, background], ignore_index=True)
    arms = ["history"] if background is None else ["history", "history+shipped", "shipped"]
    descriptors = table_descriptors(table.drop_duplicates("config_id").to_dict("records"))
    mt_opts = dict(meta_train_options or {})
    curves = {t: DatasetCurves.from_table(history, t) for t in tasks}
    budgets = {t: budget_multiple * c.median_curve_cost() for t, c in curves.items()}
    artifacts: dict[tuple[str, ...], Any] = {}
    runs: dict[tuple[tuple[str, ...], str, int], dict[str, Any]] = {}
    mt_seconds: list[float] = []

    def artifact_for(train: list[str]) -> Any:
        key = tuple(train)
        if key not in artifacts:
            t0 = time.perf_counter()
            sub = table[table["dataset"].isin(train)]
            artifacts[key] = meta_train(sub, model_descriptors=descriptors, image_size=TABLE_IMAGE_SIZE, **mt_opts)
            mt_seconds.append(time.perf_counter() - t0)
            log(f"  meta-trained on {len(train)} task(s) in {mt_seconds[-1]:.1f} s")
        return artifacts[key]

    def run(task: str, train: list[str], seed: int) -> dict[str, Any]:
        key = (tuple(train), task, seed)
        if key not in runs:
            art = artifact_for(train) if train else None
            name = "quicktune" if train else NOMETA
            rec = run_one(curves[task], name, seed, budgets[task], artifact=art, overhead_clock="cpu")
            runs[key] = {"regret": _regrets(rec), "n_steps": rec["n_steps"], "wall_seconds": rec["wall_seconds"]}
        return runs[key]

    records: list[dict[str, Any]] = []
    order_list = random_orders(tasks, orders, order_seed)
    t_start = time.perf_counter()
    for oi, order in enumerate(order_list):
        log(f"order {oi}: {' -> '.join(order)}")
        for k in range(1, len(order) + 1):
            task = order[k - 1]
            for seed in range(seeds):
                nm = run(task, [], seed)
                records.append(_record(oi, k, task, source(task), seed, NOMETA, [], nm))
                for arm in arms:
                    train = training_set(order, k, arm, bg_tasks, source)
                    if task in train or any(source(t) == source(task) for t in train):  # never: the guard of the claim
                        raise AssertionError(f"task {task} or a sibling in its own meta-training set {train}")
                    r = run(task, train, seed)
                    records.append(_record(oi, k, task, source(task), seed, f"quicktune[{arm}]", train, r))
                log(
                    f"  k={k} {task} s{seed}: nometa {nm['regret']['time'][1]:.3f}@25% | "
                    + " | ".join(
                        f"{r['arm']} {r['regret']['time'][1]:.3f}"
                        for r in records[-len(arms) :]  # the arms just recorded
                    )
                    + f"  ({time.perf_counter() - t_start:.0f} s)"
                )
    return {
        "checkpoints": CHECKPOINTS,
        "settings": {
            "tasks": tasks,
            "background_tasks": bg_tasks,
            "sources": {t: source(t) for t in tasks + bg_tasks},
            "orders": order_list,
            "seeds": seeds,
            "budget_multiple": budget_multiple,
            "meta_train_options": mt_opts,
            "overhead_clock": "cpu",
            "arms": [NOMETA] + [f"quicktune[{a}]" for a in arms],
        },
        "meta_trainings": len(artifacts),
        "meta_train_seconds_mean": round(float(np.mean(mt_seconds)), 2) if mt_seconds else 0.0,
        "distinct_runs": len(runs),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "curve": curve(records, len(tasks)),
        "runs": records,
    }


def _record(oi: int, k: int, task: str, src: str, seed: int, arm: str, train: list[str], r: dict) -> dict[str, Any]:
    return {
        "order": oi,
        "k": k,
        "task": task,
        "source": src,
        "seed": seed,
        "arm": arm,
        "trained_on": list(train),
        "regret": r["regret"],
        "n_steps": r["n_steps"],
    }


def curve(records: Sequence[Mapping[str, Any]], n_tasks: int) -> dict[str, Any]:
    """Per arm and clock: one entry per k with n, mean and SE of the regret at each checkpoint; and
    per quicktune arm the paired difference to nometa (quicktune - nometa: < 0 = meta-learning helps)."""
    arms = list(dict.fromkeys(r["arm"] for r in records))
    out: dict[str, Any] = {}
    nometa = {(r["order"], r["k"], r["seed"]): r for r in records if r["arm"] == NOMETA}
    for clock in ("time", "table_time"):
        per: dict[str, Any] = {}
        for arm in arms:
            rows = []
            for k in range(1, n_tasks + 1):
                mine = [r for r in records if r["arm"] == arm and r["k"] == k]
                entry = {"k": k, **_mean_se([r["regret"][clock] for r in mine])}
                if arm != NOMETA:
                    diff = [
                        np.subtract(r["regret"][clock], nometa[(r["order"], r["k"], r["seed"])]["regret"][clock])
                        for r in mine
                    ]
                    d = _mean_se(diff)
                    entry["diff_vs_nometa"] = {"mean": d["mean"], "se": d["se"]}
                    entry["mean_trained_on"] = round(float(np.mean([len(r["trained_on"]) for r in mine])), 2)
                rows.append(entry)
            per[arm] = rows
        out[clock] = per
        out[f"{clock}_trend"] = {arm: _trend(records, arm, nometa, clock) for arm in arms if arm != NOMETA}
    return out


def _trend(records: Sequence[Mapping[str, Any]], arm: str, nometa: Mapping[tuple, Any], clock: str) -> dict[str, Any]:
    """Least-squares slope of the paired difference (quicktune - nometa) on k, per checkpoint, with
    its naive SE (runs of one order share meta-training sets, so the SE is optimistic): < 0 means the
    advantage of meta-learning grows with the history."""
    mine = [r for r in records if r["arm"] == arm]
    k = np.array([r["k"] for r in mine], dtype=float)
    d = np.array(
        [np.subtract(r["regret"][clock], nometa[(r["order"], r["k"], r["seed"])]["regret"][clock]) for r in mine]
    )
    slopes, ses = [], []
    for ci in range(len(CHECKPOINTS)):
        kc = k - k.mean()
        sxx = float((kc**2).sum())
        if len(k) < 3 or sxx == 0:
            slopes.append(math.nan)
            ses.append(math.nan)
            continue
        b = float((kc * (d[:, ci] - d[:, ci].mean())).sum() / sxx)
        resid = d[:, ci] - d[:, ci].mean() - b * kc
        slopes.append(round(b, 5))
        ses.append(round(math.sqrt(float((resid**2).sum()) / (len(k) - 2) / sxx), 5))
    return {"slope_per_k": slopes, "se": ses, "n": len(mine)}


def markdown(doc: Mapping[str, Any], clock: str = "time") -> str:
    """The Markdown table: mean regret (SE) at 10/25/50/100 % per k and arm, and the trained-on size."""
    cur = doc["curve"][clock]
    arms = list(cur)
    lines = ["| k | arm | tasks trained on | 10 % | 25 % | 50 % | 100 % |", "|---|---|---|---|---|---|---|"]
    for i in range(len(cur[arms[0]])):
        for arm in arms:
            e = cur[arm][i]
            cells = [
                f"{m:.3f} ± {s:.3f}" if math.isfinite(s) else f"{m:.3f}"
                for m, s in zip(e["mean"], e["se"], strict=True)
            ]
            lines.append(f"| {e['k']} | {arm} | {e.get('mean_trained_on', 0):g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(doc: Mapping[str, Any], path: Path, title: str = "", clock: str = "time") -> None:
    """Regret at 10 % and 25 % of the budget vs k, one line per arm (± 1 SE band), and the paired
    difference quicktune - nometa (the task at position k changes with the order, so the per-k means of
    both arms move with it; the paired difference removes that)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cur = doc["curve"][clock]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), dpi=110)
    for ax, ci in zip(axes[:2], (0, 1), strict=True):
        for arm, rows in cur.items():
            k = np.array([e["k"] for e in rows])
            m = np.array([e["mean"][ci] for e in rows])
            s = np.nan_to_num(np.array([e["se"][ci] for e in rows]))
            (line,) = ax.plot(k, m, marker="o", lw=2.2 if arm.startswith("quicktune[") else 1.4, label=arm)
            ax.fill_between(k, m - s, m + s, color=line.get_color(), alpha=0.15, lw=0)
        ax.set_title(f"mean regret at {CHECKPOINTS[ci]:.0%} of the budget (± 1 SE)", fontsize=9)
    ax = axes[2]
    for arm, rows in cur.items():
        if arm == NOMETA:
            continue
        for ci, ls in ((0, "--"), (1, "-")):
            k = np.array([e["k"] for e in rows])
            m = np.array([e["diff_vs_nometa"]["mean"][ci] for e in rows])
            s = np.nan_to_num(np.array([e["diff_vs_nometa"]["se"][ci] for e in rows]))
            (line,) = ax.plot(k, m, marker="o", ls=ls, label=f"{arm} at {CHECKPOINTS[ci]:.0%}")
            ax.fill_between(k, m - s, m + s, color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_title("paired difference quicktune - nometa (< 0: history helps)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("k (meta-trained on tasks 1..k-1 minus task k's source)", fontsize=8)
        ax.set_xticks(range(1, len(next(iter(cur.values()))) + 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "the meta-learning curve", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default="", help="the shipped table (default: the packaged meta-dataset)")
    ap.add_argument(
        "--history-table",
        default="",
        help="a team's own table to replay; then --table is the shipped background (arms history, "
        "history+shipped, shipped). Default: the history is --table itself (history arm only)",
    )
    ap.add_argument("--orders", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--order-seed", type=int, default=0)
    ap.add_argument("--budget-multiple", type=float, default=2.0, help="x the median full-curve cost of each task")
    ap.add_argument("--meta-train-epochs", type=int, default=5)
    ap.add_argument("--steps-per-epoch", type=int, default=50)
    ap.add_argument(
        "--max-tasks",
        type=int,
        default=0,
        help="replay only N tasks of the history, taken round-robin over its sources (0 = all)",
    )
    ap.add_argument("--out", default="benchmarks/results/metalearning_curve.json")
    ap.add_argument("--plot", default="", help="PNG of regret at 10 %% and 25 %% vs k")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    from quicktune.lct import load_lct
    from quicktune.metadataset import shipped_table_path

    shipped = args.table or str(shipped_table_path())
    if args.history_table:
        history, background = load_lct(args.history_table), load_lct(shipped)
    else:
        history, background = load_lct(shipped), None
    if args.max_tasks > 0:
        keep = spread_over_sources(history["dataset"].unique().tolist(), default_source())[: args.max_tasks]
        history = history[history["dataset"].isin(keep)]
    doc = play(
        history,
        background,
        orders=args.orders,
        seeds=args.seeds,
        budget_multiple=args.budget_multiple,
        meta_train_options={"epochs": args.meta_train_epochs, "steps_per_epoch": args.steps_per_epoch},
        order_seed=args.order_seed,
    )
    doc["command"] = " ".join(["benchmarks/bench_metalearning_curve.py", *(argv if argv is not None else sys.argv[1:])])
    doc["tables"] = {"shipped": Path(shipped).name, "history": Path(args.history_table).name or Path(shipped).name}
    doc["finished_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(doc))
    for arm, t in doc["curve"]["time_trend"].items():
        print(f"slope of {arm} - nometa per k at 10/25/50/100 %: {t['slope_per_k']} (naive SE {t['se']})")
    print(
        f"{doc['meta_trainings']} meta-trainings ({doc['meta_train_seconds_mean']} s each), "
        f"{doc['distinct_runs']} distinct runs, {doc['wall_seconds']:.0f} s; JSON in {out}"
    )
    if args.plot:
        plot(doc, Path(args.plot), args.title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
