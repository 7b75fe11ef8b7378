"""``quicktune metadataset build|harvest|info``: make, harvest and inspect learning-curve tables."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "metadataset",
        help="build (campaign), harvest (from MLflow) and inspect meta-dataset tables",
        description="The meta-dataset Quick-Tune learns from: learning curves of (dataset, config, epoch).",
    )
    sub = parser.add_subparsers(dest="metadataset_command", metavar="ACTION")

    b = sub.add_parser(
        "build",
        help="run a resumable campaign (datasets x configs x epochs) and write an LCT",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Plan and run a campaign through a trial backend; every (dataset, config) is trained to "
        "--epochs in one `quicktune step`. Resumable: run the same command again (or just "
        "--workdir and --out) and it continues; nothing is trained twice. The table at --out is "
        "rewritten as results arrive. Dataset specs: NAME (packaged: digits, mnist5k, fashion-mnist, "
        "animal-mnist, emoji, lfw, tuxpaint, openclipart, silk-icons, oxygen-icons, gnome-icons, "
        "nuovext-icons, elementary-icons; `quicktune data import --help`), "
        "NAME:classes=0,2,3:max_per_class=60[:name=TASK], or a folder / "
        "s3:// URI[:name=TASK].",
    )
    b.add_argument("--datasets", nargs="+", default=[], metavar="SPEC", help="dataset specs (omit to resume)")
    b.add_argument("--configs", type=int, default=None, help="configs per dataset (a larger N extends a campaign)")
    b.add_argument("--epochs", type=int, default=None, help="epochs per config (also the lr schedule length)")
    b.add_argument("--out", required=True, help="LCT path (.parquet or .csv), rewritten incrementally")
    b.add_argument("--workdir", default="./metadataset-campaign", help="campaign folder (plan, data, steps, results)")
    b.add_argument("--backend", default="local", choices=["local", "kubernetes"], help="where steps run")
    b.add_argument("--workers", type=int, default=1, help="steps at once")
    b.add_argument("--threads", type=int, default=1, help="CPU threads per step (local backend)")
    b.add_argument("--space", default=None, help="search space (default builtin:cpu, or the plan's)")
    b.add_argument("--image-size", type=int, default=None, help="input size in px (default 32, or the plan's)")
    b.add_argument("--seed", type=int, default=None, help="sampling and training seed (default 0, or the plan's)")
    b.add_argument("--step-timeout", type=float, default=3600.0, help="seconds before a step is killed (failed)")
    b.add_argument("--max-results", type=int, default=None, help="stop after this many new results")
    b.add_argument("--hours", type=float, default=None, help="stop starting new steps after this many hours")
    b.add_argument("--poll", type=float, default=2.0, help="seconds between backend polls")
    b.add_argument(
        "--storage",
        default=None,
        help="where data and checkpoints live (default: the workdir; an s3:// prefix for kubernetes)",
    )
    b.add_argument("--namespace", default=None, help="kubernetes: namespace")
    b.add_argument("--image", default=None, help="kubernetes: container image with quicktune installed")
    b.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the configs whose step failed (status 'failed'; not diverged/invalid/oom)",
    )
    b.add_argument("--json", action="store_true", help="print the final progress summary as JSON")
    b.set_defaults(handler=_build)

    s = sub.add_parser("status", help="progress of a campaign (per task: configs done, failed, epochs, seconds)")
    s.add_argument("--workdir", default="./metadataset-campaign", help="campaign folder")
    s.add_argument("--json", action="store_true", help="print progress.json")
    s.set_defaults(handler=_status)

    x = sub.add_parser(
        "export",
        help="rewrite a campaign's table from its recorded results (runs nothing)",
        description="Rewrite a campaign's table from its recorded results (runs nothing). Several "
        "--workdir give one table of all their campaigns, in that order: an earlier campaign's rows "
        "and task names never change; a later task with an earlier name but other data (other "
        "meta-features) is renamed NAME-v<k> (k: its --workdir's position); the same name and data "
        "is one task with both campaigns' configs. The shipped table is "
        "--workdir V1 --workdir V2 (docs/metadataset.md).",
    )
    x.add_argument(
        "--workdir", action="append", default=None, help="campaign folder (repeatable; default ./metadataset-campaign)"
    )
    x.add_argument("--out", required=True, help="LCT path (.parquet or .csv)")
    x.set_defaults(handler=_export)

    h = sub.add_parser(
        "harvest",
        help="extract an LCT from the searches recorded on an MLflow server",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Every search recorded in MLflow (parent run per search, child run per config, "
        "per-epoch score/cost metrics) becomes LCT rows; the same (dataset fingerprint, "
        "config) seen in several searches keeps its longest curve.",
    )
    h.add_argument("--tracking-uri", required=True, help="MLflow tracking URI")
    h.add_argument("--out", required=True, help="LCT path (.parquet or .csv)")
    h.add_argument(
        "--experiment", action="append", default=None, help="experiment name (repeatable; default: every experiment)"
    )
    h.add_argument("--json", action="store_true", help="print a JSON summary")
    h.set_defaults(handler=_harvest)

    i = sub.add_parser(
        "info",
        help="size and coverage of a table (default: the shipped one): curves, sources, colour, resolutions, twins",
    )
    i.add_argument("path", nargs="?", default=None, help="LCT path (default: the shipped meta-dataset)")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(handler=_info)
    parser.set_defaults(handler=lambda args: (parser.print_help(), 2)[1])


def _backend(args: argparse.Namespace, workdir: str):
    if args.backend == "local":
        from pathlib import Path

        from quicktune.backends.local import LocalBackend

        return LocalBackend(
            Path(workdir) / "backend",
            max_workers=args.workers,
            threads_per_worker=args.threads,
            step_timeout=args.step_timeout,
        )
    from quicktune import storage

    if not args.namespace or not args.image:
        raise SystemExit("quicktune metadataset build: --backend kubernetes needs --namespace and --image")
    if not args.storage or not storage.is_s3(args.storage):
        raise SystemExit(
            "quicktune metadataset build: --backend kubernetes needs --storage s3://bucket/prefix "
            "(workers read data and write checkpoints there)"
        )
    from quicktune.backends.kubernetes import KubernetesBackend

    return KubernetesBackend(namespace=args.namespace, image=args.image, max_concurrent=args.workers)


def _build(args: argparse.Namespace) -> int:
    from quicktune.metadataset.campaign import CampaignError, build

    backend = _backend(args, args.workdir)
    deadline = time.time() + 3600 * args.hours if args.hours else None
    try:
        prog = build(
            args.workdir,
            backend,
            args.out,
            datasets=args.datasets,
            configs=args.configs,
            epochs=args.epochs,
            seed=args.seed,
            space=args.space,
            image_size=args.image_size,
            storage_root=args.storage,
            max_results=args.max_results,
            poll_interval=args.poll,
            deadline=deadline,
            retry_failed=args.retry_failed,
            log=lambda line: print(line, flush=True),
        )
    except CampaignError as exc:
        print(f"quicktune metadataset build: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(prog, indent=1))
    else:
        t = prog["total"]
        print(
            f"recorded {t['done']}/{t['planned']} (failed {t['failed']}), {t['epochs']} epochs, "
            f"{t['compute_seconds']:.0f} s compute; table: {args.out}"
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    from pathlib import Path

    path = Path(args.workdir) / "progress.json"
    if not path.exists():
        print(f"quicktune metadataset status: {path}: no progress recorded yet", file=sys.stderr)
        return 1
    prog = json.loads(path.read_text())
    # the task rows from the results on disk (current even between two progress writes, and
    # with the CPU each step measured, which older campaign code did not count)
    from quicktune.metadataset.records import export_summary

    prog.update(export_summary(args.workdir, keep=prog.get("total", {})))
    if args.json:
        print(json.dumps(prog, indent=1))
        return 0
    print(
        f"{'task':28} {'done':>9} {'failed':>6} {'epochs':>7} {'compute s':>10} {'step s':>9} {'cpu s':>9} {'best':>6}"
    )
    for task, p in prog["tasks"].items():
        best = f"{p['best_score']:.3f}" if p["best_score"] is not None else "-"
        print(
            f"{task:28} {p['done']:>4}/{p['planned']:<4} {p['failed']:>6} {p['epochs']:>7} "
            f"{p['compute_seconds']:>10.0f} {p['step_seconds']:>9.0f} {p['cpu_seconds']:>9.0f} {best:>6}"
        )
    t = prog["total"]
    print(
        f"{'total':28} {t['done']:>4}/{t['planned']:<4} {t['failed']:>6} {t['epochs']:>7} "
        f"{t['compute_seconds']:>10.0f} {t['step_seconds']:>9.0f} {t['cpu_seconds']:>9.0f}"
    )
    print(
        f"campaign wall time {t.get('campaign_wall_seconds', 0.0) / 3600:.2f} h over "
        f"{len(prog.get('sessions', []))} session(s); CPU in steps {t['cpu_seconds'] / 3600:.2f} h "
        f"(train + validation, as each step measured it); updated {prog.get('updated_at', '-')}"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from quicktune.metadataset.plan import CampaignError
    from quicktune.metadataset.records import export_many

    try:
        prog = export_many(args.workdir or ["./metadataset-campaign"], args.out)
    except CampaignError as exc:
        print(f"quicktune metadataset export: {exc}", file=sys.stderr)
        return 1
    t = prog["total"]
    print(f"wrote {args.out}: {t['done']}/{t['planned']} configs recorded ({t['failed']} failed), {t['epochs']} epochs")
    return 0


def _harvest(args: argparse.Namespace) -> int:
    from quicktune.metadataset.harvest import HarvestError, harvest

    try:
        summary = harvest(args.tracking_uri, args.out, experiments=args.experiment)
    except HarvestError as exc:
        print(f"quicktune metadataset harvest: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(
            f"harvested {summary['curves']} curves ({summary['rows']} rows) of {summary['datasets']} datasets "
            f"from {summary['searches']} searches -> {args.out}"
        )
        for w in summary.get("warnings", []):
            print(f"warning: {w}", file=sys.stderr)
    return 0


def _info(args: argparse.Namespace) -> int:
    from quicktune.lct import LCTError
    from quicktune.metadataset.info import table_info

    try:
        info = table_info(args.path)
    except LCTError as exc:
        print(f"quicktune metadataset info: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info))
    else:
        print(
            f"{info['path']}: {info['datasets']} datasets, {info['curves']} curves, {info['rows']} rows, "
            f"max epoch {info['max_epoch']}"
        )
        print(
            f"  {info['num_sources']} sources ({', '.join(info['sources'])}); "
            f"{len(info.get('colour_tasks', []))} colour tasks; resolutions {info.get('resolutions', '?')} px; "
            f"images per task {info.get('images', '?')}; configs per task {info['configs_per_task']}; "
            f"epochs per curve {info['epochs_per_curve']}; pretrained/random twins: "
            f"{', '.join(info.get('pretrained_random_twins', [])) or 'none'}"
        )
    return 0
