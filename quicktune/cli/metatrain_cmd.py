"""``quicktune metatrain``: meta-train Quick-Tune's surrogate and cost predictor on a table.

  quicktune metatrain --table curves.parquet --out artifacts/qt --exclude cifar10,flowers

Reads a learning-curve table (Parquet or CSV, see docs/architecture.md), trains the deep-kernel
GP's feature extractor and kernel hyperparameters and the cost predictor on every dataset except
the excluded ones (leave-one-dataset-out), keeps the checkpoint with the best held-out predictive
likelihood, and writes ``weights.safetensors`` + ``artifact.json`` into --out. The table's models are
encoded by their hub descriptors (parameters, GMACs at --image-size, architecture type, ...), which
the artifact stores; a table of made-up model names falls back to a one-hot model encoding. Pass that folder as
the optimizer's artifact (``quicktune search --artifact DIR``, ``quicktune bench``).

  quicktune metatrain --from-mlflow http://mlflow:5000 --with-shipped

learns from every search recorded on the tracking server instead (with the shipped table), registers
the result as a new version of ``quicktune-surrogate`` and moves its alias ``champion`` only when
it predicts held-out curves at least as well (quicktune.metadataset.continual); searches without
--meta-artifact start from that champion. ``--steps-per-epoch 0`` registers an untrained surrogate.
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
    p.add_argument("--table", default=None, metavar="PATH", help="learning-curve table (.parquet or .csv)")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for weights.safetensors + artifact.json")
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
    p.add_argument(
        "--image-size",
        type=int,
        default=32,
        metavar="PX",
        help="resolution the table's curves were trained at; the models' descriptors (GMACs) are computed "
        "at it (default 32, the shipped meta-dataset's)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    g = p.add_argument_group(
        "continual meta-learning (instead of --table/--out; see docs/metadataset.md)",
        "harvest every ended search on an MLflow server, meta-train, score held-out curves, register "
        "the artifact as a new version of a registered model and move its alias only when not worse",
    )
    g.add_argument("--from-mlflow", default=None, metavar="URI", help="tracking server to learn from and register on")
    g.add_argument("--with-shipped", action="store_true", help="merge with the table shipped in the package")
    g.add_argument("--registered-model", default=None, metavar="NAME", help="default quicktune-surrogate")
    g.add_argument("--alias", default=None, metavar="ALIAS", help="alias moved when not worse (default champion)")
    g.add_argument("--min-new", type=int, default=0, metavar="N", help="skip unless N searches ended since the alias")
    g.add_argument("--experiments", default="", metavar="A,B", help="harvest only these experiments (default all)")
    g.add_argument(
        "--heldout-fraction", type=float, default=None, metavar="F", help="curves held out for scoring (default 0.2)"
    )
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    import torch

    from quicktune.lct import LCTError, load_lct
    from quicktune.optimizer.metatrain import meta_train

    torch.set_num_threads(max(1, args.threads))
    if not 0 <= args.val_fraction < 1:
        print("quicktune metatrain: --val-fraction must be in [0, 1)", file=sys.stderr)
        return 2
    if args.from_mlflow:
        return _from_mlflow(args)
    if not args.table or not args.out:
        print("quicktune metatrain: give --table and --out (or --from-mlflow URI)", file=sys.stderr)
        return 2
    try:
        df = load_lct(args.table)
        exclude = [e.strip() for e in args.exclude.split(",") if e.strip()]
        missing = sorted(set(exclude) - set(df["dataset"].unique().tolist()))
        if missing:
            print(f"quicktune metatrain: --exclude names datasets not in {args.table}: {missing}", file=sys.stderr)
            return 2
        from quicktune.hub import known_descriptor_features

        models = df["hp.model"].dropna().astype(str).unique().tolist() if "hp.model" in df.columns else []
        descriptors = known_descriptor_features(sorted(models), args.image_size)
        art = meta_train(
            df,
            model_descriptors=descriptors,
            image_size=args.image_size,
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


def _from_mlflow(args: argparse.Namespace) -> int:
    """``--from-mlflow``: :func:`quicktune.metadataset.continual.retrain_from_mlflow`, report as JSON."""
    from mlflow.exceptions import MlflowException

    from quicktune.lct import LCTError
    from quicktune.metadataset import continual
    from quicktune.tracking.registry import RegistryError
    from quicktune.tracking.secrets import redact

    if args.table or args.out or args.exclude:
        print("quicktune metatrain: --from-mlflow does not take --table, --out or --exclude", file=sys.stderr)
        return 2
    fraction = continual.HELDOUT_FRACTION if args.heldout_fraction is None else args.heldout_fraction
    if not 0 < fraction < 1 or args.min_new < 0 or args.steps_per_epoch < 0 or args.epochs < 1:
        print("quicktune metatrain: need 0 < --heldout-fraction < 1, --min-new >= 0, --epochs >= 1", file=sys.stderr)
        return 2
    try:
        report = continual.retrain_from_mlflow(
            args.from_mlflow,
            with_shipped=args.with_shipped,
            model_name=args.registered_model or "",
            alias=args.alias or "",
            min_new=args.min_new,
            experiments=[e.strip() for e in args.experiments.split(",") if e.strip()] or None,
            heldout_fraction=fraction,
            seed=args.seed,
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            val_fraction=args.val_fraction,
            image_size=args.image_size,
        )
    except (continual.ContinualError, RegistryError, LCTError) as exc:
        print(f"quicktune metatrain: {redact(str(exc))}", file=sys.stderr)
        return 1
    except MlflowException as exc:  # the server refused or is not there
        print(f"quicktune metatrain: MLflow: {redact(str(exc))[:500]}", file=sys.stderr)
        return 1
    print(json.dumps(report, sort_keys=True, default=str))
    return 0
