"""The fixed per-step cost on the Kubernetes path: one Job per step vs warm step pods.

Both modes run on the fake cluster (``quicktune.testing.fake_k8s``): pods are local processes, so
what is real here is what a step pays besides training -- process start, ``import torch, timm``,
the dataset's sync from S3 (a real SeaweedFS), the pretrained weights' load, the decode, the
checkpoint's load and save on S3, the API round trips of the backend. What is not: image pulls and
scheduling on a real cluster (they only make a cold Job dearer).

For each of ``--configs`` configs: a first step (epoch 1), then continued steps (epoch 2, 3, ...),
each measured from ``backend.start`` to the backend seeing it succeeded (polled every 0.1 s). The
fixed cost of a continued step = its wall time - the epoch's train + eval seconds (RESULT.json),
reported as a fraction of the epoch (train + eval). Medians over the continued steps, with the
median of each step phase (RESULT "phases"; "overlapped": the checkpoint's tensors written while
the epoch is evaluated), the time outside the step's own run (pod start or claim, API round trips)
and how many continued steps a warm worker ran from memory (``quicktune.finetune.warm_cache``).

    nice -n 10 .venv/bin/python benchmarks/bench_k8s_step_overhead.py \
        --out benchmarks/results/k8s_step_overhead.json

The machine's 1-minute load average is recorded (the development machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
NS = "default"
IMAGE = "registry.example.com/quicktune:bench"


def _upload(s3, folder: Path, bucket: str, prefix: str) -> str:
    client = s3.client(max_attempts=8)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())
    return f"s3://{bucket}/{prefix}"


def _kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "fake", "user": {}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NS}}],
            }
        )
    )
    return path


def _run_mode(mode: str, args, s3, data_uri: str, bucket: str, workdir: Path) -> dict:
    from quicktune.backends.base import StepRequest
    from quicktune.backends.kubernetes import KubernetesBackend, WarmKubernetesBackend
    from quicktune.space import config_id
    from quicktune.testing.fake_k8s import FakeCluster

    node_env = {"OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "AWS_EC2_METADATA_DISABLED": "true"}
    with FakeCluster(workdir / f"cluster-{mode}", node_env=node_env, tick=0.02) as fake:
        fake.add_secret("s3", {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key})
        fake.node_env["KUBECONFIG"] = str(_kubeconfig(workdir / f"kubeconfig-{mode}", fake.url))
        kw = dict(
            api_client=fake.api_client(),
            secret_names=["s3"],
            env={"AWS_ENDPOINT_URL": s3.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1"},
            max_concurrent=1,
            memory="4Gi",
            watch_timeout_seconds=5,
        )
        if mode == "warm":
            backend: KubernetesBackend = WarmKubernetesBackend(
                NS, IMAGE, "bench", warm_workers=1, warm_idle_seconds=600, **kw
            )
        else:
            backend = KubernetesBackend(NS, IMAGE, "bench", **kw)
        steps = []
        try:
            for c in range(args.configs):
                config = {
                    "model": args.model,
                    "lr": 0.001 * (c + 1),
                    "opt": "adamw",
                    "batch_size": 32,
                    "sched": "cosine",
                }
                cid = config_id(config)
                for epoch in range(1, args.epochs + 1):
                    req = StepRequest(
                        search_id="bench",
                        config_id=cid,
                        config=config,
                        data_uri=data_uri,
                        to_epoch=epoch,
                        checkpoint_dir=f"s3://{bucket}/ckpt-{mode}/{cid}",
                        image_size=args.image_size,
                        max_epochs=args.epochs,
                    )
                    t0 = time.perf_counter()
                    sid = backend.start(req)
                    while not (status := backend.poll(sid)).done:
                        time.sleep(0.1)
                    wall = time.perf_counter() - t0
                    if status.state != "succeeded":
                        raise RuntimeError(f"{mode} step {sid}: {status}; logs:\n{backend.logs(sid)[-3000:]}")
                    res = backend.result(sid)
                    (ep,) = res["epochs"]
                    work = float(ep["train_seconds"]) + float(ep["eval_seconds"])
                    steps.append(
                        {
                            "config": c,
                            "epoch": epoch,
                            "wall_seconds": round(wall, 3),
                            "train_eval_seconds": round(work, 3),
                            "fixed_seconds": round(wall - work, 3),
                            "fixed_fraction": round((wall - work) / work, 4),
                            # outside the step's own run: pod start (jobs), claim (warm), API round trips
                            "outside_step_seconds": round(wall - float(res.get("step_seconds") or 0.0), 3),
                            "memory": bool(res.get("memory")),  # continued from the warm worker's memory
                            "phases": res.get("phases"),
                        }
                    )
                    print(f"{mode}: config {c} epoch {epoch}: wall {wall:.2f} s, train+eval {work:.2f} s", flush=True)
        finally:
            backend.close()
    cont = [s for s in steps if s["epoch"] > 1]
    return {
        "continued_median_phases": _median_phases(cont),
        "continued_from_memory": sum(s["memory"] for s in cont),
        "continued": len(cont),
        "steps": steps,
        "continued_median_fixed_seconds": round(statistics.median(s["fixed_seconds"] for s in cont), 3),
        "continued_median_fixed_fraction": round(statistics.median(s["fixed_fraction"] for s in cont), 4),
        "continued_median_epoch_seconds": round(statistics.median(s["train_eval_seconds"] for s in cont), 3),
        "first_step_fixed_seconds": [s["fixed_seconds"] for s in steps if s["epoch"] == 1],
    }


def _median_phases(steps: list[dict]) -> dict:
    """Median seconds of each step phase (RESULT "phases"; "overlapped": work beside the epoch,
    not on the critical path) and of the time outside the step."""
    out: dict = {}
    for group in (None, "overlapped"):
        rows = [(s["phases"] or {}) if group is None else (s["phases"] or {}).get(group) or {} for s in steps]
        keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))})
        medians = {k: round(statistics.median(float(r.get(k, 0.0)) for r in rows), 3) for k in keys}
        if group is None:
            out.update(medians)
        elif medians:
            out[group] = medians
    out["outside_step"] = round(statistics.median(s["outside_step_seconds"] for s in steps), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--configs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3, help="steps per config: 1 first + (epochs - 1) continued")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default="jobs,warm")
    ap.add_argument("--out", default=str(HERE / "results" / "k8s_step_overhead.json"))
    args = ap.parse_args(argv)

    from quicktune.testing import SeaweedS3

    workdir = Path(tempfile.mkdtemp(prefix="qt-bench-k8s-"))
    digits = workdir / "digits"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "quicktune.cli",
            "data",
            "import",
            "digits",
            str(digits),
            "--size",
            str(args.image_size),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    out: dict = {
        "model": args.model,
        "image_size": args.image_size,
        "images": sum(1 for p in digits.rglob("*.png")),
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_1min": os.getloadavg()[0]},
        "command": "nice -n 10 .venv/bin/python benchmarks/bench_k8s_step_overhead.py "
        + " ".join(argv or sys.argv[1:]),
    }
    with SeaweedS3(workdir / "s3", access_key="qt-" + secrets.token_hex(4), secret_key=secrets.token_hex(16)) as s3:
        os.environ.update(s3.env)
        bucket = "bench-" + uuid.uuid4().hex[:6]
        s3.create_bucket(bucket)
        data_uri = _upload(s3, digits, bucket, "digits")
        for mode in args.modes.split(","):
            out[mode] = _run_mode(mode, args, s3, data_uri, bucket, workdir)
    out["machine"]["load_1min_end"] = os.getloadavg()[0]
    for mode in args.modes.split(","):
        m = out[mode]
        print(
            f"{mode}: continued epoch fixed cost {m['continued_median_fixed_seconds']:.2f} s = "
            f"{100 * m['continued_median_fixed_fraction']:.1f} % of a {m['continued_median_epoch_seconds']:.1f} s epoch"
            f" ({m['continued_from_memory']}/{m['continued']} continued from memory); median phases "
            + json.dumps(m["continued_median_phases"])
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
