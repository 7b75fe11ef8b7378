"""``quicktune demo``: a short benchmark on the bundled synthetic learning-curve table.

Until the finetuning search is wired into the demo, this shows the optimizer at work in simulated
time: Quick-Tune (meta-trained on the table's other datasets) against random search and ASHA on
one held-out dataset, a few seeds, a small budget; about two minutes on two cores.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from typing import Any

DESCRIPTION = """\
Run a small benchmark on the synthetic learning-curve table bundled with the package:
quicktune (meta-trained leaving the evaluated dataset out) vs random search vs ASHA, in simulated
time, and print mean normalized regret and rank at 10/25/50/100% of the budget.
Equivalent to `quicktune bench --table <bundled> --datasets synth00 --optimizer quicktune
--optimizer random --optimizer asha --seeds 3 --budget-multiple 4 --meta-train-epochs 6`.
"""


def register(subparsers: Any) -> None:
    from quicktune.cli import _Formatter

    p = subparsers.add_parser("demo", help="a two-minute benchmark on the bundled synthetic table",
                              description=DESCRIPTION, formatter_class=_Formatter)
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--seeds", type=int, default=3, help="seeds per optimizer")
    p.add_argument("--budget-multiple", type=float, default=4.0,
                   help="budget = this x the median cost of one full curve")
    p.add_argument("--dataset", default="synth00", help="held-out dataset of the bundled table")
    p.set_defaults(handler=_demo)


def bundled_table_path() -> str:
    """Path of the bundled synthetic table (quicktune/bench/data/synthetic_small.parquet)."""
    return str(resources.files("quicktune.bench").joinpath("data/synthetic_small.parquet"))


def _demo(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from quicktune.bench.runner import run_benchmark
    from quicktune.bench.summary import format_table

    torch.set_num_threads(1)
    optimizers = ["quicktune", "random", "asha"]
    table = bundled_table_path()
    print(f"quicktune demo: {', '.join(optimizers)} on dataset {args.dataset} of {table}\n"
          f"(simulated time; quicktune is first meta-trained on the other datasets, ~1 minute)", flush=True)
    bar = tqdm(total=len(optimizers) * args.seeds, desc="runs", unit="run", file=sys.stderr)

    def on_run(rec: dict) -> None:
        bar.set_postfix_str(f"{rec['optimizer']}/s{rec['seed']} regret={rec['final_regret']:.3f}")
        bar.update(1)

    summary = run_benchmark(table, optimizers, args.seeds, args.budget_multiple, args.out, meta_train="loo",
                            datasets=[args.dataset], title="quicktune demo", on_run=on_run,
                            meta_train_options={"epochs": 6})
    bar.close()
    print(format_table(summary, "mean normalized regret / mean rank (lower is better)"))
    print(f"\nplots and per-run results in {args.out}/ (regret.png, rank.png, runs/)")
    return 0
