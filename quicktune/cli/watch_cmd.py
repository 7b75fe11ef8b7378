"""``quicktune watch``: start searches requested in the MLflow UI (see ``docs/mlflow-ui.md``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "watch",
        help="start searches requested in the MLflow UI and report progress there",
        description="Poll MLflow for registered models (or experiments) tagged quicktune.request=start "
        "(with quicktune.data and quicktune.budget), validate and claim each request, start "
        "the search with the chosen launcher and write its status, parent-run link and "
        "incumbent back as tags; the winner is registered under the requested name with the "
        "alias 'champion'. quicktune.request=cancel stops a search.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument(
        "--launcher",
        choices=("local", "kubernetes", "kfp"),
        default="local",
        help="how searches run: local processes, a Kubernetes Job per search, or a KFP run",
    )
    p.add_argument("--poll", type=float, default=10.0, help="seconds between rounds")
    p.add_argument("--once", action="store_true", help="handle the pending requests to completion, then exit")
    p.add_argument("--timeout", type=float, default=None, help="with --once: give up after this many seconds")
    p.add_argument("--experiment", default="quicktune", help="experiment for searches requested on registered models")
    p.add_argument(
        "--state-dir",
        default=None,
        help="launcher state and local search folders (default: $QUICKTUNE_WATCH_STATE or ./.quicktune-watch)",
    )
    p.add_argument(
        "--watcher-id", default=None, help="stable id of this watcher (default: $QUICKTUNE_WATCHER_ID or the host name)"
    )
    p.add_argument("--max-workers", type=int, default=16, help="largest quicktune.workers accepted")
    p.add_argument(
        "--retrain-every",
        type=int,
        default=0,
        metavar="N",
        help="after every N ended searches, run `quicktune metatrain --from-mlflow` in its own process "
        "(registers a new quicktune-surrogate version; champion moves only when not worse). Default 0: never",
    )
    p.add_argument("--retrain-with-shipped", action="store_true", help="retrain with the shipped table merged in")
    p.add_argument("--claim-delay", type=float, default=1.5, help="seconds between claiming and checking the claim")
    p.add_argument(
        "--allowed-data-root",
        action="append",
        default=argparse.SUPPRESS,
        metavar="PREFIX",
        help="where quicktune.data (and a quicktune.space file) may lie: s3:// (every bucket the "
        "watcher's credentials read), s3://BUCKET[/PREFIX] or an absolute local folder; "
        "repeatable, replaces the default. Default: $QUICKTUNE_ALLOWED_DATA_ROOTS "
        "(comma-separated) if set, else s3:// only, so local paths are refused. Paths are "
        "compared after resolving '..' and symlinks, S3 prefixes on '/' boundaries; "
        "quicktune.space also takes builtin:NAME",
    )
    p.add_argument(
        "--webhook-port",
        type=int,
        default=None,
        help="also accept MLflow webhooks on this port (secret from $QUICKTUNE_WEBHOOK_SECRET)",
    )
    p.add_argument("--namespace", default=None, help="kubernetes: namespace (default: in-cluster or 'quicktune')")
    p.add_argument("--image", default=os.environ.get("QUICKTUNE_IMAGE", ""), help="kubernetes: controller image")
    p.add_argument("--kfp-host", default=os.environ.get("KFP_HOST"), help="kfp: KFP API endpoint")
    p.add_argument(
        "--pipeline", default=None, help="kfp: compiled pipeline YAML (default pipelines/quicktune_pipeline.yaml)"
    )
    p.set_defaults(handler=_watch)


def _launcher(args: argparse.Namespace, tracking_uri: str, state_dir: Path):
    from quicktune.watch.launchers import KfpLauncher, KubernetesLauncher, LocalLauncher

    if args.launcher == "local":
        return LocalLauncher(state_dir, tracking_uri)
    if args.launcher == "kubernetes":
        from quicktune.backends.kubernetes import (
            default_api_client as _default_api_client,
            in_cluster_namespace as _in_cluster_namespace,
            own_image as _own_image,
        )

        namespace = args.namespace or os.environ.get("POD_NAMESPACE") or _in_cluster_namespace() or "quicktune"
        api_client = _default_api_client()
        # default: the controller Jobs run the watcher's own image (one image for everything)
        image = args.image or _own_image(api_client, namespace, os.environ.get("POD_NAME"))
        if not image:
            raise ValueError("--launcher kubernetes needs --image (or $QUICKTUNE_IMAGE) outside a pod")
        return KubernetesLauncher(
            tracking_uri,
            namespace,
            image,
            api_client=api_client,
            checkpoint_uri=os.environ.get("QUICKTUNE_CHECKPOINT_URI") or None,
        )
    pipeline = args.pipeline or str(Path(__file__).resolve().parents[2] / "pipelines" / "quicktune_pipeline.yaml")
    if not Path(pipeline).exists():
        raise ValueError(f"--pipeline {pipeline}: no such file")
    return KfpLauncher(tracking_uri, state_dir, pipeline, host=args.kfp_host)


def _watch(args: argparse.Namespace) -> int:
    from quicktune.cli.search_cmd import _quiet_clients

    _quiet_clients()
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        print("quicktune watch: give --tracking-uri (or set MLFLOW_TRACKING_URI)", file=sys.stderr)
        return 2
    from quicktune.tracking.secrets import safe_uri
    from quicktune.watch.roots import AllowedRoots
    from quicktune.watch.watcher import Watcher, WatcherConfig, default_watcher_id

    try:
        roots = AllowedRoots.from_settings(getattr(args, "allowed_data_root", None))
    except ValueError as exc:
        print(f"quicktune watch: {exc}", file=sys.stderr)
        return 2
    if args.retrain_every < 0:
        print("quicktune watch: --retrain-every must be >= 0", file=sys.stderr)
        return 2
    state_dir = Path(args.state_dir or os.environ.get("QUICKTUNE_WATCH_STATE") or ".quicktune-watch").resolve()
    try:
        launcher = _launcher(args, tracking_uri, state_dir)
    except ValueError as exc:
        print(f"quicktune watch: {exc}", file=sys.stderr)
        return 2
    cfg = WatcherConfig(
        tracking_uri=tracking_uri,
        experiment=args.experiment,
        poll=args.poll,
        watcher_id=args.watcher_id or default_watcher_id(),
        max_workers=args.max_workers,
        claim_delay=args.claim_delay,
        roots=roots,
        retrain_every=args.retrain_every,
        retrain_with_shipped=args.retrain_with_shipped,
        state_dir=str(state_dir),
    )
    watcher = Watcher(cfg, launcher)
    log = logging.getLogger("quicktune.watch")
    print(
        f"quicktune watch: {safe_uri(tracking_uri)} as {cfg.watcher_id}, launcher {launcher.name}, "
        f"state in {state_dir}; allowed data roots: {roots.describe()}",
        file=sys.stderr,
    )
    receiver = None
    if args.webhook_port is not None:
        from quicktune.watch.webhook import WebhookReceiver

        secret = os.environ.get("QUICKTUNE_WEBHOOK_SECRET", "")
        if not secret:
            print("quicktune watch: --webhook-port needs $QUICKTUNE_WEBHOOK_SECRET", file=sys.stderr)
            return 2
        receiver = WebhookReceiver(secret, lambda payload: watcher.wake.set(), port=args.webhook_port)
        receiver.__enter__()
        log.warning("accepting MLflow webhooks on port %d", receiver.port)
    try:
        if args.once:
            watcher.run_once(timeout=args.timeout)
        else:
            watcher.run_forever()
    except TimeoutError as exc:
        print(f"quicktune watch: {exc}", file=sys.stderr)
        return 1
    finally:
        if receiver is not None:
            receiver.__exit__(None, None, None)
    print(f"quicktune watch: started {len(watcher.launched)} search(es)", file=sys.stderr)
    return 0
