"""``quicktune data import`` and ``quicktune data info``."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "data",
        help="import packaged datasets, inspect datasets",
        description="Datasets: write packaged real datasets as image folders; inspect a dataset.",
    )
    dsub = parser.add_subparsers(dest="data_command", metavar="ACTION")

    imp = dsub.add_parser(
        "import",
        help="write a packaged dataset as an image folder (local path or s3://)",
        description="Write a real dataset that ships inside a package as PNG files, one sub-folder per class, "
        "to a local folder or an s3:// prefix. Datasets: digits, mnist5k, fashion-mnist, "
        "animal-mnist, emoji, lfw, tuxpaint, openclipart, silk-icons, oxygen-icons, gnome-icons, "
        "nuovext-icons, elementary-icons (docs/data-and-hub.md says which package each needs).",
    )
    imp.add_argument("name", help="packaged dataset name (see the list above)")
    imp.add_argument("dest", help="destination folder or s3://bucket/prefix (must be empty unless --force)")
    imp.add_argument("--classes", help="comma-separated label indices to keep, e.g. 0,2,3")
    imp.add_argument("--max-per-class", type=int, help="keep at most N images per class (first N in source order)")
    imp.add_argument("--size", type=int, help="resize every image to PX x PX pixels")
    imp.add_argument("--force", action="store_true", help="write into a non-empty destination")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")
    imp.set_defaults(handler=_import)

    info = dsub.add_parser(
        "info",
        help="classes, counts, splits and meta-features of a dataset",
        description="Open a dataset (folder or s3://) and print what quicktune sees.",
    )
    info.add_argument("uri", help="dataset folder or s3://bucket/prefix")
    info.add_argument("--cache-dir", help="cache for S3 mirrors (default $QUICKTUNE_CACHE/datasets)")
    info.add_argument("--split-seed", type=int, default=0, help="seed of the stratified split")
    info.add_argument(
        "--verify",
        action="store_true",
        help="decode every image completely, as training does (truncated or corrupt files fail; "
        "slow on big datasets); exit 1 naming the bad files",
    )
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_info)
    parser.set_defaults(handler=lambda args: (parser.print_help(), 2)[1])


def _parse_classes(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"quicktune data import: --classes must be comma-separated integers, got {text!r}") from None


def _import(args: argparse.Namespace) -> int:
    from quicktune.data import DatasetError
    from quicktune.data.packaged import import_dataset

    def progress(done: int, total: int) -> None:
        print(f"  {done}/{total} images", file=sys.stderr)

    try:
        summary = import_dataset(
            args.name,
            args.dest,
            classes=_parse_classes(args.classes),
            max_per_class=args.max_per_class,
            size=args.size,
            force=args.force,
            progress=progress,
        )
    except DatasetError as exc:
        print(f"quicktune data import: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"wrote {summary['num_images']} images of {args.name} ({summary['source']}) to {args.dest}")
        for cls, n in summary["counts"].items():
            print(f"  {cls}: {n}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from quicktune.data import DatasetError, open_dataset

    verified = None
    try:
        ds = open_dataset(args.uri, cache_dir=args.cache_dir, split_seed=args.split_seed)
        if args.verify:
            verified = ds.verify(force=True)
        desc = ds.describe()
    except DatasetError as exc:
        print(f"quicktune data info: {exc}", file=sys.stderr)
        return 1
    if verified is not None:
        desc["verified"] = verified
    if args.json:
        print(json.dumps(desc, indent=1))
        return 0
    print(f"dataset    {desc['uri']}")
    if desc["root"] != desc["uri"]:
        print(f"local copy {desc['root']}")
    print(
        f"layout     {desc['layout']}  ({desc['num_images']} images, mode {desc['mode']}, "
        f"fingerprint {desc['fingerprint']})"
    )
    print(f"splits     {desc['split_source']}: " + ", ".join(f"{k} {v}" for k, v in desc["splits"].items()))
    print(f"classes    {len(desc['classes'])}")
    for cls, n in desc["class_counts"].items():
        print(f"  {cls}: {n}")
    print("meta-features")
    for k, v in desc["meta_features"].items():
        print(f"  {k}: {v:g}")
    if verified is not None:
        modes = ", ".join(f"{m} {n}" for m, n in verified["modes"].items())
        print(f"verified   {verified['images']} images fully decoded (PIL modes: {modes})")
    if desc.get("sync"):
        s = desc["sync"]
        print(
            f"s3 sync    listed {s['listed']}, downloaded {s['downloaded']}, reused {s['reused']}, "
            f"removed {s['removed']}, {s['bytes']} bytes in {s['seconds']} s"
        )
    return 0
