"""The committed KFP YAML (pipelines/, components/) must match its Python source; the pipeline runs
for real with kfp.local.

* drift: recompile both pipeline variants and every component into a temp folder and compare
  byte for byte with the committed files (fix: ``python pipelines/quicktune_pipeline.py``). ~5 s.
* structure: secrets only through kfp-kubernetes, caching off and retries on the search, GPU
  placement in the GPU variant, components loadable with ``load_component_from_file``. ~2 s.
* end to end (slow, servers): the compiled pipeline's own Python functions run under
  ``kfp.local``'s SubprocessRunner with the local backend against the real MLflow and SeaweedFS
  fixtures; a registered model version with the ``champion`` alias must come out and load.
  ~300 s on 2 cores shared with other work (mostly Python/torch start-up of each task and step).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import yaml
from component_argv import search_component_argv

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "pipelines"))
sys.path.insert(0, str(ROOT / "components"))

TINY_SPACE = str(ROOT / "tests" / "tiny_space.yaml")


@pytest.fixture(scope="module")
def qp(monkeypatch_module):
    monkeypatch_module.delenv("QUICKTUNE_COMPONENT_IMAGE", raising=False)
    import quicktune_pipeline

    return quicktune_pipeline


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_committed_yaml_matches_source(qp, tmp_path):
    fresh = qp.compile_all(tmp_path)
    fresh_components = qp.qc.compile_components(tmp_path)
    stale = []
    for variant, path in fresh.items():
        if path.read_text() != qp.OUTPUTS[variant].read_text():
            stale.append(str(qp.OUTPUTS[variant].relative_to(ROOT)))
    for path in fresh_components:
        committed = ROOT / "components" / path.name
        if not committed.exists() or committed.read_text() != path.read_text():
            stale.append(str(committed.relative_to(ROOT)))
    assert not stale, f"compiled YAML drifted from its source: {stale}; run `python pipelines/quicktune_pipeline.py`"


def _platform(doc: dict) -> dict:
    return doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_pipeline_structure_secrets_caching_retries_gpu(qp):
    docs = list(yaml.safe_load_all(qp.OUTPUTS["cpu"].read_text()))
    spec, platform = docs[0], docs[1]
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"validate-dataset", "search", "evaluate-winner", "promote"}
    assert tasks["search"]["dependentTasks"] == ["validate-dataset"]
    assert tasks["promote"]["dependentTasks"] == ["evaluate-winner"] or set(tasks["promote"]["dependentTasks"]) == {
        "evaluate-winner",
        "search",
    }
    for name in ("search", "evaluate-winner", "promote"):
        assert not tasks[name].get("cachingOptions", {}).get("enableCache"), f"{name} must not be cached"
    assert tasks["search"]["retryPolicy"]["maxRetryCount"] == 2
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for ex in executors.values():
        secrets = {s["secretName"]: s for s in ex["secretAsEnv"]}
        assert {e["envVar"] for e in secrets["quicktune-s3"]["keyToEnv"]} == {
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        }
        assert secrets["quicktune-mlflow"]["optional"] is True
    search_ex = executors["exec-search"]
    assert {f["name"] for f in search_ex["fieldPathAsEnv"]} == {"POD_NAME", "POD_UID", "POD_NAMESPACE"}
    text = qp.OUTPUTS["cpu"].read_text()
    assert "nodeSelector" not in text and "SECRET_ACCESS_KEY:" not in text
    gpu_docs = list(yaml.safe_load_all(qp.OUTPUTS["gpu"].read_text()))
    gpu_exec = gpu_docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-evaluate-winner"]
    assert gpu_exec["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert gpu_exec["tolerations"][0]["key"] == "nvidia.com/gpu"
    resources = gpu_docs[0]["deploymentSpec"]["executors"]["exec-evaluate-winner"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"


def test_components_load_from_yaml():
    from kfp import components

    search = components.load_component_from_file(str(ROOT / "components" / "search.yaml"))
    outputs = set(search.component_spec.outputs)
    assert {"parent_run_id", "best_config", "model_uri", "registered_version"} <= outputs
    assert "tracking_uri" in search.component_spec.inputs
    for name in ("validate_dataset", "evaluate_winner", "promote"):
        comp = components.load_component_from_file(str(ROOT / "components" / f"{name}.yaml"))
        assert comp.component_spec.implementation.container.image.startswith("ghcr.io/example/quicktune")
    # credentials are never component parameters
    for path in (ROOT / "components").glob("*.yaml"):
        spec = yaml.safe_load(path.read_text())
        for comp in spec.get("components", {}).values():
            params = comp.get("inputDefinitions", {}).get("parameters", {})
            assert not [p for p in params if "secret" in p.lower() or "password" in p.lower()], path


@pytest.mark.slow
@pytest.mark.servers
def test_pipeline_runs_end_to_end_with_kfp_local(qp, mlflow_server, tiny_image_folder, tmp_path, monkeypatch):
    """The real pipeline under kfp.local: validate -> search (local backend) -> evaluate -> promote."""
    import mlflow
    from kfp import local
    from mlflow import MlflowClient

    for k, v in mlflow_server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"))
    model_name = f"kfp-digits-{uuid.uuid4().hex[:6]}"
    experiment = f"kfp-{uuid.uuid4().hex[:6]}"
    # kfp.local raises if any task fails (raise_on_error defaults to True)
    qp.quicktune_pipeline(
        data_uri=str(tiny_image_folder),
        tracking_uri=mlflow_server.tracking_uri,
        model_name=model_name,
        budget="8m",
        space=TINY_SPACE,
        workers=1,
        backend="local",
        max_epochs=2,
        budget_epochs=3,
        experiment=experiment,
        image_size=16,
        min_test_accuracy=0.0,
        device="cpu",
        search_id=f"kfp-{uuid.uuid4().hex[:6]}",
    )
    mlflow.set_tracking_uri(mlflow_server.tracking_uri)
    client = MlflowClient()
    version = client.get_model_version_by_alias(model_name, "champion")
    assert int(version.version) >= 1
    model = mlflow.pytorch.load_model(f"models:/{model_name}@champion")
    import numpy as np
    import torch

    images = np.random.default_rng(0).integers(0, 255, size=(2, 16, 16, 3), dtype=np.uint8)
    with torch.no_grad():
        logits = model(torch.from_numpy(images))
    assert tuple(logits.shape) == (2, 10)
    parent = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id],
        filter_string="tags.`quicktune.search_id` LIKE 'kfp-%'",
    )
    assert parent, "the search's parent run must be in MLflow"
    # the test-split evaluation reported its metrics to KFP (a Metrics artifact in the executor output)
    outputs = list((tmp_path / "kfp-root").rglob("evaluate-winner/executor_output.json"))
    assert outputs and "test_top1" in outputs[-1].read_text(), "evaluate_winner must log its test metrics"


def test_each_variant_searches_a_space_its_steps_can_run_and_wires_the_s3_secret_to_them(qp):
    """The CPU pipeline's steps run on CPU (no step options) and search builtin:cpu; the GPU
    variant's steps get a GPU on GPU nodes by default and search builtin:paper. Both name the Secret
    the steps take their S3 credentials from (a name, never a value), passed to the search task."""
    from quicktune.space import load_space

    for variant, space, gpu in (("cpu", "builtin:cpu", 0), ("gpu", "builtin:paper", 1)):
        spec = next(yaml.safe_load_all(qp.OUTPUTS[variant].read_text()))
        params = spec["root"]["inputDefinitions"]["parameters"]
        assert params["space"]["defaultValue"] == space and load_space(space).to_dict()
        assert not params["backend_options"].get("defaultValue")
        assert params["step_gpu"]["defaultValue"] == gpu, variant
        assert params["step_credentials_from"]["defaultValue"] == "quicktune-s3"
        search_inputs = spec["root"]["dag"]["tasks"]["search"]["inputs"]["parameters"]
        assert search_inputs["step_credentials_from"] == {"componentInputParameter": "step_credentials_from"}


def test_the_search_component_hands_the_s3_secret_name_to_the_steps(qp, monkeypatch):
    """The component's own code: ``step_credentials_from`` becomes ``--backend-option secrets=NAME``
    unless ``backend_options`` names secrets itself; nothing for a local backend or an empty name."""

    from quicktune.backends.kubernetes import StepJobSettings

    run = search_component_argv(qp, monkeypatch)

    def options(**kw) -> list[str]:
        cmd = run(**kw)
        return [cmd[i + 1] for i, a in enumerate(cmd) if a == "--backend-option"]

    assert options() == ["secrets=quicktune-s3"]
    assert options(step_credentials_from="team-s3") == ["secrets=team-s3"]
    assert options(backend_options={"secrets": "mine", "gpu": "1"}) == ["gpu=1", "secrets=mine"]
    assert options(step_credentials_from="") == []
    assert options(backend="local", step_gpu=1) == []
    gpu = options(step_gpu=1, backend_options={"memory": "40Gi"})
    settings = StepJobSettings.from_options(
        dict(o.split("=", 1) for o in gpu), {"QUICKTUNE_K8S_NAMESPACE": "q", "QUICKTUNE_STEP_IMAGE": "i"}
    )
    assert (settings.gpu, settings.memory, settings.secret_names) == (1, "40Gi", ("quicktune-s3",))
    assert settings.node_selector == {"nvidia.com/gpu.present": "true"}
    assert settings.tolerations[0]["key"] == "nvidia.com/gpu"
