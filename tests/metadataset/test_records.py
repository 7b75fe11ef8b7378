"""The campaign's result store (quicktune.metadataset.records): idempotent, resumable, no backend.

Cost: < 2 s (a plan over builtin:cpu, hand-written RESULT dicts; nothing trains).
"""

from __future__ import annotations

import math

from hypothesis import given, settings, strategies as st

from quicktune.metadataset.plan import CampaignPlan, make_or_extend_plan, parse_dataset_spec
from quicktune.metadataset.records import RecordStore, totals
from quicktune.space import load_space


def _store(wd) -> RecordStore:
    specs = [parse_dataset_spec("digits:classes=0,1"), parse_dataset_spec("lfw")]
    make_or_extend_plan(wd, specs, 3, 2, 0, load_space("builtin:cpu"), "builtin:cpu", 16)
    store = RecordStore(wd, CampaignPlan.load(wd))
    store.load()
    return store


def _result(status="ok", scores=(0.5, 0.6), step_seconds=5.0):
    return {
        "status": status,
        "message": "" if status == "ok" else "boom",
        "epochs": [{"epoch": i + 1, "score": s, "cost": 1.0} for i, s in enumerate(scores)],
        "step_seconds": step_seconds,
        "meta_features": {"num_classes": 2},
    }


def test_records_survive_a_restart_and_are_never_planned_again(tmp_path):
    store = _store(tmp_path)
    order = store.plan.order
    assert store.todo() == order and len(order) == 6
    (t, c), (t2, c2) = order[0], order[1]
    rec = store.record(t, c, "sid-1", _result(), "", 3.0)
    assert rec["config"] == store.plan.pool[c] and rec["failed_cost"] == 3.0  # 5 s step - 2 s of epochs
    store.record(t2, c2, "sid-2", _result("failed", scores=(0.4,)), "lost", None)

    again = RecordStore(tmp_path, CampaignPlan.load(tmp_path))  # a new process: only the disk
    assert set(again.load()) == {(t, c), (t2, c2)}
    assert again.todo() == order[2:]
    per = again.progress()
    assert per[t]["done"] + per[t2]["done"] == 2 and sum(p["failed"] for p in per.values()) == 1
    assert totals(per)["planned"] == 6 and totals(per)["epochs"] == 3

    df = again.table()
    assert df is not None and set(df["dataset"]) == {t, t2}
    failed_rows = df[df["config_id"] == c2]
    assert math.isnan(failed_rows["score"].iloc[-1])  # the failure is a NaN row after its epochs


def test_a_torn_record_counts_as_missing_and_forget_failed_keeps_the_file(tmp_path):
    store = _store(tmp_path)
    (t, c), (t2, c2) = store.plan.order[:2]
    store.record(t, c, "sid", _result("failed"), "", None)
    store.record(t2, c2, "sid", _result("diverged"), "", None)
    torn = store.result_path(*store.plan.order[2])
    torn.parent.mkdir(parents=True, exist_ok=True)
    torn.write_text('{"task": ')  # writes are atomic, but a copied or hand-edited folder may hold one
    assert store.plan.order[2] not in RecordStore(tmp_path, store.plan).load()

    dropped = store.forget_failed()
    assert dropped == [(t, c)]  # diverged is a property of the config: kept
    assert (t, c) in store.todo() and (t2, c2) not in store.todo()
    kept = list(store.result_path(t, c).parent.glob(f"{c}.json.dropped-*"))
    assert len(kept) == 1 and not store.result_path(t, c).exists()


@settings(max_examples=25, deadline=None)
@given(
    scores=st.lists(st.floats(0, 1), min_size=1, max_size=4),
    step=st.floats(0, 100),
    status=st.sampled_from(["ok", "failed", "diverged", "oom", "invalid"]),
)
def test_a_record_round_trips_through_the_disk(scores, step, status):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        store = _store(Path(d))
        t, c = store.plan.order[0]
        rec = store.record(t, c, "sid", _result(status, tuple(scores), step), "", None)
        assert RecordStore(Path(d), store.plan).load()[(t, c)] == rec
        assert rec["failed_cost"] >= 0.0 and rec["status"] == status
