"""Peak memory of promotion's loading path for the largest paper model, against the controller's limit.

Why: promotion runs inside the controller pod (``k8s/base/controller-job.yaml``: 3Gi), and a
checkpoint carries the AdamW state beside the model (two more copies of every weight), so loading
the whole checkpoint cannot fit for ``beit_large_patch16_512`` (305 M parameters, 1.2 GB of fp32
weights). ``quicktune.search.promotion.load_winner`` reads only the model's tensors; this measures it.

What it does: builds ``beit_large_patch16_512`` with random init (no weights download), writes a
quicktune checkpoint of it in a temporary folder -- the model tensors plus an AdamW-shaped optimizer
state (``exp_avg``, ``exp_avg_sq``, ``step`` per parameter), in the real layout (safetensors +
JSON manifest with SHA-256 and size) -- streaming, so the builder never holds the file in memory.
Then a fresh subprocess runs promotion's loading path (``load_winner``: build the network, verify
the file, read the model weights) and reports its peak RSS (``resource.getrusage`` ``ru_maxrss``,
the high-water mark of the whole process, interpreter, torch and timm included), beside the RSS
right after building the randomly initialised network (what any load must pay).

    nice -n 10 .venv/bin/python benchmarks/bench_promotion_memory.py [--model NAME] [--keep DIR]

Needs ~3.7 GB of free disk (the checkpoint) and ~3 GB of memory for the subprocess. Prints one JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT_BYTES = 3 * 1024**3  # the controller Job's memory limit (3Gi)
CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from quicktune.search.promotion import load_winner
def rss():  # current resident set (KiB) from /proc
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
net, pre, seed = load_winner(sys.argv[1], "best")
params = sum(p.numel() for p in net.parameters())
print(json.dumps({"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "rss_after_kib": rss(),
                  "params": params, "seconds": time.perf_counter() - t0, "model": pre["model"]}))
"""
BASELINE = r"""
import json, resource, sys
from quicktune.finetune.model import build_network, model_defaults
name = sys.argv[1]
net, _ = build_network(name, 10, 3, int(sys.argv[2]), 0.0, pretrained=False, defaults=model_defaults(name))
print(json.dumps({"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def write_checkpoint(model: str, image_size: int, folder: Path) -> dict:
    """A quicktune checkpoint (epoch 1) of ``model`` with random init and an AdamW-shaped state."""
    import torch

    from quicktune.finetune.checkpoint import FORMAT
    from quicktune.finetune.model import build_network, model_defaults

    defaults = model_defaults(model)
    net, _ = build_network(model, 10, 3, image_size, 0.0, pretrained=False, defaults=defaults)
    state = net.state_dict()
    names = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
    code = {v: k for k, v in names.items()}
    entries: list[tuple[str, str, list[int], int, torch.Tensor | None]] = []  # name, dtype, shape, nbytes, data
    for key, t in state.items():
        entries.append((f"model/{key}", code[t.dtype], list(t.shape), t.numel() * t.element_size(), t))
    for i, p in enumerate(net.parameters()):  # AdamW: two moments and a step count per parameter
        nbytes = p.numel() * 4
        entries.append((f"optim/{i}/exp_avg", "F32", list(p.shape), nbytes, None))
        entries.append((f"optim/{i}/exp_avg_sq", "F32", list(p.shape), nbytes, None))
        entries.append((f"optim/{i}/step", "F32", [], 4, None))
    header, offset = {}, 0
    for name, dtype, shape, nbytes, _ in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path = folder / "epoch-0001.safetensors"
    digest, size = hashlib.sha256(), 0
    with open(path, "wb") as fh:
        for chunk in (struct.pack("<Q", len(raw)), raw):
            fh.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        for _, _, _, nbytes, data in entries:
            if data is not None:
                buf = data.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            else:
                buf = (torch.rand(nbytes // 4) * 1e-3).numpy().tobytes()  # a moment: any values
            fh.write(buf)
            digest.update(buf)
            size += len(buf)
    mean, std = list(defaults.get("mean", (0.5, 0.5, 0.5))), list(defaults.get("std", (0.5, 0.5, 0.5)))
    config = {"model": model, "lr": 1e-4, "opt": "adamw"}
    manifest = {
        "format": FORMAT,
        "epoch": 1,
        "tensors_file": path.name,
        "sha256": digest.hexdigest(),
        "size": size,
        "best_epoch": 1,
        "split_seed": 0,
        "num_classes": 10,
        "in_chans": 3,
        "image_size": image_size,
        "mean": mean,
        "std": std,
        "classes": [str(i) for i in range(10)],
        "config": config,
        "resolved_config": {**config, "drop": 0.0},
        "history": [{"epoch": 1, "score": 0.5}],
    }
    (folder / "epoch-0001.json").write_text(json.dumps(manifest))
    n_model = sum(t.numel() * t.element_size() for t in state.values())
    return {"checkpoint_bytes": size, "model_bytes": n_model, "params": sum(p.numel() for p in net.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="beit_large_patch16_512")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--keep", help="write the checkpoint here and keep it (default: a temporary folder)")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="qt-bench-promotion-") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        built = write_checkpoint(args.model, args.image_size, folder)
        write_s = time.perf_counter() - t0
        run = [sys.executable, "-c"]
        base = json.loads(
            subprocess.run(
                [*run, BASELINE, args.model, str(args.image_size)], env=env, capture_output=True, text=True, check=True
            ).stdout
        )
        out = subprocess.run([*run, CHILD, str(folder)], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"the loading subprocess failed ({out.returncode}):\n{out.stderr[-3000:]}")
        child = json.loads(out.stdout.strip().splitlines()[-1])
    peak = child["peak_rss_kib"] * 1024
    report = {
        "model": args.model,
        "params": built["params"],
        "model_weights_gb": round(built["model_bytes"] / 1e9, 3),
        "checkpoint_file_gb": round(built["checkpoint_bytes"] / 1e9, 3),
        "peak_rss_gib_load_winner": round(peak / 1024**3, 3),
        "peak_rss_gib_build_network_only": round(base["peak_rss_kib"] * 1024 / 1024**3, 3),
        "controller_limit_gib": LIMIT_BYTES / 1024**3,
        "fits": peak < LIMIT_BYTES,
        "headroom_gib": round((LIMIT_BYTES - peak) / 1024**3, 3),
        "load_seconds": round(child["seconds"], 1),
        "checkpoint_write_seconds": round(write_s, 1),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
