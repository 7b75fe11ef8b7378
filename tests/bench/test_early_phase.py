"""benchmarks/early_phase.py: the early-phase figures are computed from the run's own trajectory."""

from __future__ import annotations

import itertools
import math

import pytest
from benchscripts import load_benchmark


def _run(opt, seed, costs, configs, scores, domain=None):
    times = list(itertools.accumulate(costs))
    return {
        "dataset": "d",
        "optimizer": opt,
        "seed": seed,
        "budget": 100.0,
        "best": 1.0,
        "worst": 0.0,
        "domain_score": domain,
        "trajectory": {"time": times, "table_time": times, "cost": costs, "config_id": configs, "score": scores},
    }


def test_an_expensive_first_pick_shows_as_fewer_configs_and_a_high_first_cost():
    mod = load_benchmark("early_phase")
    runs = [
        # the meta-trained search spends 8 of its first 10 seconds on one epoch of config a
        _run("quicktune", 0, [8.0, 1.0, 1.0, 5.0], ["a", "b", "b", "c"], [0.5, 0.6, 0.7, 0.9], domain=1.0),
        _run("quicktune-nometa", 0, [1.0] * 10, list("abcdefghij"), [0.5] * 9 + [0.8]),
        _run("quicktune-nometa", 1, [1.0] * 10, list("abcdefghij"), [0.5] * 10),  # no partner: left out
    ]
    res = mod.compare(runs, "quicktune", "quicktune-nometa", 0.1)
    row = res["d"]
    assert row["seeds"] == 1
    q, n = row["quicktune"], row["quicktune-nometa"]
    assert q["steps"] == 3 and q["configs"] == 2  # t = 8, 9, 10 are within 10 % of 100 s
    assert n["steps"] == 10 and n["configs"] == 10
    assert q["first_cost"] == pytest.approx(0.08) and n["first_cost"] == pytest.approx(0.01)
    assert q["first4_cost"] == pytest.approx(0.0375)
    assert q["regret"] == pytest.approx(0.3) and n["regret"] == pytest.approx(0.2)
    assert q["domain"] == 1.0 and math.isnan(n["domain"])  # no domain score without meta-training
