"""``quicktune metatrain``: meta-train Quick-Tune's surrogate and cost predictor on a table.

  quicktune metatrain --table curves.parquet --out artifacts/qt --exclude cifar10,flowers

Reads a learning-curve table (Parquet or CSV, see docs/architecture.md), trains the deep-kernel
GP's feature extractor and kernel hyperparameters and the cost predictor on every dataset except
the excluded ones (leave-one-dataset-out), keeps the checkpoint with the best held-out predictive
likelihood, and writes ``weights.safetensors`` + ``artifact.json`` into --out. Pass that folder as
the optimizer's artifact (``quicktune search --artifact DIR``, ``quicktune bench``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "metatrain",
        help="meta-train the Quick-Tune surrogate on a learning-curve table",
        description=__doc__,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100),
    )
    p.add_argument("--table", required=True, metavar="PATH", help="learning-curve table (.parquet or .csv)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for weights.safetensors + artifact.json")
    p.add_argument("--exclude", default="", metavar="A,B", help="comma-separated datasets to leave out")
    p.add_argument("--epochs", type=int, default=20, help="meta-training epochs (default 20)")
    p.add_argument("--steps-per-epoch", type=int, default=50, help="Adam steps per epoch (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        help="fraction of each dataset's configs held out for checkpoint selection (default 0.15)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    import torch

    from quicktune.lct import LCTError, load_lct
    from quicktune.optimizer.metatrain import meta_train

    torch.set_num_threads(max(1, args.threads))
    if not 0 <= args.val_fraction < 1:
        print("quicktune metatrain: --val-fraction must be in [0, 1)", file=sys.stderr)
        return 2
    try:
        df = load_lct(args.table)
        exclude = [e.strip() for e in args.exclude.split(",") if e.strip()]
        missing = sorted(set(exclude) - set(df["dataset"].unique().tolist()))
        if missing:
            print(f"quicktune metatrain: --exclude names datasets not in {args.table}: {missing}", file=sys.stderr)
            return 2
        art = meta_train(
            df,
            exclude=exclude,
            epochs=args.epochs,
            seed=args.seed,
            val_fraction=args.val_fraction,
            steps_per_epoch=args.steps_per_epoch,
        )
    except LCTError as exc:
        print(f"quicktune metatrain: {exc}", file=sys.stderr)
        return 1
    out = art.save(args.out)
    print(
        json.dumps(
            {
                "out": str(out),
                "datasets": art.datasets,
                "excluded": art.excluded,
                "best_val_nll": art.metrics.get("best_val_nll"),
                "table_hash": art.table_hash,
            }
        )
    )
    return 0
