"""Leave-one-model-out and leave-one-source-out: what meta-training may see, what is searched, and
that every result record names its held-out unit."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from quicktune.bench import heldout, runner
from quicktune.bench.synthetic import make_synthetic_table
from quicktune.optimizer import metatrain

#: tiny synthetic table, tasks renamed into two sources with class-subset siblings
NAMES = {"synth00": "alpha", "synth01": "alpha-c01", "synth02": "beta", "synth03": "beta-c23-32px"}
FAST = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    df = make_synthetic_table(4, 10, 3, seed=1)
    df["dataset"] = df["dataset"].map(NAMES)
    return df


@pytest.fixture
def spy(monkeypatch):
    """Record what every meta-training is given (and run it for real, quickly)."""
    calls: list[dict] = []
    real = metatrain.meta_train

    def wrapped(df, exclude=(), **kw):
        calls.append({"table": df.copy(), "exclude": list(exclude), "encoding": kw.get("model_encoding")})
        return real(df, exclude=exclude, **kw)

    monkeypatch.setattr(metatrain, "meta_train", wrapped)
    heldout._ARTIFACTS.clear()
    runner._UNIT_FREE_RUNS.clear()
    yield calls
    heldout._ARTIFACTS.clear()
    runner._UNIT_FREE_RUNS.clear()


def test_sources_read_from_task_names():
    assert heldout.source_of("fashion-mnist-c02346-64px", ["fashion-mnist", "mnist5k"]) == "fashion-mnist"
    assert heldout.source_of("digits", ["digits"]) == "digits"
    assert heldout.source_of("alpha-c01") == "alpha" and heldout.source_of("beta-c23-32px") == "beta"
    assert heldout.source_of("gamma") == "gamma"
    assert heldout.task_sources(["x", "y"], {"y": "x"}) == {"x": "x", "y": "x"}


def test_units_of_each_mode(table):
    models = sorted(table["hp.model"].dropna().astype(str).unique())
    lomo = heldout.held_out_units(table, "lomo")
    assert sorted(lomo) == models
    for m, tasks in lomo.items():  # exactly the tasks whose pool contains m
        has = {d for d, g in table.groupby("dataset") if (g["hp.model"].astype(str) == m).any()}
        assert set(tasks) == has
    assert heldout.held_out_units(table, "loso") == {"alpha": ["alpha", "alpha-c01"], "beta": ["beta", "beta-c23-32px"]}
    assert heldout.held_out_units(table, "loso", tasks=["beta"]) == {"beta": ["beta"]}
    with pytest.raises(ValueError, match="held-out units"):
        heldout.held_out_units(table, "none")


@pytest.mark.slow
def test_lomo_never_meta_trains_on_the_held_out_model(table, spy, tmp_path):
    every = sorted(table["hp.model"].dropna().astype(str).unique())
    table = table[table["hp.model"].astype(str).isin(every[:3])]  # three models: three held-out units
    models = every[:3]
    task = "alpha"
    summary = runner.run_benchmark(
        table,
        ["quicktune", "quicktune-onehot", "random"],
        [0],
        budget_multiple=0.5,
        out_dir=tmp_path,
        meta_train="lomo",
        datasets=[task],
        meta_train_options=FAST,
        plots=False,
    )
    units = heldout.held_out_units(table, "lomo", [task])
    assert len(units) >= 2
    # one meta-training per (held-out model, encoding), none repeated
    assert len(spy) == 2 * len(units)
    assert sorted((c["encoding"]) for c in spy) == ["descriptor"] * len(units) + ["onehot"] * len(units)
    seen_units = []
    for call in spy:
        present = set(call["table"]["hp.model"].dropna().astype(str))
        missing = set(models) - present
        assert len(missing) == 1, "exactly one model is left out of each meta-training"
        seen_units.append(missing.pop())
        # every other model's curves, on every task (the evaluated one included), are there
        assert set(call["table"]["dataset"]) == set(table["dataset"]) and call["exclude"] == []
    assert sorted(set(seen_units)) == sorted(units)
    # the artifacts: the one-hot schema lists only the models it saw
    for (_, mode, unit, enc, _), art in heldout._ARTIFACTS.items():
        assert mode == "lomo" and unit not in art.schema.model.choices
        assert art.metrics["model_encoding"] == enc
    recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*.json"))]
    assert len(recs) == 3 * len(units)
    for r in recs:
        assert r["held_out_kind"] == "model" and r["held_out"] in units and r["dataset"] == task
        assert r["n_configs"] == table[table["dataset"] == task]["config_id"].nunique()  # the whole pool
        if r["optimizer"] == "random":
            assert r["model_encoding"] is None and r["meta_train"] == "none"
        else:
            assert r["model_encoding"] == ("onehot" if r["optimizer"] == "quicktune-onehot" else "descriptor")
    # random does not depend on the held-out model: one simulation attributed to every unit
    rand = [r["trajectory"]["config_id"] for r in recs if r["optimizer"] == "random"]
    assert all(t == rand[0] for t in rand)
    assert set(summary["optimizers"]) == {"quicktune", "quicktune-onehot", "random"}
    md = (tmp_path / "results.md").read_text()
    assert "held-out model" in md and f"{sorted(units)[0]} / {task}" in md


@pytest.mark.slow
def test_loso_holds_out_every_task_of_a_source_together(table, spy, tmp_path):
    runner.run_benchmark(
        table,
        ["quicktune", "random"],
        [0, 1],
        budget_multiple=1.0,
        out_dir=tmp_path,
        meta_train="loso",
        meta_train_options=FAST,
        plots=False,
    )
    assert sorted(c["exclude"] for c in spy) == [["alpha", "alpha-c01"], ["beta", "beta-c23-32px"]]
    for call in spy:  # the full table goes in; meta_train drops the excluded tasks (recorded in the artifact)
        assert set(call["table"]["dataset"]) == set(NAMES.values())
    for (_, _, unit, _, _), art in heldout._ARTIFACTS.items():
        assert all(heldout.source_of(d) != unit for d in art.datasets)
        assert sorted(art.excluded) == sorted(t for t in NAMES.values() if heldout.source_of(t) == unit)
    recs = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert len(recs) == 4 * 2 * 2
    for r in recs:
        assert r["held_out_kind"] == "source" and r["held_out"] == heldout.source_of(r["dataset"])
        assert (tmp_path / "runs" / f"{r['held_out']}__{r['dataset']}__{r['optimizer']}__s{r['seed']}.json").exists()


def test_unknown_or_impossible_modes_fail_clearly(table, tmp_path):
    with pytest.raises(ValueError, match="meta_train must be one of loo, lomo, loso, none"):
        runner.run_benchmark(table, ["random"], 1, 1.0, tmp_path, meta_train="lofo")
    one_source = table[table["dataset"].isin(["alpha", "alpha-c01"])]
    with pytest.raises(ValueError, match="at least two sources"):
        runner.run_benchmark(one_source, ["quicktune"], 1, 1.0, tmp_path, meta_train="loso")
    one_model = table[table["hp.model"].astype(str) == str(table["hp.model"].iloc[0])]
    with pytest.raises(ValueError, match="at least two models"):
        runner.run_benchmark(one_model, ["quicktune"], 1, 1.0, tmp_path, meta_train="lomo")


def test_cli_rejects_an_unknown_mode(capsys):
    from quicktune.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "--table", "t.parquet", "--out", "o", "--meta-train", "lofo"])
    assert exc.value.code == 2
    assert "invalid choice: 'lofo'" in capsys.readouterr().err
