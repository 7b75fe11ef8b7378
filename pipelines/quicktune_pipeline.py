"""The quicktune Kubeflow pipeline: validate the dataset -> search -> evaluate the winner -> promote.

* ``validate_dataset`` fails fast on a dataset that cannot be read or is too small.
* ``search`` runs the controller in the pipeline pod; with ``backend="kubernetes"`` (default) each
  finetuning step runs as its own Job (GPU settings through ``backend_options``, e.g.
  ``{"gpu": "1", "node_selector": "{\\"nvidia.com/gpu.present\\": \\"true\\"}"}``); caching is
  off (a search depends on time and external state) and retries resume the same search (its id
  derives from the KFP run id).
* ``evaluate_winner`` scores the best checkpoint on the held-out test split and is the quality
  gate (``min_test_accuracy``).
* ``promote`` registers the winner in MLflow under ``model_name`` with the alias (``champion``).

Credentials come from Kubernetes Secrets through kfp-kubernetes (``use_secret_as_env``):
``quicktune-s3`` (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and optionally ``quicktune-mlflow``
(MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD). The controller gets its pod name, uid and
namespace from the downward API; its backend owns the step Jobs by the pod's controller, the run's
Argo Workflow, so a retried search task re-adopts them and deleting the run deletes them
(docs/cluster.md).

The step pods get the S3 credentials from the Secret named by ``step_credentials_from``
(default ``quicktune-s3``, passed as ``--backend-option secrets=...``: ``envFrom``, never values).
``step_cache_pvc`` (default empty: none) names a PersistentVolumeClaim the step pods share for the
dataset mirror and the weights (``--backend-option cache_pvc=...``, docs/cluster.md); ``precision``
(default empty: the step's ``auto``) is the steps' training precision.

Two compiled variants are committed: ``quicktune_pipeline.yaml`` (every task and, by default, every
step on CPU nodes, searching ``builtin:cpu``) and ``quicktune_pipeline_gpu.yaml`` (steps on GPU nodes
by default -- ``step_gpu=1``: one ``nvidia.com/gpu``, the GPU node selector and toleration, 4 CPUs,
24Gi, as ``k8s/overlays/gpu`` -- searching ``builtin:paper``; the evaluation is also placed on a GPU
node). ``space``, ``step_gpu`` and ``backend_options`` override both.
Recompile with ``python pipelines/quicktune_pipeline.py``; CI fails when the YAML drifts.
"""

# no "from __future__ import annotations": KFP reads the real annotation objects

import sys
from pathlib import Path

from kfp import compiler, dsl, kubernetes

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "components"))

import quicktune_components as qc  # noqa: E402 - components/ is not a package

S3_SECRET = "quicktune-s3"
MLFLOW_SECRET = "quicktune-mlflow"
GPU_LABEL = ("nvidia.com/gpu.present", "true")
OUTPUTS = {"cpu": HERE / "quicktune_pipeline.yaml", "gpu": HERE / "quicktune_pipeline_gpu.yaml"}


def _secrets(task: dsl.PipelineTask) -> None:
    kubernetes.use_secret_as_env(
        task,
        secret_name=S3_SECRET,
        secret_key_to_env={"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
    )
    kubernetes.use_secret_as_env(
        task,
        secret_name=MLFLOW_SECRET,
        optional=True,
        secret_key_to_env={
            "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
        },
    )
    kubernetes.add_pod_label(task, "app.kubernetes.io/name", "quicktune")


def _on_gpu(task: dsl.PipelineTask) -> None:
    kubernetes.add_node_selector(task, *GPU_LABEL)
    kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)


def build_pipeline(gpu: bool = False):
    """The pipeline function; ``gpu=True`` places the evaluation on a GPU node."""

    @dsl.pipeline(
        name="quicktune-gpu" if gpu else "quicktune",
        description="Quick-Tune: find which pretrained timm model to finetune and how, "
        "then register the winner in MLflow",
    )
    def quicktune_pipeline(
        data_uri: str,
        tracking_uri: str,
        model_name: str,
        budget: str = "2h",
        # a space that fits the steps' default resources: CPU steps -> builtin:cpu, GPU steps -> builtin:paper
        space: str = "builtin:paper" if gpu else "builtin:cpu",
        workers: int = 4,
        backend: str = "kubernetes",
        backend_options: dict = {},  # noqa: B006 - a KFP parameter default must be a literal; never mutated
        step_gpu: int = 1 if gpu else 0,
        step_credentials_from: str = S3_SECRET,
        max_epochs: int = 10,  # noqa: B006 - KFP default
        budget_epochs: int = 0,
        checkpoint_uri: str = "",
        experiment: str = "quicktune",
        alias: str = "champion",
        min_test_accuracy: float = 0.0,
        device: str = "cuda" if gpu else "cpu",
        step_device: str = "cpu",
        image_size: int = 0,
        seed: int = 0,
        s3_endpoint_url: str = "",
        search_id: str = "",
        meta_artifact: str = "",
        step_cache_pvc: str = "",
        precision: str = "",
    ):
        validate = qc.validate_dataset(data_uri=data_uri, s3_endpoint_url=s3_endpoint_url)
        validate.set_display_name("validate dataset")
        search = qc.search(
            data_uri=data_uri,
            budget=budget,
            tracking_uri=tracking_uri,
            search_id=search_id,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            space=space,
            workers=workers,
            backend=backend,
            backend_options=backend_options,
            max_epochs=max_epochs,
            budget_epochs=budget_epochs,
            checkpoint_uri=checkpoint_uri,
            experiment=experiment,
            device=step_device,
            image_size=image_size,
            seed=seed,
            s3_endpoint_url=s3_endpoint_url,
            meta_artifact=meta_artifact,
            step_credentials_from=step_credentials_from,
            step_gpu=step_gpu,
            step_cache_pvc=step_cache_pvc,
            precision=precision,
        ).after(validate)
        search.set_display_name("search").set_caching_options(False)
        search.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)
        search.set_cpu_request("1").set_memory_request("3G").set_memory_limit("3G")
        for env_name, field in (
            ("POD_NAME", "metadata.name"),
            ("POD_UID", "metadata.uid"),
            ("POD_NAMESPACE", "metadata.namespace"),
        ):
            kubernetes.use_field_path_as_env(search, env_name=env_name, field_path=field)
        evaluate = qc.evaluate_winner(
            data_uri=data_uri,
            checkpoint_dir=search.outputs["best_checkpoint_dir"],
            min_test_accuracy=min_test_accuracy,
            device=device,
            s3_endpoint_url=s3_endpoint_url,
        )
        evaluate.set_display_name("evaluate winner on the test split").set_caching_options(False)
        evaluate.set_retry(num_retries=2, backoff_duration="30s")
        promote = qc.promote(
            search_id=search.outputs["search_id"],
            tracking_uri=tracking_uri,
            model_name=model_name,
            alias=alias,
            experiment=experiment,
            s3_endpoint_url=s3_endpoint_url,
        ).after(evaluate)
        promote.set_display_name("promote to the MLflow registry").set_caching_options(False)
        promote.set_retry(num_retries=2, backoff_duration="30s")
        for task in (validate, search, evaluate, promote):
            _secrets(task)
        if gpu:
            _on_gpu(evaluate)

    return quicktune_pipeline


quicktune_pipeline = build_pipeline(gpu=False)
quicktune_pipeline_gpu = build_pipeline(gpu=True)


def compile_all(out_dir: Path | None = None) -> dict[str, Path]:
    """Compile both variants (and the components) to YAML; returns {variant: path}."""
    out = {}
    for variant, path in OUTPUTS.items():
        target = (out_dir / path.name) if out_dir else path
        compiler.Compiler().compile(quicktune_pipeline_gpu if variant == "gpu" else quicktune_pipeline, str(target))
        out[variant] = target
    return out


if __name__ == "__main__":  # pragma: no cover - thin CLI
    for p in compile_all():
        print(p)
    for p in qc.compile_components():
        print(p)
