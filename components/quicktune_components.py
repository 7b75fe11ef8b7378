"""Kubeflow Pipelines (v2) components for quicktune: thin shells over the ``quicktune`` CLI.

Why lightweight Python components: they run in the quicktune image (which has ``kfp`` and the
``quicktune`` command) on a cluster, and unchanged under ``kfp.local``'s SubprocessRunner (which
runs only lightweight Python components), so the same definitions are tested here for real.
Each one calls the CLI through ``python -m quicktune.cli`` and turns its JSON into KFP outputs.

Components (compiled YAML next to this file; load with
``kfp.components.load_component_from_file("components/search.yaml")``):

* ``validate_dataset``: ``quicktune data info URI --json``; fails on too few classes / images.
* ``search``: ``quicktune search ... --json``; outputs the search id, MLflow parent run id, best
  config (JSON), best validation score and checkpoint dir, and -- when ``model_name`` is given --
  the registered model URI and version.
* ``evaluate_winner``: ``quicktune step --evaluate-test`` on the winner's best checkpoint; outputs
  test metrics (and a KFP Metrics artifact); fails below ``min_test_accuracy`` (a quality gate).
* ``promote``: ``quicktune promote SEARCH_ID --json``; outputs model URI, version, test accuracy.

Credentials never appear as parameters: the pipeline injects them from Kubernetes Secrets with
``kfp.kubernetes.use_secret_as_env``. Non-secret endpoints are parameters.

Rebuild the YAML for your image: ``python components/quicktune_components.py --image REG/quicktune:TAG``.
"""

# no "from __future__ import annotations": KFP reads the real annotation objects

import argparse
import os
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl
from kfp.dsl import Metrics, Output

DEFAULT_IMAGE = "ghcr.io/example/quicktune:0.1.0"
IMAGE = os.environ.get("QUICKTUNE_COMPONENT_IMAGE", DEFAULT_IMAGE)
HERE = Path(__file__).resolve().parent


@dsl.component(base_image=IMAGE, packages_to_install=[])
def validate_dataset(
    data_uri: str, min_classes: int = 2, min_images_per_class: int = 5, s3_endpoint_url: str = ""
) -> NamedTuple("Outputs", [("num_classes", int), ("num_images", int), ("info_json", str)]):
    """Check that a dataset opens and is big enough to search on (fails the run otherwise)."""
    import json
    import os
    import subprocess
    import sys
    from collections import namedtuple

    env = dict(os.environ)
    if s3_endpoint_url:
        env.update(AWS_ENDPOINT_URL=s3_endpoint_url, MLFLOW_S3_ENDPOINT_URL=s3_endpoint_url)
    proc = subprocess.run(
        [sys.executable, "-m", "quicktune.cli", "data", "info", data_uri, "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"dataset {data_uri} cannot be read: {proc.stderr.strip()[-2000:]}")
    info = json.loads(proc.stdout)
    counts = info.get("class_counts") or {}
    small = {c: n for c, n in counts.items() if n < min_images_per_class}
    if len(counts) < min_classes:
        raise ValueError(f"dataset {data_uri}: {len(counts)} classes, need at least {min_classes}")
    if small:
        raise ValueError(f"dataset {data_uri}: classes with fewer than {min_images_per_class} images: {small}")
    out = namedtuple("Outputs", ["num_classes", "num_images", "info_json"])
    return out(len(counts), int(info.get("num_images", sum(counts.values()))), json.dumps(info, sort_keys=True))


@dsl.component(base_image=IMAGE, packages_to_install=[])
def search(
    data_uri: str,
    budget: str,
    tracking_uri: str,
    search_id: str = "",
    run_id: str = "",
    space: str = "builtin:cpu",
    workers: int = 2,
    backend: str = "kubernetes",
    backend_options: dict = {},  # noqa: B006 - a KFP parameter default must be a literal; never mutated
    max_epochs: int = 10,
    budget_epochs: int = 0,  # noqa: B006 - KFP default
    checkpoint_uri: str = "",
    experiment: str = "quicktune",
    model_name: str = "",
    alias: str = "champion",
    optimizer: str = "quicktune",
    device: str = "cpu",
    image_size: int = 0,
    seed: int = 0,
    s3_endpoint_url: str = "",
    workdir: str = "/tmp/quicktune",
    meta_artifact: str = "",
    step_credentials_from: str = "quicktune-s3",
    step_gpu: int = 0,
    step_cache_pvc: str = "",
    precision: str = "",
) -> NamedTuple(
    "Outputs",
    [
        ("search_id", str),
        ("parent_run_id", str),
        ("best_config", str),
        ("best_score", float),
        ("best_checkpoint_dir", str),
        ("model_uri", str),
        ("registered_version", str),
    ],
):
    """Run (or, on a retry, resume) a search; ``search_id`` defaults to one derived from the KFP run
    id, so a retried task continues the same search instead of starting over.
    ``step_credentials_from``: the name of the Kubernetes Secret whose keys become every step pod's
    env (``envFrom``; the S3 credentials), unless ``backend_options`` names ``secrets`` itself; the
    values never pass through the pipeline's parameters. Empty: none.
    ``step_gpu`` > 0: each step Job gets that many ``nvidia.com/gpu`` on a GPU node (the
    ``nvidia.com/gpu.present`` node selector, the ``nvidia.com/gpu`` toleration, 4 CPUs, 24Gi, as
    ``k8s/overlays/gpu``); ``backend_options`` override each of these.
    ``step_cache_pvc``: a PersistentVolumeClaim every step pod mounts for the dataset mirror and the
    weights (``--backend-option cache_pvc=NAME``; docs/cluster.md "Caches that survive a pod"), unless
    ``backend_options`` names ``cache_pvc`` itself. Empty: each step pod has its own emptyDir cache.
    ``precision``: the steps' training precision (fp32, fp16, bf16, auto; empty: the step's default);
    like ``device``, a retried task must keep it."""
    import json
    import os
    import subprocess
    import sys
    from collections import namedtuple

    from quicktune.tracking.names import search_id_for_run

    sid = search_id or (search_id_for_run(run_id) if run_id else "")
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    if s3_endpoint_url:
        env.update(AWS_ENDPOINT_URL=s3_endpoint_url, MLFLOW_S3_ENDPOINT_URL=s3_endpoint_url)
    cmd = [
        sys.executable,
        "-m",
        "quicktune.cli",
        "search",
        "--data",
        data_uri,
        "--budget",
        budget,
        "--tracking-uri",
        tracking_uri,
        "--space",
        space,
        "--workers",
        str(workers),
        "--backend",
        backend,
        "--max-epochs",
        str(max_epochs),
        "--experiment",
        experiment,
        "--optimizer",
        optimizer,
        "--device",
        device,
        "--seed",
        str(seed),
        "--workdir",
        workdir,
        "--no-progress",
        "--json",
    ]
    for flag, value in (
        ("--search-id", sid),
        ("--checkpoint-uri", checkpoint_uri),
        ("--model-name", model_name),
        ("--meta-artifact", meta_artifact),
    ):
        if value:
            cmd += [flag, value]
    if model_name:
        cmd += ["--alias", alias]
    if image_size:
        cmd += ["--image-size", str(image_size)]
    if precision:
        cmd += ["--precision", precision]
    if budget_epochs:
        cmd += ["--budget-epochs", str(budget_epochs)]
    options = dict(backend_options or {})
    if backend == "kubernetes" and step_credentials_from:
        options.setdefault("secrets", step_credentials_from)
    if backend == "kubernetes" and step_cache_pvc:
        options.setdefault("cache_pvc", step_cache_pvc)
    if backend == "kubernetes" and step_gpu > 0:
        gpu_steps = {
            "gpu": str(step_gpu),
            "cpu": "4",
            "memory": "24Gi",
            "node_selector": json.dumps({"nvidia.com/gpu.present": "true"}),
            "tolerations": json.dumps([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
        }
        options = {**gpu_steps, **options}
    for key, value in sorted(options.items()):
        cmd += ["--backend-option", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    text = proc.stdout
    start = text.rfind("\n{")
    start = 0 if start < 0 and text.startswith("{") else start
    try:
        result = json.loads(text[start:])
    except ValueError:
        raise RuntimeError(
            f"quicktune search exited {proc.returncode} without a JSON result:\n{text[-3000:]}"
        ) from None
    print(json.dumps(result, indent=1, default=str))
    if proc.returncode != 0 or result.get("status") != "succeeded":
        raise RuntimeError(
            f"search {result.get('search_id')} {result.get('status')}: {result.get('message')} "
            f"{result.get('promotion_error', '')}".strip()
        )
    ckpt = ""
    from quicktune.search import best_record
    from quicktune.tracking import SearchTracker

    tracker = SearchTracker(tracking_uri, experiment=experiment)
    parent = tracker.find_search(result["search_id"])
    if parent is not None:
        ckpt = best_record(tracker.load_configs(parent.info.run_id)).checkpoint_dir
    out = namedtuple(
        "Outputs",
        [
            "search_id",
            "parent_run_id",
            "best_config",
            "best_score",
            "best_checkpoint_dir",
            "model_uri",
            "registered_version",
        ],
    )
    return out(
        result["search_id"],
        result.get("parent_run_id") or "",
        json.dumps(result.get("best_config") or {}, sort_keys=True),
        float(result.get("best_score") or 0.0),
        ckpt,
        result.get("model_uri") or "",
        str(result.get("model_version") or ""),
    )


@dsl.component(base_image=IMAGE, packages_to_install=[])
def evaluate_winner(
    data_uri: str,
    checkpoint_dir: str,
    metrics: Output[Metrics],
    split: str = "test",
    min_test_accuracy: float = 0.0,
    device: str = "cpu",
    s3_endpoint_url: str = "",
) -> NamedTuple("Outputs", [("test_accuracy", float), ("metrics_json", str)]):
    """Score the winner's best checkpoint on the held-out split; fail below ``min_test_accuracy``."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from collections import namedtuple

    env = dict(os.environ)
    if s3_endpoint_url:
        env.update(AWS_ENDPOINT_URL=s3_endpoint_url, MLFLOW_S3_ENDPOINT_URL=s3_endpoint_url)
    with tempfile.TemporaryDirectory() as tmp:
        config, out_path = os.path.join(tmp, "config.json"), os.path.join(tmp, "eval.json")
        with open(config, "w") as fh:
            fh.write("{}")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "quicktune.cli",
                "step",
                "--evaluate-test",
                "--config",
                config,
                "--data",
                data_uri,
                "--checkpoint-dir",
                checkpoint_dir,
                "--split",
                split,
                "--device",
                device,
                "--out",
                out_path,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0 or not os.path.exists(out_path):
            raise RuntimeError(f"evaluation failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-3000:]}")
        with open(out_path) as fh:
            result = json.load(fh)
    if result.get("status") != "ok":
        raise RuntimeError(f"evaluation of {checkpoint_dir} failed: {result.get('message')}")
    accuracy = float(result.get("top1", result.get("accuracy", float("nan"))))  # top-1 accuracy in [0, 1]
    for key, value in sorted(result.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(f"{split}_{key}", float(value))
    if not accuracy >= min_test_accuracy:
        raise ValueError(f"{split} accuracy {accuracy:.4f} is below the gate {min_test_accuracy:.4f}: not promoting")
    out = namedtuple("Outputs", ["test_accuracy", "metrics_json"])
    return out(accuracy, json.dumps(result, sort_keys=True, default=str))


@dsl.component(base_image=IMAGE, packages_to_install=[])
def promote(
    search_id: str,
    tracking_uri: str,
    model_name: str,
    alias: str = "champion",
    experiment: str = "quicktune",
    s3_endpoint_url: str = "",
) -> NamedTuple("Outputs", [("model_uri", str), ("registered_version", str), ("test_accuracy", float)]):
    """Register the search's best configuration as an MLflow model and give it the alias."""
    import json
    import os
    import subprocess
    import sys
    from collections import namedtuple

    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    if s3_endpoint_url:
        env.update(AWS_ENDPOINT_URL=s3_endpoint_url, MLFLOW_S3_ENDPOINT_URL=s3_endpoint_url)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "quicktune.cli",
            "promote",
            search_id,
            "--tracking-uri",
            tracking_uri,
            "--experiment",
            experiment,
            "--model-name",
            model_name,
            "--alias",
            alias,
            "--json",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    text = proc.stdout
    start = text.rfind("\n{")
    result = json.loads(text[max(start, 0) :]) if "{" in text else {}
    if proc.returncode != 0 or not result.get("model_version"):
        raise RuntimeError(f"promotion of {search_id} failed ({proc.returncode}): {text[-3000:]}")
    print(json.dumps(result, indent=1, default=str))
    out = namedtuple("Outputs", ["model_uri", "registered_version", "test_accuracy"])
    return out(result["model_uri"], str(result["model_version"]), float(result.get("test_accuracy") or 0.0))


COMPONENTS = {
    "validate_dataset": validate_dataset,
    "search": search,
    "evaluate_winner": evaluate_winner,
    "promote": promote,
}


def compile_components(out_dir: str | os.PathLike[str] = HERE) -> list[Path]:
    """Write ``<name>.yaml`` for every component (what users load with load_component_from_file)."""
    paths = []
    for name, component in COMPONENTS.items():
        path = Path(out_dir) / f"{name}.yaml"
        compiler.Compiler().compile(component, str(path))
        paths.append(path)
    return paths


if __name__ == "__main__":  # pragma: no cover - thin CLI
    parser = argparse.ArgumentParser(description="compile the quicktune KFP components to YAML")
    parser.add_argument(
        "--image", default=None, help=f"component image (default {DEFAULT_IMAGE}; or set QUICKTUNE_COMPONENT_IMAGE)"
    )
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()
    if args.image and args.image != IMAGE:
        os.environ["QUICKTUNE_COMPONENT_IMAGE"] = args.image
        os.execv(os.sys.executable, [os.sys.executable, __file__, "--out", args.out])
    for p in compile_components(args.out):
        print(p)
