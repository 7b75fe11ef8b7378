"""The summary of the real held-out searches (benchmarks/heldout_searches.py): the paired
differences quoted in the reports are computed by the script, per (dataset, seed), and
``--summarize`` recomputes them from a results file without running a search."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from benchscripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "heldout_searches.py"


def _row(ds, seed, opt, val, test):
    return {
        "dataset": ds,
        "seed": seed,
        "optimizer": opt,
        "best_val": val,
        "test_accuracy": test,
        "seconds_to_best": 10.0,
        "configs_tried": 3,
        "epochs_done": 9,
        "best_model": "m",
    }


ROWS = [
    _row("a", 0, "qt", 0.7, 0.6),
    _row("a", 0, "asha", 0.5, 0.5),
    _row("a", 1, "qt", 0.4, None),  # no test accuracy: not in the test mean
    _row("a", 1, "asha", 0.4, 0.3),
    _row("b", 0, "qt", 0.2, 0.2),
    _row("b", 0, "asha", 0.3, 0.1),
    _row("b", 1, "qt", 0.9, 0.9),  # no asha partner: not a pair
]


def test_paired_differences_are_per_dataset_and_seed():
    (p,) = load_benchmark("heldout_searches").paired(ROWS, "qt")
    assert p["peer"] == "asha" and p["pairs"] == 3
    assert p["best_val"] == pytest.approx((0.2 + 0.0 - 0.1) / 3)
    assert (p["won"], p["tied"], p["lost"]) == (1, 1, 1)
    assert p["test_accuracy"] == pytest.approx((0.1 + 0.1) / 2)
    assert p["best_val_se"] == pytest.approx(0.15275252 / 3**0.5)


def test_summarize_recomputes_a_results_file(tmp_path):
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"rows": ROWS}))
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--summarize", str(f), "--optimizers", "qt,asha"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    doc = json.loads(f.read_text())
    assert doc["reference"] == "qt" and doc["paired"][0]["pairs"] == 3 and len(doc["summary"]) == 4
    assert "| asha | 3 | +0.033 +- 0.088 | 1 / 1 / 1 |" in out
