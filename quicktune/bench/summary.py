"""Aggregate benchmark runs: mean normalized regret and mean rank at fractions of the budget,
the result table, and the plots.

A *run record* is the dict the runner writes to ``DIR/runs/*.json``: at least ``dataset``,
``optimizer``, ``seed``, ``budget``, ``best``, ``worst`` and ``trajectory`` with equal-length lists
``time``, ``table_time`` and ``score``.

``DIR/summary.json`` is exactly ``{"checkpoints": [...], "optimizers": {NAME: {"regret": [...],
"rank": [...]}}}`` on the overhead-inclusive clock; ``summary_table_clock.json`` has the same
shape on the pure-table clock. Ranks are computed among the optimizers within each
(dataset, seed) and then averaged (1 = best; ties share the mean rank). When some runs are
missing (a benchmark stopped at a deadline), only the (dataset, seed) groups in which every
optimizer ran are averaged, so all optimizers are compared on the same problems.

Under leave-one-model-out / leave-one-source-out a record also names its ``held_out`` unit; the
problem is then (unit, dataset) (``"<unit> / <dataset>"`` in the tables: one task is searched once
per held-out model), and ``results.md`` adds the mean regret per held-out unit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quicktune.bench.regret import regret_at, regret_trajectory

CHECKPOINTS = [0.1, 0.25, 0.5, 1.0]
CLOCKS = {"time": "simulated seconds incl. optimizer overhead", "table_time": "table seconds only"}


def run_regret(run: Mapping[str, Any], fractions: Sequence[float], clock: str = "time") -> np.ndarray:
    """Normalized regret of one run at ``fractions`` of its budget on ``clock``."""
    traj = run["trajectory"]
    t, r = regret_trajectory(traj[clock], traj["score"], run["best"], run["worst"])
    return regret_at(t, r, np.asarray(fractions, dtype=float) * float(run["budget"]))


def problem(run: Mapping[str, Any]) -> str:
    """The problem a run solved: its dataset, or ``"<held-out unit> / <dataset>"``."""
    unit = run.get("held_out")
    return f"{unit} / {run['dataset']}" if unit is not None else str(run["dataset"])


def _frame(runs: Iterable[Mapping[str, Any]], fractions: Sequence[float], clock: str) -> pd.DataFrame:
    rows = []
    for run in runs:
        reg = run_regret(run, fractions, clock)
        unit = str(run.get("held_out", ""))
        for i, f in enumerate(fractions):
            rows.append((run["optimizer"], problem(run), unit, int(run["seed"]), i, float(f), float(reg[i])))
    return pd.DataFrame(rows, columns=["optimizer", "dataset", "held_out", "seed", "i", "fraction", "regret"])


def _with_ranks(df: pd.DataFrame) -> pd.DataFrame:
    """Add a 'rank' column: rank among optimizers within (dataset, seed, fraction); groups where
    not every optimizer ran are left out of the ranking (rank NaN)."""
    n_opt = df["optimizer"].nunique()
    df = df.copy()
    df["rank"] = df.groupby(["dataset", "seed", "i"])["regret"].rank(method="average")
    complete = df.groupby(["dataset", "seed", "i"])["optimizer"].transform("nunique") == n_opt
    df.loc[~complete, "rank"] = np.nan
    return df


def summarize(
    runs: Sequence[Mapping[str, Any]], checkpoints: Sequence[float] = CHECKPOINTS, clock: str = "time"
) -> dict[str, Any]:
    """``{"checkpoints": [...], "optimizers": {NAME: {"regret": [...], "rank": [...]}}}``: means
    over datasets and seeds at each checkpoint (fractions of the budget)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    checkpoints = [float(c) for c in checkpoints]
    out: dict[str, Any] = {"checkpoints": checkpoints, "optimizers": {}}
    if not runs:
        return out
    df = _with_ranks(_frame(runs, checkpoints, clock))
    complete = df.dropna(subset=["rank"])
    if not complete.empty:  # compare on the same (dataset, seed) groups when some runs are missing
        df = complete
    order = list(dict.fromkeys(r["optimizer"] for r in runs))
    means = df.groupby(["optimizer", "i"])[["regret", "rank"]].mean()
    for name in order:
        if name not in means.index.get_level_values(0):
            continue
        m = means.loc[name].reindex(range(len(checkpoints)))
        out["optimizers"][name] = {
            "regret": [float(x) for x in m["regret"]],
            "rank": [float(x) if math.isfinite(x) else None for x in m["rank"]],
        }
    return out


def format_table(summary: Mapping[str, Any], title: str = "") -> str:
    """A Markdown table: one row per optimizer, regret and rank at each checkpoint."""
    cps = summary["checkpoints"]
    head = ["optimizer"] + [f"regret@{c:g}" for c in cps] + [f"rank@{c:g}" for c in cps]
    lines = ([f"**{title}**", ""] if title else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(x: Any, nd: int) -> str:
        return "-" if x is None else f"{x:.{nd}f}"

    rows = sorted(summary["optimizers"].items(), key=lambda kv: (kv[1]["regret"][-1], kv[0]))
    for name, v in rows:
        lines.append(
            "| " + " | ".join([name] + [fmt(x, 4) for x in v["regret"]] + [fmt(x, 2) for x in v["rank"]]) + " |"
        )
    return "\n".join(lines)


def per_dataset_table(runs: Sequence[Mapping[str, Any]], fraction: float = 1.0, clock: str = "time") -> str:
    """A Markdown table of mean regret (over seeds) per dataset and optimizer at one budget
    fraction: where a method wins or loses is usually dataset-specific."""
    if not runs:
        return ""
    df = _frame(runs, [fraction], clock)
    piv = df.groupby(["dataset", "optimizer"])["regret"].mean().unstack("optimizer")
    order = [n for n in dict.fromkeys(r["optimizer"] for r in runs) if n in piv.columns]
    piv = piv[order]
    lines = ["| dataset | " + " | ".join(order) + " |", "|" + "---|" * (len(order) + 1)]
    for ds, row in piv.iterrows():
        best = row.min()
        cells = [(f"**{v:.4f}**" if v == best else f"{v:.4f}") for v in row]
        lines.append(f"| {ds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_held_out_table(runs: Sequence[Mapping[str, Any]], fraction: float = 1.0, clock: str = "time") -> str:
    """A Markdown table of mean regret (over the unit's tasks and seeds) per held-out unit and
    optimizer at one budget fraction ("" when no run names a held-out unit)."""
    held = [r for r in runs if r.get("held_out") is not None]
    if not held:
        return ""
    df = _frame(held, [fraction], clock)
    piv = df.groupby(["held_out", "optimizer"])["regret"].mean().unstack("optimizer")
    order = [n for n in dict.fromkeys(r["optimizer"] for r in held) if n in piv.columns]
    kind = held[0].get("held_out_kind", "unit")
    lines = [f"| held-out {kind} | " + " | ".join(order) + " |", "|" + "---|" * (len(order) + 1)]
    for unit, row in piv[order].iterrows():
        best = row.min()
        cells = [(f"**{v:.4f}**" if v == best else f"{v:.4f}") for v in row]
        lines.append(f"| {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot_over_time(runs: Sequence[Mapping[str, Any]], path: Path, what: str, clock: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0.0, 1.0, 101)
    df = _frame(runs, grid, clock)
    if what == "rank":
        df = _with_ranks(df).dropna(subset=["rank"])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    order = list(dict.fromkeys(r["optimizer"] for r in runs))
    colors = plt.get_cmap("tab20").colors
    for k, name in enumerate(order):
        sub = df[df["optimizer"] == name]
        if sub.empty:
            continue
        g = sub.groupby("i")[what]
        mean = g.mean().reindex(range(len(grid))).to_numpy()
        sd = g.std(ddof=1).reindex(range(len(grid))).fillna(0.0).to_numpy()
        n = g.count().reindex(range(len(grid))).to_numpy()
        half = 1.96 * sd / np.sqrt(np.maximum(n, 1))
        lw = 2.4 if name == "quicktune" else 1.3
        peer = name.startswith(("synetune-", "optuna-"))  # other libraries dashed
        (line,) = ax.plot(
            grid, mean, label=name, lw=lw, color=colors[(2 * k) % 20 + (k // 10) % 2], ls="--" if peer else "-"
        )
        ax.fill_between(grid, mean - half, mean + half, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel(f"fraction of budget ({CLOCKS[clock]})")
    if what == "regret":
        ax.set_ylabel("mean normalized regret (95% band)")
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(1e-4, ax.get_ylim()[0]))
    else:
        ax.set_ylabel("mean rank (95% band, 1 = best)")
    ax.set_title(title or f"{what} over time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_summary(
    runs: Sequence[Mapping[str, Any]], out_dir: str | Path, title: str = "", plots: bool = True
) -> dict[str, Any]:
    """Write ``summary.json``, ``summary_table_clock.json``, ``results.md`` and (``plots``)
    ``regret.png`` and ``rank.png`` into ``out_dir``; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs, CHECKPOINTS, "time")
    table_summary = summarize(runs, CHECKPOINTS, "table_time")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary_table_clock.json").write_text(json.dumps(table_summary, indent=2))
    n_ds = len({r["dataset"] for r in runs})
    n_seeds = len({r["seed"] for r in runs})
    md = [
        format_table(summary, f"{title} — clock with optimizer overhead ({n_ds} datasets x {n_seeds} seeds)"),
        "",
        format_table(table_summary, f"{title} — pure table clock"),
        "",
        f"**{title} — mean regret per dataset at 100 % of the budget (clock with overhead; best in bold)**",
        "",
        per_dataset_table(runs, 1.0),
        "",
        f"**{title} — mean regret per dataset at 25 % of the budget**",
        "",
        per_dataset_table(runs, 0.25),
        "",
    ]
    if any(r.get("held_out") is not None for r in runs):
        for f in (0.25, 1.0):
            md += [
                f"**{title} — mean regret per held-out unit at {f:.0%} of the budget**",
                "",
                per_held_out_table(runs, f),
                "",
            ]
    (out / "results.md").write_text("\n".join(md))
    if plots and runs:
        _plot_over_time(runs, out / "regret.png", "regret", "time", f"{title} mean normalized regret".strip())
        _plot_over_time(runs, out / "rank.png", "rank", "time", f"{title} mean rank".strip())
    return summary


def load_runs(out_dir: str | Path) -> list[dict[str, Any]]:
    """The run records under ``out_dir/runs``, in file-name order."""
    return [json.loads(p.read_text()) for p in sorted((Path(out_dir) / "runs").glob("*.json"))]
