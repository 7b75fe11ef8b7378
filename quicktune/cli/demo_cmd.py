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
    # A real search (issue 4): the packaged digits dataset as an image folder, the offline CPU
    # space, 2 local workers, MLflow in a sqlite store under --out, the winner registered as
    # "digits-classifier@champion". Budget: $QUICKTUNE_DEMO_BUDGET (default 3m).
    import os
    import time
    from pathlib import Path

    from quicktune.cli import main as quicktune_main

    out = Path(args.out).resolve()
    data = out / "data" / "digits"
    if not data.exists():
        from quicktune.data.packaged import import_dataset

        print(f"quicktune demo: writing the packaged digits dataset to {data}", flush=True)
        import_dataset("digits", str(data))
    budget = os.environ.get("QUICKTUNE_DEMO_BUDGET", "3m")
    tracking = f"sqlite:///{out / 'mlflow.db'}"
    print(f"quicktune demo: searching the cpu space on {data} for {budget} with 2 workers "
          f"(MLflow store {tracking})", flush=True)
    t0 = time.monotonic()
    code = quicktune_main(["search", "--data", str(data), "--budget", budget, "--space", "builtin:cpu",
                           "--workers", "2", "--max-epochs", "5", "--image-size", "32",
                           "--model-name", "digits-classifier", "--tracking-uri", tracking,
                           "--workdir", str(out / "work")])
    print(f"quicktune demo: done in {time.monotonic() - t0:.0f} s (exit code {code})", flush=True)
    return code
