"""Pretrained vs random initialisation, measured in a learning-curve table: for each task, the mean
validation accuracy at epoch 1 and at the curve's last epoch of the pretrained EfficientNet-Lite
models (``tf_efficientnet_liteN``) and of their random-init twins (``tf_efficientnet_liteN.random``),
over every config of the table that used them (same knobs distribution: configs are drawn from one
pool, so the two groups differ only by chance in their other knobs and by the weights).

Why: the meta-dataset v2 exists to show that finetuning a pretrained model is a different problem
from training one from scratch (issue 15); this reads it off the table the campaign writes.

    .venv/bin/python benchmarks/twins_in_table.py $CAMPAIGN_V2/metadataset-v2.parquet \\
        --out benchmarks/results/twins_v2.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from quicktune.lct import load_lct

SUFFIX = ".random"


def summarise(path: str) -> dict:
    df = load_lct(path)
    df = df[df["hp.model"].astype(str).str.startswith("tf_efficientnet_lite")]
    out: dict = {"table": Path(path).name, "tasks": {}}  # the file name: no machine's folder layout
    pooled: dict[str, dict[str, list[float]]] = {
        "pretrained": {"epoch1": [], "last": []},
        "random": {"epoch1": [], "last": []},
    }
    for task, sub in df.groupby("dataset"):
        row: dict = {}
        for group, mask in (
            ("pretrained", ~sub["hp.model"].astype(str).str.endswith(SUFFIX)),
            ("random", sub["hp.model"].astype(str).str.endswith(SUFFIX)),
        ):
            g = sub[mask]
            curves = [c.sort_values("epoch") for _, c in g.groupby("config_id")]
            e1 = [float(c["score"].iloc[0]) for c in curves if np.isfinite(c["score"].iloc[0])]
            last = [float(c["score"].dropna().iloc[-1]) for c in curves if c["score"].notna().any()]
            row[group] = {
                "curves": len(curves),
                "epoch1_mean": round(float(np.mean(e1)), 4) if e1 else None,
                "last_mean": round(float(np.mean(last)), 4) if last else None,
            }
            pooled[group]["epoch1"] += e1
            pooled[group]["last"] += last
        out["tasks"][str(task)] = row
    out["all_tasks"] = {
        g: {
            "curves_epoch1": len(v["epoch1"]),
            "epoch1_mean": round(float(np.mean(v["epoch1"])), 4) if v["epoch1"] else None,
            "last_mean": round(float(np.mean(v["last"])), 4) if v["last"] else None,
        }
        for g, v in pooled.items()
    }
    both = [
        r
        for r in out["tasks"].values()
        if r["pretrained"]["last_mean"] is not None and r["random"]["last_mean"] is not None
    ]
    out["pretrained_ends_higher"] = {
        "tasks": sum(r["pretrained"]["last_mean"] > r["random"]["last_mean"] for r in both),
        "of": len(both),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table")
    ap.add_argument("--out", default=None, help="write the JSON here too")
    args = ap.parse_args(argv)
    res = summarise(args.table)
    print("task | pretrained: curves, epoch-1, last | random init: curves, epoch-1, last")
    for task, row in res["tasks"].items():
        p, r = row["pretrained"], row["random"]
        left = f"{p['curves']}, {p['epoch1_mean']}, {p['last_mean']}"
        print(f"{task} | {left} | {r['curves']}, {r['epoch1_mean']}, {r['last_mean']}")
    print("all tasks:", json.dumps(res["all_tasks"]))
    won = res["pretrained_ends_higher"]
    print(f"pretrained ends higher on {won['tasks']} of {won['of']} tasks with both")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
