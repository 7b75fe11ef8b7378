"""Learning-curve table validation: every error names the file, the column and the row."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from quicktune.lct import (
    LCTError,
    hp_columns,
    load_lct,
    meta_columns,
    table_configs,
    table_hash,
    table_meta_features,
    validate_lct,
    write_lct,
)


def _table() -> pd.DataFrame:
    rows = []
    for d, n_cls in (("a", 10.0), ("b", 100.0)):
        for cid, lr, opt, mom in (("c1", 1e-3, "sgd", 0.9), ("c2", 1e-2, "adamw", None)):
            for e in (1, 2, 3):
                rows.append(
                    {
                        "dataset": d,
                        "config_id": cid,
                        "epoch": e,
                        "score": 0.5 + 0.1 * e,
                        "cost": 2.0,
                        "hp.lr": lr,
                        "hp.opt": opt,
                        "hp.momentum": mom,
                        "hp.frozen": e > 99,
                        "meta.num_classes": n_cls,
                    }
                )
    return pd.DataFrame(rows)


def test_valid_table_roundtrips_through_parquet_and_csv(tmp_path):
    df = _table()
    for name in ("t.parquet", "t.csv"):
        path = write_lct(df, tmp_path / name)
        back = load_lct(path)
        assert len(back) == 12
        assert back["epoch"].dtype == np.int64
        assert hp_columns(back) == ["hp.lr", "hp.opt", "hp.momentum", "hp.frozen"]
        assert meta_columns(back) == ["meta.num_classes"]
        cfgs = dict(table_configs(back, "a"))
        assert cfgs["c1"] == {"lr": 1e-3, "opt": "sgd", "momentum": 0.9, "frozen": False}
        assert "momentum" not in cfgs["c2"]  # missing value = inactive = key absent
        assert table_meta_features(back, "b") == {"num_classes": 100.0}
    assert table_hash(df) == table_hash(df.sample(frac=1.0, random_state=0))


def _error(df: pd.DataFrame) -> str:
    with pytest.raises(LCTError) as ei:
        validate_lct(df, source="curves.parquet")
    return str(ei.value)


def test_missing_required_column():
    msg = _error(_table().drop(columns=["cost"]))
    assert "curves.parquet" in msg and "'cost'" in msg and "missing" in msg


def test_duplicate_row_names_row():
    df = pd.concat([_table(), _table().iloc[[4]]], ignore_index=True)
    msg = _error(df)
    assert "'epoch'" in msg and "row 12" in msg and "duplicate" in msg


def test_epoch_gap():
    df = _table().drop(index=1).reset_index(drop=True)  # dataset a, c1 loses epoch 2
    msg = _error(df)
    assert "'epoch'" in msg and "gap" in msg and "c1" in msg and "row 1" in msg


def test_epoch_must_be_positive_integer():
    df = _table()
    df.loc[5, "epoch"] = 0
    assert "row 5" in _error(df)
    df = _table().astype({"epoch": float})
    df.loc[3, "epoch"] = 1.5
    msg = _error(df)
    assert "'epoch'" in msg and "row 3" in msg


def test_score_types_and_range():
    df = _table()
    df["score"] = df["score"].astype(object)
    df.loc[7, "score"] = "high"
    msg = _error(df)
    assert "'score'" in msg and "row 7" in msg
    df = _table()
    df.loc[2, "score"] = math.inf
    assert "row 2" in _error(df)
    df = _table()
    df.loc[2, "score"] = math.nan  # NaN = failed epoch: allowed
    validate_lct(df)


def test_negative_or_missing_cost():
    df = _table()
    df.loc[9, "cost"] = -1.0
    msg = _error(df)
    assert "'cost'" in msg and "row 9" in msg
    df = _table()
    df.loc[10, "cost"] = math.nan
    assert "row 10" in _error(df)


def test_meta_feature_must_be_constant_per_dataset():
    df = _table()
    df.loc[8, "meta.num_classes"] = 11.0
    msg = _error(df)
    assert "'meta.num_classes'" in msg and "row 8" in msg and "constant" in msg


def test_hyperparameter_constant_along_curve_and_typed():
    df = _table()
    df.loc[4, "hp.lr"] = 0.5
    msg = _error(df)
    assert "'hp.lr'" in msg and "row 4" in msg
    df = _table()
    df["hp.lr"] = df["hp.lr"].astype(object)
    df.loc[0, "hp.lr"] = [1, 2]
    assert "row 0" in _error(df)


def test_missing_dataset_or_config_id():
    df = _table()
    df.loc[6, "config_id"] = None
    msg = _error(df)
    assert "'config_id'" in msg and "row 6" in msg


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(LCTError, match="no such"):
        load_lct(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(LCTError, match="bad.parquet"):
        load_lct(bad)
    csv = tmp_path / "t.csv"
    df = _table()
    df.loc[3, "cost"] = -5
    df.to_csv(csv, index=False)
    with pytest.raises(LCTError, match=r"t\.csv: column 'cost', row 3"):
        load_lct(csv)


def test_medquicktune_table_validates():
    path = str(
        __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "tables" / "medqt_portfolio.parquet"
    )
    import os

    if not os.path.exists(path):
        pytest.skip("shared MedQuickTune table not present on this machine")
    df = load_lct(path)
    assert df["dataset"].nunique() == 6
    cfgs = table_configs(df, "liver")
    assert all("model" in c for _, c in cfgs)
