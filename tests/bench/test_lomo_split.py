"""benchmarks/bench_lomo.py: the leave-one-model-out split by "the held-out model owns the task's best
config" compares each search with the non-meta search of the same (task, seed)."""

from __future__ import annotations

import pandas as pd
import pytest
from benchscripts import load_benchmark


def _frame(rows):
    return pd.DataFrame(rows, columns=["optimizer", "held_out", "dataset", "seed", "fraction", "regret"])


def test_split_pairs_each_search_with_the_reference_of_its_task_and_seed():
    mod = load_benchmark("bench_lomo")
    rows = []
    for f in mod.CHECKPOINTS:
        # the reference (no meta-training) ran once per held-out unit; its overhead differs a little
        rows += [("quicktune-nometa", "m1", "t", 0, f, 0.50), ("quicktune-nometa", "m2", "t", 0, f, 0.52)]
        rows += [("quicktune", "m1", "t", 0, f, 0.20), ("quicktune", "m2", "t", 0, f, 0.90)]
    out = mod.split_by_owns_best(
        _frame(rows), {"m1 / t": False, "m2 / t": True}, mod.LOMO_OPTIMIZERS[:1] + [mod.REFERENCE]
    )
    owns, other = out["owns_best"]["quicktune"], out["otherwise"]["quicktune"]
    assert owns["regret"][0]["mean"] == pytest.approx(0.90) and owns["regret"][0]["n"] == 1
    assert owns["minus_reference"][0]["mean"] == pytest.approx(0.90 - 0.51)  # a loss where m2 owns the best
    assert other["minus_reference"][-1]["mean"] == pytest.approx(0.20 - 0.51)
    assert "quicktune-nometa" not in out["owns_best"]
