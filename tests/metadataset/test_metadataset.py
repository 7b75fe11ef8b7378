"""Meta-dataset: dataset specs, planning, a real tiny campaign killed and resumed, info, harvest.

Cost (2 shared cores): spec/plan/table tests < 1 s; the campaign test runs 4 real steps
(test_vit/resnet10t, 16 px, 2 epochs) in two campaign processes, ~40-70 s; the failing-config
campaign ~10 s; the harvest round trip (marked servers, slow) runs 2 real in-process steps and
reads them back from the real MLflow fixture, ~20 s plus the servers' start.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from quicktune.backends.testing import local_attempts_started_and_rerun
from quicktune.lct import load_lct, validate_lct
from quicktune.metadataset.plan import (
    CampaignError,
    CampaignPlan,
    DatasetSpec,
    make_or_extend_plan,
    parse_dataset_spec,
)
from quicktune.metadataset.table import curve_rows, frame_from_rows
from quicktune.space import SearchSpace, config_id

TINY_SPACE = """\
name: mds-tiny
model_param: model
params:
  model: {type: categorical, choices: [test_vit, resnet10t]}
  lr: {type: categorical, choices: [0.001, 0.003, 0.01]}
  opt: {type: categorical, choices: [adamw, momentum]}
  momentum: {type: categorical, choices: [0.9], only_active_with: {opt: [momentum]}}
  batch_size: {type: categorical, choices: [16, 32]}
  sched: {type: categorical, choices: [cosine]}
"""


def _space(tmp_path: Path, text: str = TINY_SPACE) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``quicktune ARGS`` in this process (steps still run as subprocesses); stdout/stderr captured."""
    import contextlib
    import io

    from quicktune.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    proc = subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


# --------------------------------------------------------------------------------------------
# specs, plans, rows (no training)
# --------------------------------------------------------------------------------------------
def test_dataset_specs(tmp_path):
    s = parse_dataset_spec("digits")
    assert (s.task, s.source, s.packaged, s.classes, s.max_per_class) == ("digits", "digits", True, None, None)
    s = parse_dataset_spec("fashion-mnist:classes=0,2,3:max_per_class=60")
    assert (s.task, s.classes, s.max_per_class) == ("fashion-mnist-c023", (0, 2, 3), 60)
    s = parse_dataset_spec("mnist5k:max_per_class=5:classes=1,2:name=my-task")
    assert (s.task, s.classes, s.max_per_class) == ("my-task", (1, 2), 5)
    folder = tmp_path / "imgs"
    folder.mkdir()
    s = parse_dataset_spec(str(folder))
    assert (s.task, s.packaged) == ("imgs", False)
    assert parse_dataset_spec("s3://bucket/some/prefix:name=x").source == "s3://bucket/some/prefix"
    for bad, words in [
        ("nosuchdataset", "neither a packaged"),
        ("digits:classes=1", "at least 2"),
        ("digits:classes=a,b", "integers"),
        ("digits:max_per_class=0", ">= 1"),
        ("digits:colour=red", "unknown option"),
        (f"{folder}:classes=0,1", "only applies"),
        ("digits:name=bad name", "task name"),
    ]:
        with pytest.raises(CampaignError, match=words):
            parse_dataset_spec(bad)


def test_dataset_spec_with_its_own_image_size(tmp_path):
    s = parse_dataset_spec("fashion-mnist:classes=0,2:max_per_class=30:size=64")
    assert (s.task, s.image_size, s.classes) == ("fashion-mnist-c02-64px", 64, (0, 2))
    assert parse_dataset_spec("digits:size=48:name=d48").task == "d48"
    assert DatasetSpec.from_dict(s.to_dict()) == s
    assert "image_size" not in parse_dataset_spec("digits").to_dict()  # older plans stay byte-identical
    for bad, words in [("digits:size=big", "integer"), ("digits:size=4", "8..1024")]:
        with pytest.raises(CampaignError, match=words):
            parse_dataset_spec(bad)
    space = SearchSpace.from_yaml(_space(tmp_path))
    specs = [parse_dataset_spec(x) for x in ("digits", "digits:size=24")]
    make_or_extend_plan(tmp_path / "wd", specs, 2, 1, 0, space, "tiny", 16)
    plan = CampaignPlan.load(tmp_path / "wd")
    assert plan.task_image_size("digits") == 16 and plan.task_image_size("digits-24px") == 24


@settings(max_examples=60, deadline=None)
@given(
    classes=st.none() | st.lists(st.integers(0, 9), min_size=2, max_size=5, unique=True).map(tuple),
    max_per_class=st.none() | st.integers(1, 500),
    image_size=st.none() | st.integers(8, 1024),
)
def test_dataset_spec_dict_round_trip(classes, max_per_class, image_size):
    spec = DatasetSpec("t", "digits", True, classes, max_per_class, image_size)
    assert DatasetSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_plan_shares_a_pool_round_robin_and_extends(tmp_path):
    space = SearchSpace.from_yaml(_space(tmp_path))
    specs = [parse_dataset_spec(s) for s in ("digits", "lfw", "mnist5k")]
    plan = make_or_extend_plan(
        tmp_path / "wd", specs, configs=6, epochs=3, seed=1, space=space, space_ref="tiny", image_size=16
    )
    pool = {p["config_id"]: p["config"] for p in plan["pool"]}
    assert len(pool) == 9  # 1.5 x 6
    assert all(config_id(c) == cid for cid, c in pool.items())
    sets = [set(plan["assignments"][t]) for t in ("digits", "lfw", "mnist5k")]
    assert all(len(s) == 6 for s in sets)
    assert any(sets[0] != s for s in sets[1:])  # random subsets, not all the same ...
    assert sets[0] & sets[1]  # ... but overlapping (6 + 6 > 9)
    # round-robin: the first 3 pairs cover the 3 tasks
    assert [t for t, _ in plan["order"][:3]] == ["digits", "lfw", "mnist5k"]
    assert len(plan["order"]) == 18 and len({tuple(x) for x in plan["order"]}) == 18
    # the same call again changes nothing; more configs extend without touching what was planned
    again = make_or_extend_plan(tmp_path / "wd", specs, 6, 3, 1, space, "tiny", 16)
    assert again["order"] == plan["order"]
    more = make_or_extend_plan(
        tmp_path / "wd", specs + [parse_dataset_spec("digits:classes=0,1:name=d01")], 8, 3, 1, space, "tiny", 16
    )
    assert more["order"][:18] == plan["order"]
    assert all(more["assignments"][t][:6] == plan["assignments"][t] for t in ("digits", "lfw", "mnist5k"))
    assert len(more["assignments"]["d01"]) == 8 and len(more["order"]) == 4 * 8
    with pytest.raises(CampaignError, match="epochs=3"):
        make_or_extend_plan(tmp_path / "wd", specs, 6, 5, 1, space, "tiny", 16)
    with pytest.raises(CampaignError, match="already planned"):
        make_or_extend_plan(
            tmp_path / "wd", [parse_dataset_spec("digits:classes=0,1,2:name=lfw")], 6, 3, 1, space, "tiny", 16
        )


def test_curve_rows_record_failures_and_types():
    eps = [{"epoch": 1, "score": 0.5, "cost": 1.0}, {"epoch": 2, "score": 0.6, "cost": 1.1}]
    cfg = {"model": "m", "lr": 0.01, "batch_size": 16, "linear_probing": True}
    rows = curve_rows("d", "c1", cfg, eps, {"num_classes": 3}, status="diverged", max_epoch=4, failed_cost=2.5)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert math.isnan(rows[2]["score"]) and rows[2]["cost"] == 2.5
    assert "cpu_cost" not in rows[0]
    eps[0].update(train_cpu_seconds=0.75, eval_cpu_seconds=0.25)
    assert curve_rows("d", "c1", cfg, eps, {})[0]["cpu_cost"] == 1.0
    ok = curve_rows("d", "c2", {"model": "m", "lr": 0.1}, eps, {"num_classes": 3}, status="ok", max_epoch=2)
    assert len(ok) == 2
    # a failure after the last planned epoch adds nothing; gaps end the curve
    assert len(curve_rows("d", "c3", cfg, eps, {}, status="failed", max_epoch=2)) == 2
    assert len(curve_rows("d", "c4", cfg, [eps[0], {"epoch": 3, "score": 1, "cost": 1}], {})) == 1
    df = validate_lct(frame_from_rows(rows + ok, hp_names=["model", "lr", "batch_size", "linear_probing", "drop"]))
    assert str(df["hp.batch_size"].dtype) == "Int64" and str(df["hp.linear_probing"].dtype) == "boolean"
    assert df["hp.drop"].isna().all() and df["hp.batch_size"].isna().sum() == 2  # inactive = missing


# --------------------------------------------------------------------------------------------
# a real campaign, killed and resumed
# --------------------------------------------------------------------------------------------
def _wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"campaign exited early ({proc.returncode}): {out}")
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_campaign_killed_and_resumed_trains_nothing_twice(tmp_path, tiny_image_folder):
    wd, out = tmp_path / "wd", tmp_path / "table.parquet"
    args = [
        "metadataset",
        "build",
        "--datasets",
        f"{tiny_image_folder}:name=tiny",
        "--configs",
        "3",
        "--epochs",
        "2",
        "--image-size",
        "16",
        "--space",
        str(_space(tmp_path)),
        "--workdir",
        str(wd),
        "--out",
        str(out),
        "--poll",
        "0.2",
        "--seed",
        "3",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "quicktune.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        _wait_for(out.exists, 240, proc)  # written right after the first result
        proc.send_signal(signal.SIGKILL)  # the campaign dies; its running step (own session) does not
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = sorted(p.name for p in (wd / "results").rglob("*.json"))
    assert 1 <= len(first) < 3
    partial = load_lct(out)  # the table is usable while the campaign is incomplete
    assert partial.groupby(["dataset", "config_id"]).ngroups == len(first)

    res = _cli(*args, "--json")
    prog = json.loads(res.stdout[res.stdout.index("{") :])
    assert prog["total"]["done"] == 3 and prog["total"]["failed"] == 0
    log = (wd / "progress.log").read_text()
    assert log.count("session start") == 2

    # every (task, config) ran in exactly one step, once, all epochs in one go. A second attempt is
    # allowed only for a launch the kill cut short before any process existed (its log holds the
    # backend's launch line alone); an attempt that started is never run again.
    plan = json.loads((wd / "plan.json").read_text())
    steps = sorted((wd / "backend" / "steps").iterdir())
    assert len(steps) == 3
    assert not local_attempts_started_and_rerun(steps)
    for d in steps:
        res_json = json.loads((d / "RESULT.json").read_text())
        assert res_json["status"] == "ok"
        assert [e["epoch"] for e in res_json["epochs"]] == [1, 2]
        assert (d / "step.log").read_text().count("[quicktune local backend]") == 1
    # nothing started a 5th time: running the finished campaign again does nothing
    res = _cli(*args)
    assert "0 to go" in (wd / "progress.log").read_text().splitlines()[-2]
    assert len(list((wd / "backend" / "steps").iterdir())) == 3

    # the table: valid, one curve per planned pair, the rows are exactly what the steps reported
    df = load_lct(out)
    assert df["dataset"].unique().tolist() == ["tiny"]
    assert df.groupby(["dataset", "config_id"]).ngroups == 3 and len(df) == 6
    for task, cid in plan["order"]:
        rec = json.loads((wd / "results" / task / f"{cid}.json").read_text())
        step = json.loads((wd / "backend" / "steps" / rec["step_id"] / "RESULT.json").read_text())
        curve = df[(df["dataset"] == task) & (df["config_id"] == cid)].sort_values("epoch")
        assert curve["score"].tolist() == [e["score"] for e in step["epochs"]]
        assert curve["cost"].tolist() == [e["cost"] for e in step["epochs"]]
        assert (
            curve["hp.model"].iloc[0]
            == plan["pool"][[p["config_id"] for p in plan["pool"]].index(cid)]["config"]["model"]
        )
        for k, v in step["meta_features"].items():
            assert (curve[f"meta.{k}"] == float(v)).all()
    assert (df["meta.num_images"] == 300).all() and (df["meta.num_classes"] == 10).all()

    exported = tmp_path / "exported.csv"
    _cli("metadataset", "export", "--workdir", str(wd), "--out", str(exported))
    pd.testing.assert_frame_equal(
        load_lct(exported)[["dataset", "config_id", "epoch", "score", "cost"]],
        df[["dataset", "config_id", "epoch", "score", "cost"]],
        check_dtype=False,
    )
    status = _cli("metadataset", "status", "--workdir", str(wd)).stdout
    assert "tiny" in status and "3/3" in status
    # the CPU column is what the steps measured (train + validation of every epoch of the curves):
    # the campaign cannot count it itself, its steps are forked by the fork server, not its children
    status_json = json.loads(_cli("metadataset", "status", "--workdir", str(wd), "--json").stdout)
    steps_cpu = 0.0
    for task, cid in plan["order"]:
        rec = json.loads((wd / "results" / task / f"{cid}.json").read_text())
        steps_cpu += sum(e["train_cpu_seconds"] + e["eval_cpu_seconds"] for e in rec["epochs"])
    assert steps_cpu > 0
    assert status_json["tasks"]["tiny"]["cpu_seconds"] == pytest.approx(steps_cpu, abs=0.1)
    assert status_json["total"]["cpu_seconds"] == pytest.approx(steps_cpu, abs=0.1)

    info = json.loads(_cli("metadataset", "info", str(out), "--json").stdout)
    counts = {k: info[k] for k in ("datasets", "curves", "rows", "max_epoch", "path")}
    assert counts == {"datasets": 1, "curves": 3, "rows": 6, "max_epoch": 2, "path": str(out.resolve())}
    assert info["sources"] == ["tiny"] and info["configs_per_task"] == {"min": 3, "max": 3}


@pytest.mark.slow
def test_campaign_materialises_packaged_data_and_records_a_failing_config(tmp_path):
    space = _space(tmp_path, "name: bad\nparams:\n  model: {type: categorical, choices: [no_such_model_xyz]}\n")
    out = tmp_path / "t.csv"
    _cli(
        "metadataset",
        "build",
        "--datasets",
        "lfw:max_per_class=20",
        "--configs",
        "1",
        "--epochs",
        "3",
        "--image-size",
        "16",
        "--space",
        str(space),
        "--workdir",
        str(tmp_path / "wd"),
        "--out",
        str(out),
        "--poll",
        "0.2",
    )
    df = load_lct(out)
    assert len(df) == 1 and df["epoch"].tolist() == [1] and math.isnan(df["score"].iloc[0])
    assert df["cost"].iloc[0] >= 0 and df["hp.model"].iloc[0] == "no_such_model_xyz"
    assert df["dataset"].tolist() == ["lfw"]
    assert len(list((tmp_path / "wd" / "data" / "lfw").rglob("*.png"))) == 40  # 2 classes x 20, written once
    rec = next((tmp_path / "wd" / "results").rglob("*.json"))
    assert json.loads(rec.read_text())["status"] == "invalid"
    step_dir = next((tmp_path / "wd" / "backend" / "steps").iterdir())
    args = [
        "metadataset",
        "build",
        "--workdir",
        str(tmp_path / "wd"),
        "--out",
        str(out),
        "--poll",
        "0.2",
        "--retry-failed",
    ]
    _cli(*args)  # 'invalid' is a property of the config: not retried
    assert not (step_dir / ".attempt").exists()
    doc = json.loads(rec.read_text())
    rec.write_text(json.dumps({**doc, "status": "failed"}))  # as if a code/infrastructure error had hit it
    _cli(*args)
    assert (step_dir / ".attempt").read_text() == "1" and (step_dir / "step.log.0").exists()  # re-ran once
    assert json.loads(rec.read_text())["status"] == "invalid" and len(load_lct(out)) == 1


def test_build_and_info_errors(tmp_path):
    res = _cli(
        "metadataset", "build", "--workdir", str(tmp_path / "none"), "--out", str(tmp_path / "t.parquet"), check=False
    )
    assert res.returncode == 1 and "give --datasets" in res.stderr
    with pytest.raises(SystemExit, match="--namespace and --image"):
        _cli(
            "metadataset",
            "build",
            "--backend",
            "kubernetes",
            "--workdir",
            str(tmp_path / "k"),
            "--out",
            str(tmp_path / "t.parquet"),
        )
    res = _cli(
        "metadataset",
        "build",
        "--datasets",
        "nosuchdataset",
        "--configs",
        "1",
        "--epochs",
        "1",
        "--workdir",
        str(tmp_path / "x"),
        "--out",
        str(tmp_path / "t.parquet"),
        check=False,
    )
    assert res.returncode == 1 and "nosuchdataset" in res.stderr and not (tmp_path / "x" / "plan.json").exists()
    res = _cli("metadataset", "info", str(tmp_path / "missing.parquet"), "--json", check=False)
    assert res.returncode == 1 and "missing.parquet" in res.stderr


def test_info_of_the_shipped_table():
    from quicktune.metadataset import shipped_table_path

    if not shipped_table_path().exists():
        pytest.skip("no shipped meta-dataset table yet")
    info = json.loads(_cli("metadataset", "info", "--json").stdout)
    assert info["path"] == str(shipped_table_path().resolve())
    # the coverage issue 15 asks of the shipped meta-dataset (v1 + v2)
    assert info["datasets"] >= 20 and info["num_sources"] >= 10 and len(info["colour_tasks"]) >= 4
    assert {32, 64} <= set(info["resolutions"]) and info["images"]["max"] >= 10 * info["images"]["min"]
    assert info["configs_per_task"]["min"] >= 40 and info["max_epoch"] >= 12
    assert {"tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"} <= set(
        info["pretrained_random_twins"]
    )
    df = load_lct(shipped_table_path())
    assert not set(df["dataset"]) & {"animal-mnist", "emoji"}  # held out for evaluation
    assert not any(d.startswith(("animal-mnist", "emoji")) for d in df["dataset"])


# --------------------------------------------------------------------------------------------
# harvest: a search recorded in MLflow becomes identical LCT rows
# --------------------------------------------------------------------------------------------
@pytest.mark.servers
@pytest.mark.slow
def test_harvest_round_trip(tmp_path, mlflow_server, s3_env, tiny_image_folder):
    from quicktune.finetune.step import run_step
    from quicktune.metadataset.harvest import harvest
    from quicktune.tracking.layout import SearchTracker

    meta = {
        k: float(v)
        for k, v in __import__("quicktune.data", fromlist=["open_dataset"])
        .open_dataset(str(tiny_image_folder))
        .meta_features()
        .items()
    }
    good = {"model": "test_vit", "lr": 0.003, "opt": "adamw", "batch_size": 16, "sched": "cosine"}
    bad = {"model": "no_such_model_xyz", "lr": 0.001}
    results = {}
    for cfg in (good, bad):
        results[config_id(cfg)] = run_step(
            cfg, str(tiny_image_folder), 2, str(tmp_path / "ck" / config_id(cfg)), image_size=16, max_epochs=2
        )
    assert results[config_id(good)]["status"] == "ok" and results[config_id(bad)]["status"] == "invalid"

    exp = "harvest-" + os.urandom(3).hex()
    tracker = SearchTracker(mlflow_server.tracking_uri, experiment=exp)
    seq = 0
    for search_id, epochs_kept in (("search-a", 2), ("search-b", 1)):  # b: a shorter duplicate curve
        spec = {"data_uri": str(tiny_image_folder), "max_epochs": 2, "search_id": search_id, "meta_features": meta}
        parent = tracker.open_search(search_id, spec)
        for cid, res in results.items():
            cfg = good if cid == config_id(good) else bad
            rec = tracker.create_config_run(parent, search_id, cid, cfg, str(tmp_path / "ck" / cid))
            if res["status"] == "ok":
                eps = res["epochs"][:epochs_kept]
                tracker.log_epochs(rec, eps, range(seq, seq + len(eps)))
                seq += len(eps)
            else:
                tracker.log_failure(rec, 1, seq, res["status"], res["message"], cost=0.25)
                seq += 1

    out = tmp_path / "harvested.parquet"
    summary = harvest(mlflow_server.tracking_uri, out, experiments=[exp])
    assert summary["searches"] == 2 and summary["curves"] == 2 and summary["warnings"] == []
    df = load_lct(out)
    assert df["dataset"].unique().tolist() == [Path(tiny_image_folder).name]
    curve = df[df["config_id"] == config_id(good)].sort_values("epoch")
    reported = results[config_id(good)]["epochs"]
    assert curve["epoch"].tolist() == [1, 2]  # the longest curve of the two searches
    for col in ("score", "cost", "top5", "val_loss", "train_loss"):
        assert curve[col].tolist() == [e[col] for e in reported], col
    for k, v in good.items():
        assert curve[f"hp.{k}"].iloc[0] == v
    for k, v in results[config_id(good)]["meta_features"].items():
        assert (df[f"meta.{k}"] == float(v)).all()
    failed = df[df["config_id"] == config_id(bad)]
    assert failed["epoch"].tolist() == [1] and math.isnan(failed["score"].iloc[0]) and failed["cost"].iloc[0] == 0.25
    assert failed["hp.batch_size"].isna().all()  # inactive in the bad config

    # the CLI prints the same
    res = _cli(
        "metadataset",
        "harvest",
        "--tracking-uri",
        mlflow_server.tracking_uri,
        "--out",
        str(tmp_path / "h2.csv"),
        "--experiment",
        exp,
        "--json",
    )
    assert json.loads(res.stdout)["curves"] == 2
    assert load_lct(tmp_path / "h2.csv")["score"].dropna().tolist() == df["score"].dropna().tolist()


@pytest.mark.servers
@pytest.mark.slow
def test_harvest_of_a_real_search(tmp_path, mlflow_server, tiny_image_folder, monkeypatch):
    """A search run by the controller (one config trains, one diverges) -> harvested rows equal the
    epochs its steps reported in their RESULT.json files, and the failure is a NaN row."""
    from quicktune.backends.local import LocalBackend
    from quicktune.metadataset.harvest import harvest
    from quicktune.search import SearchSpec, run_search
    from quicktune.tracking.layout import SearchTracker

    for k, v in mlflow_server.env.items():
        monkeypatch.setenv(k, v)
    space = _space(
        tmp_path,
        "name: diverge\nmodel_param: model\nparams:\n"
        "  model: {type: categorical, choices: [test_vit]}\n"
        "  lr: {type: categorical, choices: [0.001, 100000.0]}\n"
        "  opt: {type: categorical, choices: [sgd]}\n"
        "  batch_size: {type: categorical, choices: [16]}\n",
    )
    exp = "harvest-real-" + os.urandom(3).hex()
    spec = SearchSpec(
        data_uri=str(tiny_image_folder),
        budget_seconds=300,
        space=str(space),
        search_id="hv-real",
        workers=1,
        max_epochs=2,
        budget_epochs=3,
        image_size=16,
        workdir=str(tmp_path / "work"),
        optimizer="random",
    )
    result = run_search(
        spec, LocalBackend(spec.workdir), SearchTracker(mlflow_server.tracking_uri, experiment=exp), progress=False
    )
    assert result.status == "succeeded", result.message

    reported: dict[str, list[dict]] = {}
    statuses: dict[str, str] = {}
    for res in (Path(spec.workdir) / "steps").glob("*/RESULT.json"):
        req = json.loads((res.parent / "request.json").read_text())
        doc = json.loads(res.read_text())
        reported.setdefault(req["config_id"], []).extend(doc["epochs"])
        statuses[req["config_id"]] = doc["status"] if doc["status"] != "ok" else statuses.get(req["config_id"], "ok")
    assert sorted(statuses.values()) == ["diverged", "ok"]

    out = tmp_path / "h.parquet"
    summary = harvest(mlflow_server.tracking_uri, out, experiments=[exp])
    assert summary["searches"] == 1 and summary["warnings"] == []  # the controller logs meta-features
    # the search is tagged with the data's fingerprint, and harvest keys the dataset by it (so the
    # same images under another URI or bucket are one dataset of the table)
    from quicktune.data import open_dataset

    fp = open_dataset(str(tiny_image_folder)).fingerprint
    ((name, info),) = summary["dataset_names"].items()
    assert info["key"] == f"fp:{fp}" and name == Path(str(tiny_image_folder)).name
    df = load_lct(out)
    for cid, eps in reported.items():
        curve = df[df["config_id"] == cid].sort_values("epoch")
        eps = sorted(eps, key=lambda e: e["epoch"])
        ok_rows = curve[curve["score"].notna()]
        assert ok_rows["epoch"].tolist() == [e["epoch"] for e in eps]
        for col in ("score", "cost", "top5", "val_loss", "train_loss"):
            assert ok_rows[col].tolist() == [e[col] for e in eps], (cid, col)
        if statuses[cid] == "diverged":
            assert curve["score"].isna().tolist() == [False] * len(eps) + [True]
        else:
            assert curve["score"].notna().all()
    meta = json.loads(next((Path(spec.workdir) / "steps").glob("*/RESULT.json")).read_text())["meta_features"]
    for k, v in meta.items():
        assert (df[f"meta.{k}"] == float(v)).all(), k


def test_shipped_artifact_is_meta_trained_on_the_shipped_table():
    from quicktune.lct import table_hash
    from quicktune.metadataset import shipped_table_path
    from quicktune.optimizer.artifact import default_artifact

    art = default_artifact()
    if art is None or not shipped_table_path().exists():
        pytest.skip("no shipped artifact/table yet")
    df = load_lct(shipped_table_path())
    assert set(art.datasets) <= set(df["dataset"]) and len(art.datasets) >= 8
    assert not any(d.startswith(("animal-mnist", "emoji")) for d in art.datasets)  # held out
    assert len(art.table_hash) == len(table_hash(df)) == 16
