"""``quicktune search`` (run or resume a search) and ``quicktune promote`` (register a winner)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from quicktune.durations import DurationError, parse_duration as _parse_duration
from quicktune.tracking.names import InvalidNameError, check_search_id


def parse_duration(text: str) -> float:
    """argparse type for durations: the grammar of :mod:`quicktune.durations` (``90s``, ``20m``,
    ``1h30m``, a number of seconds)."""
    try:
        return _parse_duration(text)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def search_id_arg(text: str) -> str:
    """argparse type for search ids (:func:`quicktune.tracking.names.check_search_id`): an id names
    a folder, a Kubernetes Job and an MLflow filter value, so ``../../x`` or a quote is refused."""
    try:
        return check_search_id(text)
    except InvalidNameError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _local_data(uri: str) -> str:
    """A local ``--data`` folder as an absolute path: steps run in their own folders (local
    backend), where a relative path would name nothing. URIs (``s3://``) are kept as given."""
    if "://" in uri:
        return uri
    return os.path.abspath(os.path.expanduser(uri))


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 1")
    return v


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    k, v = text.split("=", 1)
    return k.strip(), v


def default_tracking(cwd: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """The embedded default store: ``sqlite:///<cwd>/mlflow.db`` with artifacts in ``<cwd>/mlruns``."""
    base = Path(cwd or os.getcwd()).resolve()
    return f"sqlite:///{base / 'mlflow.db'}", str(base / "mlruns")


def _tracking(args: argparse.Namespace) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment): a sqlite store keeps its artifacts in
    an ``mlruns`` folder next to the database file; a server decides for itself."""
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return default_tracking()
    if uri.startswith("sqlite:///"):
        return uri, str(Path(uri[len("sqlite:///") :]).resolve().parent / "mlruns")
    return uri, None


def _quiet_clients() -> None:
    """MLflow's own HTTP retries would wait minutes; ours (with a clear report) take over sooner."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.models.model"):
        logging.getLogger(name).setLevel(logging.ERROR)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="run (or resume) a search and register the winner",
        description="Run Quick-Tune on a dataset within a budget: each step finetunes one configuration "
        "for one more epoch (local worker processes or Kubernetes Jobs); everything is recorded "
        "in MLflow (one parent run per search, one child run per configuration). Killed, it "
        "resumes with the same --search-id without losing or repeating an epoch. With "
        "--model-name the best configuration is tested on the held-out split and registered "
        "with the alias 'champion'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", required=True, help="dataset: a local image folder or s3://bucket/prefix")
    p.add_argument("--budget", required=True, type=parse_duration, help="wall-clock budget, e.g. 90s, 20m, 4h")
    p.add_argument("--space", default="builtin:cpu", help="search-space YAML or builtin:NAME (cpu, paper)")
    p.add_argument("--workers", type=_positive_int, default=1, help="steps running at once")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here "
        "with artifacts in ./mlruns)",
    )
    p.add_argument("--experiment", default="quicktune", help="MLflow experiment")
    p.add_argument("--model-name", default=None, help="register the winner under this name (skip if omitted)")
    p.add_argument("--alias", default="champion", help="alias given to the registered version")
    p.add_argument(
        "--search-id",
        default=None,
        type=search_id_arg,
        help="resume this search, or name a new one (lowercase letters, digits and '-', at most 63)",
    )
    p.add_argument("--optimizer", default="quicktune", help="quicktune, random, asha, hyperband, dyhpo, ...")
    p.add_argument(
        "--meta-artifact",
        default=None,
        metavar="DIR_OR_URI",
        help="meta-trained surrogate to start from: a folder written by `quicktune metatrain`, an "
        "s3://bucket/prefix holding its artifact.json + weights.safetensors, or a registered version "
        "models:/NAME@ALIAS or models:/NAME/VERSION (default: quicktune-surrogate@champion on the "
        "tracking server when it exists, else the one shipped in the package)",
    )
    p.add_argument("--max-epochs", type=_positive_int, default=10, help="epochs per configuration at most")
    p.add_argument("--image-size", type=_positive_int, default=None, help="input size in px (default: the step's)")
    p.add_argument(
        "--checkpoint-uri",
        default=None,
        help="s3://bucket/prefix (or folder) for checkpoints (default: the MLflow artifact store "
        "when it is S3, else WORKDIR/checkpoints)",
    )
    p.add_argument("--backend", default="local", help="local or kubernetes")
    p.add_argument(
        "--backend-option",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra backend setting (e.g. namespace=ml, image=REGISTRY/quicktune:TAG)",
    )
    p.add_argument("--workdir", default=".quicktune", help="local state: step files, local checkpoints")
    p.add_argument("--seed", type=int, default=0, help="optimizer and training seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16", "auto"),
        default=None,
        help="training precision of every step (default: the step's, auto = bf16 on CUDA devices of compute "
        "capability >= 8, fp16 + GradScaler on older ones, fp32 on CPU); like --device, a resume must "
        "give the search's own",
    )
    p.add_argument("--budget-epochs", type=_positive_int, default=None, help="also stop after this many epochs")
    p.add_argument(
        "--budget-step-seconds",
        type=parse_duration,
        default=None,
        help="also stop when the steps' summed cost reaches this (GPU-seconds on GPUs)",
    )
    p.add_argument("--threads-per-worker", type=_positive_int, default=1, help="CPU threads per local step")
    p.add_argument("--step-timeout", type=parse_duration, default=None, help="kill a step after this long")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_search)

    q = sub.add_parser(
        "promote",
        help="test and register the best configuration of a finished search",
        description="Evaluate a search's best configuration (by validation score) on the held-out "
        "test split, log it as an MLflow model that takes raw uint8 images "
        "[N, H, W, 3], register it and set an alias.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    q.add_argument("search_id", metavar="SEARCH_ID", type=search_id_arg)
    q.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default as for search)")
    q.add_argument("--experiment", default="quicktune", help="MLflow experiment")
    q.add_argument("--model-name", default=None, help="registered model name (default quicktune-SEARCH_ID)")
    q.add_argument("--alias", default="champion", help="alias given to the new version")
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q.set_defaults(handler=_promote)


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _ui_hint(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri}   (then open http://127.0.0.1:5000)"


def _search(args: argparse.Namespace) -> int:
    _quiet_clients()
    from quicktune.backends.registry import make_backend
    from quicktune.search import SearchError, SearchSpec, run_search
    from quicktune.tracking import InfrastructureError, SearchTracker, safe_uri

    tracking_uri, artifact_location = _tracking(args)
    try:
        spec = SearchSpec(
            data_uri=_local_data(args.data),
            budget_seconds=args.budget,
            space=args.space,
            search_id=args.search_id or "",
            workers=args.workers,
            max_epochs=args.max_epochs,
            seed=args.seed,
            optimizer=args.optimizer,
            meta_artifact=args.meta_artifact,
            image_size=args.image_size,
            device=args.device,
            precision=args.precision,
            checkpoint_uri=args.checkpoint_uri,
            workdir=str(Path(args.workdir).resolve()),
            budget_epochs=args.budget_epochs,
            budget_gpu_seconds=args.budget_step_seconds,
        )
        backend = make_backend(
            args.backend,
            workers=args.workers,
            workdir=spec.workdir,
            search_id=spec.search_id,
            step_timeout=args.step_timeout,
            threads_per_worker=args.threads_per_worker,
            **dict(args.backend_option),
        )
        backend.warm_up()  # overlaps connecting to MLflow (run_search asks again: a no-op by then)
        tracker = SearchTracker(tracking_uri, experiment=args.experiment, artifact_location=artifact_location)
        result = run_search(spec, backend, tracker, progress=not args.no_progress)
    except (SearchError, InfrastructureError, ValueError) as exc:
        print(f"quicktune search: {exc}", file=sys.stderr)
        return 2
    out: dict[str, Any] = {
        "search_id": result.search_id,
        "status": result.status,
        "message": result.message,
        "parent_run_id": result.parent_run_id,
        "best_config_id": result.best_config_id,
        "best_config": result.best_config,
        "best_score": result.best_score,
        "best_epoch": result.best_epoch,
        "configs_tried": result.configs_tried,
        "epochs_done": result.epochs_done,
        "elapsed_seconds": result.elapsed_seconds,
        "tracking_uri": safe_uri(tracking_uri),
    }
    code = 0 if result.status == "succeeded" else 1
    if not args.json:
        print(
            f"\nsearch {result.search_id}: {result.status} ({result.message}) after "
            f"{_fmt_seconds(result.elapsed_seconds)}"
        )
        print(f"  configurations tried: {result.configs_tried}, epochs trained: {result.epochs_done}")
        if result.best_config_id:
            print(
                f"  best: validation accuracy {result.best_score:.4f} -- {result.best_config.get('model')} "
                f"(config {result.best_config_id}, epoch {result.best_epoch})"
            )
    if result.status == "succeeded" and args.model_name:
        code = _do_promote(
            result.search_id, tracking_uri, args.experiment, args.model_name, args.alias, out, quiet=args.json
        )
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(f"  look at it: {_ui_hint(safe_uri(tracking_uri))}")
        if result.status != "succeeded" or code:
            print(f"  resume: add --search-id {result.search_id} to the same command")
    return code


def _do_promote(
    search_id: str,
    tracking_uri: str,
    experiment: str,
    model_name: str | None,
    alias: str,
    out: dict[str, Any],
    quiet: bool,
) -> int:
    from quicktune.search import PromotionError, promote
    from quicktune.tracking import InfrastructureError

    try:
        p = promote(search_id, tracking_uri=tracking_uri, model_name=model_name, alias=alias, experiment=experiment)
    except (PromotionError, InfrastructureError) as exc:
        print(f"quicktune promote: {exc}", file=sys.stderr)
        out["promotion_error"] = str(exc)
        return 3
    out.update(
        {
            "model_name": p.model_name,
            "model_version": p.version,
            "model_uri": p.model_uri,
            "test_accuracy": p.test_accuracy,
            "promoted_config_id": p.config_id,
        }
    )
    if not quiet:
        print(
            f"  registered: {p.model_uri} (version {p.version}), test accuracy {p.test_accuracy:.4f} "
            f"on {int(p.test.get('n', 0))} held-out images"
        )
        print(f"  use it: mlflow.pytorch.load_model({p.model_uri!r})(uint8 images [N, H, W, 3]) -> logits")
    return 0


def _promote(args: argparse.Namespace) -> int:
    _quiet_clients()
    tracking_uri, _ = _tracking(args)
    out: dict[str, Any] = {"search_id": args.search_id}
    code = _do_promote(args.search_id, tracking_uri, args.experiment, args.model_name, args.alias, out, quiet=args.json)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    return code
