"""benchmarks/gpu_check.py, the prepared GPU check, run the way a GPU machine runs it (a separate
process from the repository root) in its CPU quick mode: real steps, real resume, real plain loop.
Cost: ~35 s on a contended 2-core box."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_quick_cpu_mode_writes_its_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    p = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r) >= {"settings", "machine", "resume", "throughput", "process_overhead", "summary", "errors"}
    assert r["errors"] == [], r["errors"]
    assert r["machine"]["torch"] and r["machine"]["cpu_limit"] >= 1
    s = r["summary"]
    assert set(s) >= {
        "steps_ok",
        "resume_exact",
        "throughput_ratio_min",
        "throughput_meets_target",
        "in_process_overhead_fraction_median",
        "process_overhead_fraction",
        "seconds",
    }
    # every (model, precision) trained and resumed bit-exactly on the CPU
    assert s["steps_ok"] and s["resume_exact"], s["not_exact"]
    assert {(x["model"], x["precision"]) for x in r["resume"]} == {tuple(x) for x in r["settings"]["runs"]}
    for x in r["resume"]:
        assert x["straight"]["precision"] == x["precision"] and x["tensors_compared"] > 10
        assert [e["epoch"] for e in x["straight"]["epochs"]] == [1, 2]
        assert x["straight"]["overhead_seconds"] > 0
    (t,) = r["throughput"]
    assert t["ok"] and t["plain"]["train_images"] > 0 and t["step_images_per_second"] > 0
    assert math.isclose(t["ratio"], t["step_images_per_second"] / t["plain"]["images_per_second"], rel_tol=1e-3)
    po = r["process_overhead"]
    assert po["ok"] and po["process_wall_seconds"] > po["epoch_seconds"] > 0
