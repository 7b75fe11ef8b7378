"""The KFP pipeline and its search component pass the cache PVC and the precision on: the
pipeline's ``step_cache_pvc`` and ``precision`` reach the search task, the component turns them
into ``--backend-option cache_pvc=NAME`` (unless ``backend_options`` names one) and
``--precision P``, and the backend and the search CLI read them back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from component_argv import search_component_argv

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "pipelines"))
sys.path.insert(0, str(ROOT / "components"))


@pytest.fixture(scope="module")
def qp():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("QUICKTUNE_COMPONENT_IMAGE", raising=False)
        import quicktune_pipeline

        yield quicktune_pipeline


def test_both_variants_wire_the_cache_claim_and_the_precision_to_the_search_task(qp):
    for variant in ("cpu", "gpu"):
        spec = next(yaml.safe_load_all(qp.OUTPUTS[variant].read_text()))
        params = spec["root"]["inputDefinitions"]["parameters"]
        search_inputs = spec["root"]["dag"]["tasks"]["search"]["inputs"]["parameters"]
        for name in ("step_cache_pvc", "precision"):
            assert params[name]["defaultValue"] == "", (variant, name)  # off by default
            assert search_inputs[name] == {"componentInputParameter": name}, (variant, name)


def test_the_search_component_turns_them_into_cli_flags(qp, monkeypatch):
    from quicktune.backends.kubernetes import StepJobSettings
    from quicktune.cli import build_parser

    run = search_component_argv(qp, monkeypatch)

    def options(cmd: list[str]) -> dict[str, str]:
        return dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "--backend-option")

    plain = run()
    assert "cache_pvc" not in options(plain) and "--precision" not in plain
    cmd = run(step_cache_pvc="team-cache", precision="bf16")
    assert options(cmd)["cache_pvc"] == "team-cache"
    args = build_parser().parse_args(cmd[cmd.index("search") :])
    assert args.precision == "bf16"
    settings = StepJobSettings.from_options(
        dict(args.backend_option), {"QUICKTUNE_K8S_NAMESPACE": "q", "QUICKTUNE_STEP_IMAGE": "i"}
    )
    assert settings.cache_pvc == "team-cache"
    assert options(run(step_cache_pvc="team-cache", backend_options={"cache_pvc": "mine"}))["cache_pvc"] == "mine"
    assert "cache_pvc" not in options(run(step_cache_pvc="team-cache", backend="local"))
