"""``quicktune bench``: replay a learning-curve table in simulated time and compare optimizers.

``quicktune bench synth --out PATH`` writes a synthetic learning-curve table.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

DESCRIPTION = """\
Replay a learning-curve table (LCT) in simulated time and judge optimizers by normalized regret.

Every asked (config, epoch) costs the table's recorded cost for that epoch plus the optimizer's own
measured ask/tell overhead; the pure-table clock is reported too. The budget per dataset is
--budget-multiple times the median cost of one full curve of that dataset. For each dataset,
optimizer and seed the incumbent (best validation score so far) is turned into the normalized
regret (best - incumbent) / (best - worst) over the dataset's whole table.

Writes OUT/summary.json (mean regret and rank at 10/25/50/100% of the budget),
OUT/summary_table_clock.json, OUT/results.md, OUT/regret.png, OUT/rank.png and OUT/runs/*.json.
Finished runs are reused when the command is repeated with the same settings (--no-resume to redo).

What the meta-trained methods (quicktune, quicktune-nocost, quicktune-onehot) are meta-trained on
(--meta-train):
  loo   leave-one-dataset-out: the table's other datasets (class subsets of the same source stay in)
  lomo  leave-one-model-out: for each model m, every curve but m's (all tasks); searched on each task
        whose configs include m, with the task's whole pool (m's configs included): can the
        optimizer judge a model it never saw? Results per (held-out model, task).
  loso  leave-one-source-out: for each source (a dataset and all its class subsets), the other
        sources' tasks; searched on each task of the source. Results per (held-out source, task).
  none  no meta-training
One meta-training per held-out unit (and model encoding), shared by its tasks, seeds and methods.
quicktune-onehot is quicktune meta-trained with a one-hot model encoding instead of descriptors.

Examples:
  quicktune bench synth --out synth.parquet
  quicktune bench --table synth.parquet --optimizer quicktune --optimizer random --optimizer asha \\
      --seeds 10 --budget-multiple 20 --out out/bench
  quicktune bench --table quicktune/metadataset/data/metadataset.parquet --meta-train lomo \\
      --optimizer quicktune --optimizer quicktune-onehot --optimizer quicktune-nometa \\
      --seeds 3 --budget-multiple 2 --meta-train-epochs 10 --out out/lomo
"""


def register(subparsers: Any) -> None:
    from quicktune.cli import _Formatter

    p = subparsers.add_parser(
        "bench",
        help="benchmark optimizers on a learning-curve table (simulated time)",
        description=DESCRIPTION,
        formatter_class=_Formatter,
    )
    p.add_argument("--table", help="learning-curve table (.parquet or .csv)")
    p.add_argument(
        "--optimizer",
        action="append",
        default=[],
        metavar="NAME",
        help="optimizer to compare (repeatable): quicktune, quicktune-nometa, quicktune-nocost, "
        "quicktune-onehot, dyhpo, random, sh, asha, hyperband, and peers such as optuna-tpe, synetune-dyhpo",
    )
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1) per dataset and optimizer")
    p.add_argument(
        "--budget-multiple",
        type=float,
        default=20.0,
        help="budget per dataset = this x the median cost of one full curve",
    )
    p.add_argument("--out", help="output folder")
    p.add_argument(
        "--meta-train",
        choices=["loo", "lomo", "loso", "none"],
        default="loo",
        help="what the meta-trained methods' artifact leaves out: the evaluated dataset (loo), "
        "one model at a time (lomo), one source with all its class subsets (loso); none: no meta-training",
    )
    p.add_argument(
        "--meta-train-epochs",
        type=int,
        default=None,
        help="meta-training epochs (default: the meta-trainer's own default)",
    )
    p.add_argument("--datasets", default="", help="comma-separated datasets to evaluate (default: all)")
    p.add_argument("--workers", type=int, default=1, help="parallel simulated workers per run")
    p.add_argument("--jobs", type=int, default=1, help="datasets run in parallel processes")
    p.add_argument(
        "--overhead-clock",
        choices=["wall", "cpu"],
        default="wall",
        help="how the optimizer's ask/tell overhead is measured (wall clock or thread CPU time)",
    )
    p.add_argument("--no-resume", action="store_true", help="rerun runs whose result files already exist")
    p.add_argument("--title", default="", help="title for the result table and plots")
    p.set_defaults(handler=_bench)

    sub = p.add_subparsers(dest="bench_command", metavar="{synth}")
    s = sub.add_parser(
        "synth",
        help="write a synthetic learning-curve table",
        formatter_class=_Formatter,
        description="Write a synthetic LCT: parametric curves with plateaus, overfitting, "
        "divergence (NaN), noise, per-model costs, conditional hyperparameters "
        "and related datasets with meta-features.",
    )
    s.add_argument("--out", required=True, help="output path (.parquet or .csv)")
    s.add_argument("--datasets", type=int, default=6, help="number of datasets")
    s.add_argument("--configs", type=int, default=200, help="configs per dataset")
    s.add_argument("--epochs", type=int, default=20, help="epochs per curve")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.set_defaults(handler=_synth)


def _synth(args: argparse.Namespace) -> int:
    from quicktune.bench.synthetic import make_synthetic_table
    from quicktune.lct import write_lct

    df = make_synthetic_table(args.datasets, args.configs, args.epochs, seed=args.seed)
    path = write_lct(df, args.out)
    print(f"wrote {len(df)} rows ({args.datasets} datasets x {args.configs} configs x {args.epochs} epochs) to {path}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if not args.table or not args.out:
        print("quicktune bench: --table and --out are required (or use `quicktune bench synth`)", file=sys.stderr)
        return 2
    if args.seeds < 1 or args.workers < 1 or args.jobs < 1:
        print("quicktune bench: --seeds, --workers and --jobs must be >= 1", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from quicktune.bench.runner import check_optimizers, run_benchmark
    from quicktune.bench.summary import format_table
    from quicktune.lct import LCTError, load_lct

    optimizers = list(dict.fromkeys(args.optimizer))
    try:
        check_optimizers(optimizers)
        table = load_lct(args.table)
    except (ValueError, LCTError) as exc:
        print(f"quicktune bench: {exc}", file=sys.stderr)
        return 2
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] or None
    n_ds = len(datasets) if datasets else table["dataset"].nunique()
    if args.meta_train in ("lomo", "loso"):  # one search per (held-out unit, task)
        from quicktune.bench.heldout import held_out_units

        try:
            n_ds = sum(len(t) for t in held_out_units(table, args.meta_train, datasets).values())
        except ValueError as exc:
            print(f"quicktune bench: {exc}", file=sys.stderr)
            return 2
    total = n_ds * len(optimizers) * args.seeds
    bar = tqdm(total=total, desc="runs", unit="run", file=sys.stderr, dynamic_ncols=True)

    def on_run(rec: dict) -> None:
        bar.set_postfix_str(f"{rec['dataset']}/{rec['optimizer']}/s{rec['seed']} regret={rec['final_regret']:.3f}")
        bar.update(1)

    try:
        summary = run_benchmark(
            table,
            optimizers,
            args.seeds,
            args.budget_multiple,
            args.out,
            meta_train=args.meta_train,
            datasets=datasets,
            workers=args.workers,
            jobs=args.jobs,
            overhead_clock=args.overhead_clock,
            resume=not args.no_resume,
            title=args.title or str(args.table),
            on_run=on_run,
            meta_train_options=({"epochs": args.meta_train_epochs} if args.meta_train_epochs else None),
        )
    except ValueError as exc:
        bar.close()
        print(f"quicktune bench: {exc}", file=sys.stderr)
        return 2
    bar.close()
    print(
        format_table(
            summary,
            "mean normalized regret / mean rank at fractions of the budget "
            "(clock with optimizer overhead; lower is better)",
        )
    )
    print(f"\nresults in {args.out} (summary.json, summary_table_clock.json, results.md, regret.png, rank.png, runs/)")
    return 0
