"""benchmarks/twins_in_table.py: pretrained vs random-init twins, read off a learning-curve table."""

from __future__ import annotations

import pandas as pd
import pytest
from benchscripts import load_benchmark


def test_twins_are_compared_per_task_and_counted(tmp_path):
    rows = []
    for task, (pre, rnd) in {"a": (0.8, 0.3), "b": (0.2, 0.4)}.items():
        for model, final, cid in (("tf_efficientnet_lite0", pre, "c1"), ("tf_efficientnet_lite0.random", rnd, "c2")):
            for epoch, score in ((1, 0.1), (2, final)):
                rows.append({"dataset": task, "config_id": f"{task}{cid}", "epoch": epoch, "score": score,
                             "cost": 1.0, "hp.model": model})  # fmt: skip
    rows.append({"dataset": "a", "config_id": "x", "epoch": 1, "score": 0.9, "cost": 1.0, "hp.model": "resnet10t"})
    path = tmp_path / "t.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    res = load_benchmark("twins_in_table").summarise(str(path))
    assert res["tasks"]["a"]["pretrained"]["last_mean"] == pytest.approx(0.8)
    assert res["tasks"]["b"]["random"]["last_mean"] == pytest.approx(0.4)
    assert res["all_tasks"]["pretrained"]["curves_epoch1"] == 2  # resnet10t is not a twin
    assert res["pretrained_ends_higher"] == {"tasks": 1, "of": 2}
