"""The full comparison: mean normalized regret and rank over time of Quick-Tune, its ablations,
the classic baselines and the peers, on (a) a synthetic table and (b) the out-of-domain
MedQuickTune table, in simulated time.

    nice -n 10 .venv/bin/python benchmarks/bench_regret.py --seeds 10 --jobs 2 \\
        --medqt ../shared/tables/medqt_portfolio.parquet

Runs go to ``--out`` (default ``out/bench/<table>/``, one JSON per run, reused when the command is
repeated, so an interrupted comparison continues). Optimizers run in *groups* (``--groups``): the
core group first, then the peers, so partial results are usable; after each group the summary
over everything finished so far is rewritten into the ``<!-- BEGIN AUTO:<table> -->`` section of
a dated report ``docs/reports/<UTC date>-regret-benchmarks.md`` (``--docs``), with the plots copied
to ``docs/img/`` and linked relative to the report. Peers that cannot run here are
skipped with a note (see ``make bench-peers``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

CORE = ["quicktune", "quicktune-nometa", "quicktune-nocost", "dyhpo", "random", "asha", "hyperband"]
PEERS_FAST = ["optuna-tpe", "synetune-random", "synetune-asha", "synetune-bohb", "synetune-dehb"]
PEERS_GP = ["synetune-mobster", "synetune-hypertune", "synetune-dyhpo"]
BASELINES = ["random", "asha", "hyperband"]  # the core group without the Quick-Tune variants (fast, no torch)
GROUPS = {
    "core": CORE,
    "baselines": BASELINES,
    "peers": PEERS_FAST,
    "gp-peers": PEERS_GP,
    "all": CORE + PEERS_FAST + PEERS_GP,
}


def _update_docs(docs: Path, key: str, text: str) -> None:
    begin, end = f"<!-- BEGIN AUTO:{key} -->", f"<!-- END AUTO:{key} -->"
    body = docs.read_text() if docs.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in body and end in body:
        body = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, body, flags=re.S)
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(body)


def update_docs(docs: Path, key: str, text: str) -> None:
    """:func:`_update_docs` under an exclusive lock (two tables may be run by two processes)."""
    import fcntl
    import tempfile

    docs.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "quicktune-bench-docs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _update_docs(docs, key, text)


def run_table(key: str, table_path: str, title: str, groups: list[str], args: argparse.Namespace) -> None:
    budget_multiple = {"medqt": args.budget_multiple_medqt, "metadataset": args.budget_multiple_real}.get(
        key, args.budget_multiple
    )
    from quicktune.bench.peers import unavailable_reason
    from quicktune.bench.runner import run_benchmark
    from quicktune.bench.summary import format_table, load_runs, per_dataset_table

    out = Path(args.out) / key
    names: list[str] = []
    skipped: dict[str, str] = {}
    for g in groups:
        for n in GROUPS[g]:
            why = unavailable_reason(n)
            if why:
                skipped[n] = why
            elif n not in names:
                names.append(n)
    t0 = time.perf_counter()
    print(f"[{key}] {', '.join(names)} ({args.seeds} seeds)", flush=True)

    def on_run(rec: dict) -> None:
        print(
            f"  {rec['dataset']:>10} {rec['optimizer']:<20} s{rec['seed']:<2} steps={rec['n_steps']:<4} "
            f"regret={rec['final_regret']:.4f} overhead={rec['overhead_total']:.1f}s "
            f"wall={rec['wall_seconds']:.1f}s",
            flush=True,
        )

    import pandas as pd

    all_ds = sorted(pd.read_parquet(table_path, columns=["dataset"])["dataset"].unique().tolist())
    datasets = all_ds[: args.eval_datasets] if args.eval_datasets > 0 else all_ds
    summary = run_benchmark(
        table_path,
        names,
        args.seeds,
        budget_multiple,
        out,
        meta_train="loo",
        datasets=datasets,
        jobs=args.jobs,
        title=title,
        on_run=on_run,
        meta_train_options={"epochs": args.meta_train_epochs},
        stop_at=args.stop_at,
    )
    elapsed = time.perf_counter() - t0
    table_clock = json.loads((out / "summary_table_clock.json").read_text())
    img = Path(args.img)
    img.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "regret.png", img / f"regret_{key}.png")
    shutil.copy(out / "rank.png", img / f"rank_{key}.png")
    records = [
        r
        for r in load_runs(out)
        if r["optimizer"] in names and r["dataset"] in datasets and r.get("budget_multiple") == budget_multiple
    ]
    seeds_done = sorted(
        {
            (r["dataset"], r["seed"])
            for r in records
            if sum(1 for q in records if (q["dataset"], q["seed"]) == (r["dataset"], r["seed"])) == len(names)
        }
    )
    records = [r for r in records if (r["dataset"], r["seed"]) in set(seeds_done)]
    cmd = (
        f"nice -n 10 .venv/bin/python benchmarks/bench_regret.py --seeds {args.seeds} "
        f"--budget-multiple {args.budget_multiple:g} --budget-multiple-medqt {args.budget_multiple_medqt:g} "
        f"--eval-datasets {args.eval_datasets} --meta-train-epochs {args.meta_train_epochs} "
        f"--jobs {args.jobs} --groups {','.join(groups)}"
        + (f" --medqt {args.medqt}" if key == "medqt" else "")
        + (f" --budget-multiple-real {args.budget_multiple_real:g}" if key == "metadataset" else "")
        + f" --tables {key}"
    )
    img_rel = Path(os.path.relpath(Path(args.img).resolve(), Path(args.docs).resolve().parent))
    text = [
        f"*Generated by `benchmarks/bench_regret.py` at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"({len(records)} runs in `{out}`: {len(seeds_done)} (dataset, seed) pairs in which all "
        f"{len(names)} optimizers finished; datasets {', '.join(datasets)}; "
        f"budget = {budget_multiple:g} x the median cost of one full curve). Reproduce with:*",
        "",
        "```",
        cmd,
        "```",
        "",
        format_table(summary, f"{title}: clock with optimizer overhead"),
        "",
        format_table(table_clock, f"{title}: pure table clock"),
        "",
        f"**{title}: mean regret per dataset at 25 % / 100 % of the budget (clock with overhead; best in bold)**",
        "",
        per_dataset_table(records, 0.25),
        "",
        per_dataset_table(records, 1.0),
        "",
        f"![mean regret]({img_rel / f'regret_{key}.png'}) ![mean rank]({img_rel / f'rank_{key}.png'})",
    ]
    if skipped:
        text += ["", "Peers not run here: " + "; ".join(f"`{n}` ({w})" for n, w in skipped.items())]
    update_docs(Path(args.docs), key, "\n".join(text))
    print(format_table(summary, title), flush=True)
    print(f"[{key}] pass took {elapsed / 60:.1f} min", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget-multiple", type=float, default=3.0, help="budget multiple on the synthetic table")
    ap.add_argument(
        "--budget-multiple-medqt",
        type=float,
        default=1.5,
        help="budget multiple on the MedQuickTune table (25-epoch curves)",
    )
    ap.add_argument(
        "--budget-multiple-real",
        type=float,
        default=2.0,
        help="budget multiple on the real finetuning table (--metadataset)",
    )
    ap.add_argument(
        "--metadataset",
        default="quicktune/metadataset/data/metadataset.parquet",
        help="the meta-dataset issue's table of real finetuning curves (table key 'metadataset')",
    )
    ap.add_argument(
        "--eval-datasets",
        type=int,
        default=3,
        help="evaluate on the first N datasets of each table (sorted by name; meta-training still "
        "uses every other dataset); 0 = all",
    )
    ap.add_argument("--meta-train-epochs", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=1, help="datasets in parallel processes")
    ap.add_argument("--groups", default="all", help=f"optimizer groups in order: {sorted(GROUPS)}")
    ap.add_argument(
        "--deadline",
        default="",
        help="UTC HH:MM after which no new run starts (summaries then "
        "cover the seeds that finished for every optimizer)",
    )
    ap.add_argument("--tables", default="synthetic,medqt", help="which tables: synthetic, medqt, metadataset")
    ap.add_argument(
        "--synthetic",
        default="out/bench/synthetic.parquet",
        help="synthetic table (generated with the settings below if missing)",
    )
    ap.add_argument("--synthetic-shape", default="6,100,12", help="datasets,configs,epochs of the synthetic table")
    ap.add_argument(
        "--medqt",
        default=str(
            __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "tables" / "medqt_portfolio.parquet"
        ),
        help="the MedQuickTune table (read in place, never copied)",
    )
    ap.add_argument("--out", default="out/bench")
    ap.add_argument(
        "--docs",
        default=f"docs/reports/{time.strftime('%Y-%m-%d', time.gmtime())}-regret-benchmarks.md",
        help="the report the AUTO sections are written into (default: a report dated today)",
    )
    ap.add_argument("--img", default="docs/img")
    args = ap.parse_args(argv)
    groups = [g for g in args.groups.split(",") if g]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        ap.error(f"unknown groups {bad}; have {sorted(GROUPS)}")
    args.stop_at = None
    if args.deadline:
        import datetime as dt

        hh, mm = (int(x) for x in args.deadline.split(":"))
        now = dt.datetime.now(dt.UTC)
        stop = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if stop <= now:
            stop += dt.timedelta(days=1)
        args.stop_at = stop.timestamp()
    tables = [t for t in args.tables.split(",") if t]
    paths = {}
    for t in tables:
        if t == "synthetic":
            path = Path(args.synthetic)
            if not path.exists():
                from quicktune.bench.synthetic import make_synthetic_table
                from quicktune.lct import write_lct

                n_ds, n_cfg, n_ep = (int(x) for x in args.synthetic_shape.split(","))
                write_lct(make_synthetic_table(n_ds, n_cfg, n_ep, seed=0), path)
            paths[t] = (str(path), "synthetic table")
        elif t == "medqt":
            if not Path(args.medqt).exists():
                print(f"MedQuickTune table not found at {args.medqt}; skipped", file=sys.stderr)
                continue
            paths[t] = (args.medqt, "MedQuickTune table (out of domain)")
        elif t == "metadataset":
            if not Path(args.metadataset).exists():
                print(f"meta-dataset table not found at {args.metadataset}; skipped", file=sys.stderr)
                continue
            paths[t] = (args.metadataset, "real finetuning curves (meta-dataset table)")
        else:
            ap.error(f"unknown table {t!r}")
    # groups outer, tables inner: the core comparison of every table finishes before any peer runs
    for i in range(len(groups)):
        for key, (path, title) in paths.items():
            run_table(key, path, title, groups[: i + 1], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
