"""Real (not replayed) searches on datasets the meta-dataset never saw: the shipped meta-trained
surrogate (``quicktune``) vs the same optimizer without meta-training (``quicktune-nometa``), at the
same wall-clock budget, one local worker each, both searches of a dataset running side by side
(one core each on a 2-core machine, so they see the same contention).

For each search it reports the best validation accuracy, the winner's test accuracy (the search
promotes it, which evaluates it on the held-out test split), and *when* the final incumbent was
first reached (seconds since the search started, from the parent run's ``incumbent`` metric).

    .venv/bin/python benchmarks/heldout_searches.py --data animal-mnist=/tmp/heldout/animal-mnist \
        --data emoji=/tmp/heldout/emoji --budget 4m --seeds 0,1,2 --out benchmarks/results/heldout_searches.json

Each seed is a pair of searches (one per optimizer) with the same ``--seed`` (the training seed of
every step and the optimizer's seed). The summary table gives means over seeds and how many seeds
each optimizer won (higher best validation accuracy; ties count for neither).

(make the folders with ``quicktune data import animal-mnist DIR --max-per-class 60`` and
``quicktune data import emoji DIR --max-per-class 70 --size 32``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def _time_to_best(tracking_uri: str, parent_run_id: str) -> float | None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(parent_run_id)
    hist = sorted(client.get_metric_history(parent_run_id, "incumbent"), key=lambda m: (m.timestamp, m.step))
    if not hist:
        return None
    best = max(m.value for m in hist)
    first = next(m for m in hist if m.value >= best)
    return (first.timestamp - run.info.start_time) / 1000.0


def summarize(rows: list[dict]) -> list[dict]:
    """Per (dataset, optimizer): means over seeds and the number of seeds won on best validation."""
    import statistics

    out = []
    keys = sorted({(r["dataset"], r["optimizer"]) for r in rows})
    for ds, opt in keys:
        mine = [r for r in rows if r["dataset"] == ds and r["optimizer"] == opt]
        wins = 0
        for r in mine:
            others = [
                o["best_val"]
                for o in rows
                if o["dataset"] == ds and o["seed"] == r["seed"] and o["optimizer"] != opt and o["best_val"] is not None
            ]
            if r["best_val"] is not None and others and r["best_val"] > max(others):
                wins += 1

        def mean(k: str, mine: list = mine) -> float | None:
            vals = [r[k] for r in mine if r.get(k) is not None]
            return statistics.fmean(vals) if vals else None

        out.append(
            {
                "dataset": ds,
                "optimizer": opt,
                "seeds": len(mine),
                "wins": wins,
                **{
                    k: mean(k) for k in ("best_val", "test_accuracy", "seconds_to_best", "configs_tried", "epochs_done")
                },
            }
        )
    return out


def markdown(rows: list[dict], summary: list[dict]) -> str:
    def f(x: float | None, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    lines = [
        "| dataset | optimizer | seed | best val acc | test acc | reached at (s) | configs | epochs | best model |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['optimizer']} | {r['seed']} | {f(r['best_val'], '.3f')} | "
            f"{f(r['test_accuracy'], '.3f')} | {f(r['seconds_to_best'], '.0f')} | {r['configs_tried']} | "
            f"{r['epochs_done']} | {r['best_model']} |"
        )
    lines += [
        "",
        "| dataset | optimizer | seeds won | mean best val | mean test acc | mean reached at (s) | "
        "mean configs | mean epochs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in summary:
        lines.append(
            f"| {m['dataset']} | {m['optimizer']} | {m['wins']}/{m['seeds']} | {f(m['best_val'], '.3f')} | "
            f"{f(m['test_accuracy'], '.3f')} | {f(m['seconds_to_best'], '.0f')} | "
            f"{f(m['configs_tried'], '.1f')} | {f(m['epochs_done'], '.1f')} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True, help="NAME=PATH of a held-out dataset (repeat)")
    ap.add_argument("--budget", default="4m")
    ap.add_argument("--max-epochs", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--optimizers", default="quicktune,quicktune-nometa")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; one pair of searches per seed")
    ap.add_argument("--out", default="benchmarks/results/heldout_searches.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qt-heldout-"))
    rows = []
    seeds = [int(x) for x in args.seeds.split(",")]
    for item, seed in [(i, s) for i in args.data for s in seeds]:
        name, path = item.split("=", 1)
        procs = {}
        for opt in args.optimizers.split(","):
            tag = f"{name}-{opt}-s{seed}"
            tracking = f"sqlite:///{work / f'{tag}.db'}"
            cmd = [
                sys.executable,
                "-m",
                "quicktune.cli",
                "search",
                "--data",
                path,
                "--budget",
                args.budget,
                "--space",
                "builtin:cpu",
                "--workers",
                "1",
                "--optimizer",
                opt,
                "--max-epochs",
                str(args.max_epochs),
                "--image-size",
                str(args.image_size),
                "--tracking-uri",
                tracking,
                "--workdir",
                str(work / tag),
                "--model-name",
                tag,
                "--json",
                "--no-progress",
                "--seed",
                str(seed),
            ]
            procs[opt] = (tracking, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
        for opt, (tracking, proc) in procs.items():
            out, _ = proc.communicate()
            res = json.loads(out[out.index("{") :])
            row = {
                "dataset": name,
                "optimizer": opt,
                "seed": seed,
                "best_val": res.get("best_score"),
                "test_accuracy": res.get("test_accuracy"),
                "best_model": (res.get("best_config") or {}).get("model"),
                "configs_tried": res.get("configs_tried"),
                "epochs_done": res.get("epochs_done"),
                "seconds_to_best": _time_to_best(tracking, res["parent_run_id"]),
                "elapsed_seconds": res.get("elapsed_seconds"),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    Path(args.out).write_text(
        json.dumps(
            {
                "budget": args.budget,
                "max_epochs": args.max_epochs,
                "image_size": args.image_size,
                "seeds": seeds,
                "rows": rows,
                "summary": summary,
            },
            indent=1,
        )
    )
    print(markdown(rows, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
