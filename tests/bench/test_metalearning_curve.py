"""The meta-learning curve benchmark (benchmarks/bench_metalearning_curve.py) on a tiny synthetic
table: task k and its source siblings never reach task k's meta-training, k = 1 is nometa, and the
JSON has one entry per k for every arm."""

from __future__ import annotations

import json

import pytest
from benchscripts import load_benchmark

from quicktune.bench.synthetic import make_synthetic_table


def _load():
    return load_benchmark("bench_metalearning_curve")


# two siblings of one source (digits), two tasks of their own
NAMES = {"synth00": "digits", "synth01": "digits-c01234", "synth02": "lfw", "synth03": "mnist5k"}


@pytest.fixture(scope="module")
def table():
    df = make_synthetic_table(n_datasets=4, n_configs=6, max_epochs=3, seed=1)
    return df.assign(dataset=df["dataset"].map(NAMES))


def test_training_set_never_holds_task_k_or_its_siblings():
    mod = _load()
    src = mod.default_source()
    order = ["digits", "lfw", "digits-c01234", "mnist5k"]
    assert mod.training_set(order, 1, "history", [], src) == []
    assert mod.training_set(order, 3, "history", [], src) == ["lfw"]  # digits is a sibling
    assert mod.training_set(order, 4, "history", [], src) == ["digits", "digits-c01234", "lfw"]
    bg = ["shipped:digits", "shipped:fashion-mnist"]
    assert mod.training_set(order, 3, "history+shipped", bg, src) == ["lfw", "shipped:fashion-mnist"]
    assert mod.training_set(order, 1, "shipped", bg, src) == ["shipped:fashion-mnist"]


def test_play_meta_trains_only_on_earlier_foreign_tasks(table, monkeypatch, tmp_path):
    mod = _load()
    import quicktune.optimizer.metatrain as mt

    seen: list[set[str]] = []
    real = mt.meta_train

    def spy(df, *args, **kwargs):
        seen.append(set(df["dataset"].unique()) - set(kwargs.get("exclude", ())))
        return real(df, *args, **kwargs)

    monkeypatch.setattr(mt, "meta_train", spy)
    doc = mod.play(
        table,
        orders=2,
        seeds=1,
        budget_multiple=0.5,
        meta_train_options={"epochs": 1, "steps_per_epoch": 3},
        log=lambda _: None,
    )
    src = mod.default_source()
    assert seen, "nothing was meta-trained"
    for r in doc["runs"]:
        order = doc["settings"]["orders"][r["order"]]
        assert order[r["k"] - 1] == r["task"]
        assert r["task"] not in r["trained_on"]
        assert all(src(t) != src(r["task"]) for t in r["trained_on"])
        assert set(r["trained_on"]) <= set(order[: r["k"] - 1])
        if r["k"] == 1:
            assert r["trained_on"] == []
    # every set actually meta-trained on is some run's trained_on (nothing else was ever trained)
    trained = {frozenset(r["trained_on"]) for r in doc["runs"] if r["trained_on"]}
    assert {frozenset(s) for s in seen} <= trained
    # one entry per k, for every arm and clock
    for clock in ("time", "table_time"):
        for arm, rows in doc["curve"][clock].items():
            assert [e["k"] for e in rows] == [1, 2, 3, 4], arm
            assert all(e["n"] == 2 for e in rows)
    # k = 1 is nometa: the same run
    k1 = [e for e in doc["curve"]["time"]["quicktune[history]"] if e["k"] == 1][0]
    assert k1["diff_vs_nometa"]["mean"] == [0.0] * 4
    json.dumps(doc)  # serialisable


def test_max_tasks_spreads_over_sources():
    mod = _load()
    tasks = ["digits", "digits-c01234", "digits-c56789", "fashion-mnist", "lfw", "mnist5k"]
    assert mod.spread_over_sources(tasks, mod.default_source())[:4] == ["digits", "fashion-mnist", "lfw", "mnist5k"]
