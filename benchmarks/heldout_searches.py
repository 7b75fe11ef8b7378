"""Real (not replayed) searches on datasets the meta-dataset never saw: the shipped meta-trained
surrogate (``quicktune``) vs the same optimizer without meta-training (``quicktune-nometa``), at the
same wall-clock budget, one local worker each, both searches of a dataset running side by side
(one core each on a 2-core machine, so they see the same contention).

For each search it reports the best validation accuracy, the winner's test accuracy (the search
promotes it, which evaluates it on the held-out test split), and *when* the final incumbent was
first reached (seconds since the search started, from the parent run's ``incumbent`` metric).

    .venv/bin/python benchmarks/heldout_searches.py --data animal-mnist=/tmp/heldout/animal-mnist \
        --data emoji=/tmp/heldout/emoji --budget 4m --seeds 0,1,2 --out benchmarks/results/heldout_searches.json

Each seed is a set of searches (one per optimizer) with the same ``--seed`` (the training seed of
every step and the optimizer's seed). The summary table gives means over seeds and how many seeds
each optimizer won (higher best validation accuracy; ties count for neither); the paired table gives
the first optimizer of ``--optimizers`` minus each other one, per (dataset, seed), mean +- SE.
``--summarize FILE`` recomputes both from an earlier ``--out`` file without running a search.

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


def paired(rows: list[dict], reference: str) -> list[dict]:
    """``reference`` minus each other optimizer, per (dataset, seed) where both have a result:
    mean and standard error over the pairs of best validation and winner's test accuracy, and the
    pairs the reference won, tied and lost on best validation."""
    import statistics

    by = {(r["dataset"], r["seed"], r["optimizer"]): r for r in rows}
    out = []
    for peer in sorted({r["optimizer"] for r in rows} - {reference}):
        diffs: dict[str, list[float]] = {"best_val": [], "test_accuracy": []}
        for (ds, seed, opt), r in sorted(by.items()):
            other = by.get((ds, seed, peer))
            if opt != reference or other is None:
                continue
            for k, d in diffs.items():
                if r.get(k) is not None and other.get(k) is not None:
                    d.append(r[k] - other[k])
        entry: dict = {"reference": reference, "peer": peer, "pairs": len(diffs["best_val"])}
        for k, d in diffs.items():
            entry[k] = statistics.fmean(d) if d else None
            entry[f"{k}_se"] = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else None
        v = diffs["best_val"]
        entry.update(won=sum(x > 0 for x in v), tied=sum(x == 0 for x in v), lost=sum(x < 0 for x in v))
        out.append(entry)
    return out


def markdown(rows: list[dict], summary: list[dict], reference: str | None = None) -> str:
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
    pairs = paired(rows, reference) if reference else []
    if pairs:
        lines += [
            "",
            f"| {reference} minus | pairs | best val: mean +- SE | won / tied / lost | winner's test acc: mean +- SE |",
            "|---|---|---|---|---|",
        ]
        for p in pairs:
            lines.append(
                f"| {p['peer']} | {p['pairs']} | {f(p['best_val'], '+.3f')} +- {f(p['best_val_se'], '.3f')} | "
                f"{p['won']} / {p['tied']} / {p['lost']} | "
                f"{f(p['test_accuracy'], '+.3f')} +- {f(p['test_accuracy_se'], '.3f')} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", help="NAME=PATH of a held-out dataset (repeat)")
    ap.add_argument("--budget", default="4m")
    ap.add_argument("--max-epochs", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--optimizers", default="quicktune,quicktune-nometa")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; one pair of searches per seed")
    ap.add_argument("--out", default="benchmarks/results/heldout_searches.json")
    ap.add_argument(
        "--summarize",
        metavar="JSON",
        help="run no search: recompute the summary and the paired differences of an earlier --out file",
    )
    args = ap.parse_args()
    reference = args.optimizers.split(",")[0]
    if args.summarize:
        doc = json.loads(Path(args.summarize).read_text())
        reference = doc.get("reference", reference)
        doc.update(reference=reference, summary=summarize(doc["rows"]), paired=paired(doc["rows"], reference))
        Path(args.summarize).write_text(json.dumps(doc, indent=1))
        print(markdown(doc["rows"], doc["summary"], reference))
        return 0
    if not args.data:
        ap.error("--data is required (unless --summarize)")
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
                "reference": reference,
                "paired": paired(rows, reference),
            },
            indent=1,
        )
    )
    print(markdown(rows, summary, reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
