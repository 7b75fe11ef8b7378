"""Dataset access from S3: cold open (parallel download into the ETag cache), warm open (listing only,
nothing fetched), and the meta-feature scan, on a real SeaweedFS server with credentials.

Data: Fashion-MNIST classes {0,2,3,4,6}, 300 images each, 32 px PNG, imported with
``quicktune data import`` straight to S3 (falls back to digits when the Debian package is absent).

    .venv/bin/python benchmarks/bench_data_s3.py --out benchmarks/results/data_s3.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=16, help="QUICKTUNE_S3_WORKERS for the download")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from quicktune.data import DatasetError, open_dataset
    from quicktune.data.packaged import import_dataset
    from quicktune.testing import SeaweedS3

    with tempfile.TemporaryDirectory() as tmp, SeaweedS3(Path(tmp) / "s3", "bench", "bench-secret") as s3:
        os.environ.update(s3.env)
        os.environ["QUICKTUNE_S3_WORKERS"] = str(args.workers)
        s3.create_bucket("datasets")
        uri = "s3://datasets/bench"
        t = time.perf_counter()
        try:
            name, classes = "fashion-mnist", [0, 2, 3, 4, 6]
            summary = import_dataset(name, uri, classes=classes, max_per_class=args.per_class, size=args.size)
        except DatasetError:
            name, classes = "digits", None
            summary = import_dataset(name, uri, max_per_class=args.per_class, size=args.size)
        upload_s = time.perf_counter() - t
        cache = Path(tmp) / "cache"

        t = time.perf_counter()
        cold = open_dataset(uri, cache_dir=cache)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        feats = cold.meta_features()
        meta_s = time.perf_counter() - t
        t = time.perf_counter()
        warm = open_dataset(uri, cache_dir=cache)
        warm.meta_features()
        warm_s = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(len(warm)):
            warm.load_image(i)
        decode_s = time.perf_counter() - t

    result = {
        "dataset": name,
        "classes": classes,
        "images": summary["num_images"],
        "size_px": args.size,
        "workers": args.workers,
        "import_to_s3_s": round(upload_s, 2),
        "cold_open_s": round(cold_s, 2),
        "cold_downloaded": cold.sync_stats["downloaded"],
        "cold_images_per_s": round(cold.sync_stats["downloaded"] / cold_s, 1),
        "meta_features_scan_s": round(meta_s, 2),
        "warm_open_s": round(warm_s, 2),
        "warm_downloaded": warm.sync_stats["downloaded"],
        "decode_all_s": round(decode_s, 2),
        "num_channels": feats["num_channels"],
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
