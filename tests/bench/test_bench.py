"""The benchmark harness: regret math, simulated clocks, summary shape, exhaustion, the synthetic
generator, peers (when installed) and a small `quicktune bench` CLI run. About 10 s in total
(plus ~5 s when the Syne Tune peer venv exists)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from quicktune.bench.regret import incumbent_trajectory, normalized_regret, regret_at, regret_trajectory
from quicktune.bench.simulator import DatasetCurves, make_candidates, simulate
from quicktune.bench.summary import CHECKPOINTS, summarize, write_summary
from quicktune.bench.synthetic import make_synthetic_table
from quicktune.cli import main as cli_main
from quicktune.lct import validate_lct
from quicktune.optimizer.base import Optimizer, Suggestion
from quicktune.optimizer.baselines import RandomSearch


def _table(rows):
    """rows: (config_id, epoch, score, cost, x)"""
    df = pd.DataFrame(rows, columns=["config_id", "epoch", "score", "cost", "hp.x"])
    df.insert(0, "dataset", "d")
    df["meta.n"] = 10.0
    return df


TINY = _table(
    [
        ("a", 1, 0.2, 10.0, 1.0),
        ("a", 2, 0.4, 10.0, 1.0),
        ("a", 3, 0.5, 10.0, 1.0),
        ("b", 1, 0.1, 5.0, 2.0),
        ("b", 2, float("nan"), 5.0, 2.0),
        ("b", 3, float("nan"), 5.0, 2.0),
        ("c", 1, 0.6, 20.0, 3.0),
        ("c", 2, 0.8, 20.0, 3.0),
        ("c", 3, 0.9, 20.0, 3.0),
    ]
)


# --- regret -----------------------------------------------------------------------------------
def test_regret_hand_computed_example():
    best, worst = 0.9, 0.1
    assert normalized_regret(0.9, best, worst) == 0.0
    assert normalized_regret(0.5, best, worst) == pytest.approx(0.5)
    assert normalized_regret(None, best, worst) == 1.0
    assert normalized_regret(float("nan"), best, worst) == 1.0
    assert normalized_regret(0.0, best, worst) == 1.0  # clipped
    # observations (time, score): (3, 0.7) arrives out of order, NaN never helps
    t, inc = incumbent_trajectory([1.0, 2.0, 4.0, 3.0], [0.5, float("nan"), 0.6, 0.7])
    assert t.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert inc.tolist() == [0.5, 0.5, 0.7, 0.7]
    t, r = regret_trajectory([1.0, 2.0, 4.0, 3.0], [0.5, float("nan"), 0.6, 0.7], best, worst)
    assert r == pytest.approx([0.5, 0.5, 0.25, 0.25])
    # step function: 1 before the first observation, right-continuous at observation times
    assert regret_at(t, r, [0.5, 1.0, 2.5, 3.0, 99.0]) == pytest.approx([1.0, 0.5, 0.5, 0.25, 0.25])


# --- simulator --------------------------------------------------------------------------------
class _Slow(Optimizer):
    """Random search that sleeps in ask, to make the overhead clock measurable."""

    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay

    def ask(self):
        time.sleep(self.delay)
        return self.inner.ask()

    def tell(self, *a, **k):
        return self.inner.tell(*a, **k)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, s):
        self.inner.load_state_dict(s)


def test_simulator_table_clock_and_overhead_clock():
    curves = DatasetCurves.from_table(TINY, "d")
    assert (curves.best, curves.worst, curves.max_epochs) == (0.9, 0.1, 3)
    assert curves.median_curve_cost() == 30.0  # curves cost 30, 15, 60
    opt = _Slow(RandomSearch(make_candidates(curves), 3, seed=0, shuffle=False), delay=0.02)
    res = simulate(curves, opt, budget=1000.0)
    assert res.stop_reason == "exhausted"
    # a: 3 epochs; b: diverges at epoch 2 (paid) and is dead; c: 3 epochs
    assert list(zip(res.config_id, res.epoch, res.status, strict=False)) == [
        ("a", 1, "ok"),
        ("a", 2, "ok"),
        ("a", 3, "ok"),
        ("b", 1, "ok"),
        ("b", 2, "diverged"),
        ("c", 1, "ok"),
        ("c", 2, "ok"),
        ("c", 3, "ok"),
    ]
    assert res.table_time == pytest.approx(np.cumsum([10, 10, 10, 5, 5, 20, 20, 20]).tolist())
    assert math.isnan(res.score[4])
    # every step's ask slept 0.02 s: the overhead clock runs ahead of the table clock by at least that
    gaps = np.asarray(res.time) - np.asarray(res.table_time)
    assert np.all(gaps >= 0.02 * np.arange(1, 9) - 1e-9)
    assert res.overhead_total >= 0.02 * 9  # 8 steps + the final ask that returned None
    assert gaps[-1] <= res.overhead_total + 1e-9


def test_simulator_budget_workers_and_invalid_epochs():
    curves = DatasetCurves.from_table(TINY, "d")
    res = simulate(curves, RandomSearch(make_candidates(curves), 3, seed=0, shuffle=False), budget=25.0)
    assert res.stop_reason == "budget"
    assert res.table_time == [10.0, 20.0, 30.0]  # the step started at 20 < 25 finishes; none after
    # two workers: a and b run side by side on the table clock
    res2 = simulate(curves, RandomSearch(make_candidates(curves), 3, seed=0, shuffle=False), budget=1000.0, workers=2)
    assert sorted(zip(res2.config_id, res2.epoch, strict=False)) == sorted(
        [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("c", 1), ("c", 2), ("c", 3)]
    )
    assert max(res2.table_time) < sum([10, 10, 10, 5, 5, 20, 20, 20])  # parallel beats serial
    assert res2.table_time[:2] == [5.0, 10.0]  # b's epoch 1 (cost 5) completes first

    class AsksTheImpossible(_Slow):
        def __init__(self):
            self.asks = [Suggestion("a", {}, 7), Suggestion("zzz", {}, 1), Suggestion("c", {}, 1)]
            self.told = []

        def ask(self):
            return self.asks.pop(0) if self.asks else None

        def tell(self, *a, **k):
            self.told.append(a)

    opt = AsksTheImpossible()
    res3 = simulate(curves, opt, budget=100.0)
    assert res3.n_invalid == 2 and res3.status == ["invalid", "invalid", "ok"]
    assert res3.table_time == [0.0, 0.0, 20.0]
    assert [(t[0], t[1], t[4]) for t in opt.told] == [("a", 7, "invalid"), ("zzz", 1, "invalid"), ("c", 1, "ok")]


def test_exhausting_a_tiny_table_returns_none():
    curves = DatasetCurves.from_table(TINY, "d")
    for name in ("random", "sh", "asha", "hyperband"):
        from quicktune.optimizer.registry import make_optimizer

        opt = make_optimizer(name, make_candidates(curves), 3, seed=0)
        res = simulate(curves, opt, budget=1e9)
        assert res.stop_reason == "exhausted", name
        assert opt.ask() is None


# --- summary ----------------------------------------------------------------------------------
def _run(opt, ds, seed, times, scores, budget=100.0):
    return {
        "optimizer": opt,
        "dataset": ds,
        "seed": seed,
        "budget": budget,
        "best": 1.0,
        "worst": 0.0,
        "trajectory": {"time": times, "table_time": times, "score": scores},
    }


def test_summary_shape_means_and_ranks(tmp_path):
    runs = [
        _run("A", "d1", 0, [5.0, 30.0], [0.5, 0.9]),  # regret at 10,25,50,100: .5 .5 .1 .1
        _run("B", "d1", 0, [20.0, 60.0], [0.7, 1.0]),  # 1 .3 .3 0
        _run("A", "d2", 0, [1.0], [1.0]),  # 0 0 0 0
        _run("B", "d2", 0, [1.0], [0.0]),  # 1 1 1 1
    ]
    s = write_summary(runs, tmp_path, title="t")
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == s
    assert set(s) == {"checkpoints", "optimizers"}
    assert s["checkpoints"] == CHECKPOINTS == [0.1, 0.25, 0.5, 1.0]
    assert set(s["optimizers"]) == {"A", "B"}
    for v in s["optimizers"].values():
        assert set(v) == {"regret", "rank"} and len(v["regret"]) == 4 and len(v["rank"]) == 4
    assert s["optimizers"]["A"]["regret"] == pytest.approx([0.25, 0.25, 0.05, 0.05])
    assert s["optimizers"]["B"]["regret"] == pytest.approx([1.0, 0.65, 0.65, 0.5])
    # at 25%: B leads on d1 (0.3 vs 0.5), A on d2; at 100%: B on d1 (0 vs 0.1), A on d2
    assert s["optimizers"]["A"]["rank"] == pytest.approx([1.0, 1.5, 1.0, 1.5])
    assert s["optimizers"]["B"]["rank"] == pytest.approx([2.0, 1.5, 2.0, 1.5])
    for f in ("summary_table_clock.json", "results.md", "regret.png", "rank.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert summarize([], CHECKPOINTS) == {"checkpoints": CHECKPOINTS, "optimizers": {}}


# --- synthetic table --------------------------------------------------------------------------
def test_synthetic_table_is_a_valid_lct_with_the_promised_phenomena():
    df = make_synthetic_table(n_datasets=3, n_configs=40, max_epochs=10, seed=4)
    validate_lct(df, "synthetic")
    assert len(df) == 3 * 40 * 10
    assert df["score"].isna().any()  # divergence
    assert df["hp.momentum"].isna().any() and df["hp.momentum"].notna().any()  # conditional hp
    assert (df.groupby("dataset")[[c for c in df if c.startswith("meta.")]].nunique() == 1).all().all()
    costs = df.groupby(["dataset", "hp.model"])["cost"].median().unstack()
    assert (costs.max(axis=1) / costs.min(axis=1) > 3).all()  # models cost differently
    peak = df.dropna(subset=["score"]).groupby(["dataset", "config_id"])["score"].agg(["idxmax", "last"])
    assert (df.loc[peak["idxmax"], "score"].to_numpy() - peak["last"].to_numpy() > 0.05).any()  # overfitting
    again = make_synthetic_table(n_datasets=3, n_configs=40, max_epochs=10, seed=4)
    pd.testing.assert_frame_equal(df, again)


# --- peers ------------------------------------------------------------------------------------
def test_optuna_peer_maps_onto_the_table_and_replays_its_state():
    pytest.importorskip("optuna")
    from quicktune.bench import peers  # noqa: F401  (registers peers)
    from quicktune.optimizer.registry import make_optimizer

    df = make_synthetic_table(n_datasets=1, n_configs=25, max_epochs=6, seed=2)
    curves = DatasetCurves.from_table(df, "synth00")
    opt = make_optimizer("optuna-tpe", make_candidates(curves), 6, seed=0)
    res = simulate(curves, opt, budget=8 * curves.median_curve_cost())
    assert set(res.config_id) <= set(curves.scores) and res.n_invalid == 0
    state = json.loads(json.dumps(opt.state_dict()))
    other = make_optimizer("optuna-tpe", make_candidates(curves), 6, seed=0)
    other.load_state_dict(state)
    assert opt.ask() == other.ask()


@pytest.mark.slow
def test_synetune_peer_when_installed():
    from quicktune.bench.peers import unavailable_reason

    why = unavailable_reason("synetune-asha")
    if why:
        pytest.skip(why)
    from quicktune.optimizer.registry import make_optimizer

    df = make_synthetic_table(n_datasets=1, n_configs=20, max_epochs=6, seed=2)
    curves = DatasetCurves.from_table(df, "synth00")
    opt = make_optimizer("synetune-asha", make_candidates(curves), 6, seed=0)
    try:
        res = simulate(curves, opt, budget=6 * curves.median_curve_cost())
    finally:
        opt.close()
    assert len(res.time) > 10 and set(res.config_id) <= set(curves.scores) and res.n_invalid == 0
    assert max(res.epoch) > 1  # ASHA promoted something


# --- CLI --------------------------------------------------------------------------------------
def test_cli_bench_on_a_tiny_synthetic_table(tmp_path, capsys):
    table = tmp_path / "t.parquet"
    assert (
        cli_main(
            [
                "bench",
                "synth",
                "--out",
                str(table),
                "--datasets",
                "2",
                "--configs",
                "15",
                "--epochs",
                "5",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    out = tmp_path / "out"
    argv = [
        "bench",
        "--table",
        str(table),
        "--optimizer",
        "random",
        "--optimizer",
        "asha",
        "--seeds",
        "2",
        "--budget-multiple",
        "5",
        "--out",
        str(out),
        "--meta-train",
        "none",
    ]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "| random |" in printed and "| asha |" in printed
    s = json.loads((out / "summary.json").read_text())
    assert set(s["optimizers"]) == {"random", "asha"}
    assert len(list((out / "runs").glob("*.json"))) == 2 * 2 * 2
    assert (out / "regret.png").exists() and (out / "rank.png").exists()
    run = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert run["trajectory"]["time"] and run["budget"] > 0
    # a rerun reuses the finished runs and gives the same summary
    assert cli_main(argv) == 0
    assert json.loads((out / "summary.json").read_text()) == s
    # bad input: a clear message naming the problem, exit code 2
    assert cli_main(["bench", "--table", str(table), "--optimizer", "nope", "--out", str(out)]) == 2
    assert "unknown optimizer 'nope'" in capsys.readouterr().err
    assert (
        cli_main(["bench", "--table", str(tmp_path / "missing.parquet"), "--optimizer", "random", "--out", str(out)])
        == 2
    )
    assert "missing.parquet" in capsys.readouterr().err
