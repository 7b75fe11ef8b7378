"""``quicktune metadataset info``: counts and the coverage axes of a table (sources, colour,
resolutions, sizes, configs, epochs, pretrained/random twins)."""

from __future__ import annotations

import json
import subprocess
import sys

from hypothesis import given, strategies as st

from quicktune.data.packaged import LOADERS
from quicktune.metadataset.info import source_of, table_info
from quicktune.metadataset.table import curve_rows, frame_from_rows, write_table_atomic


def test_source_of_a_campaign_task_name():
    names = list(LOADERS)
    assert source_of("fashion-mnist-c02346-64px", names) == "fashion-mnist"
    assert source_of("digits", names) == "digits"
    assert source_of("openclipart-c0-4-7-9-12", names) == "openclipart"
    assert source_of("my-own-task", names) == "my-own-task"
    assert source_of("digitsx", names) == "digitsx"  # a prefix must end at a '-'


@given(st.sampled_from(sorted(LOADERS)), st.lists(st.integers(0, 12), min_size=2, max_size=4, unique=True))
def test_source_of_inverts_the_default_task_names(name, classes):
    from quicktune.metadataset.plan import parse_dataset_spec

    spec = parse_dataset_spec(f"{name}:classes={','.join(map(str, classes))}:size=64")
    assert source_of(spec.task, LOADERS) == name


def _rows(task, channels, height, images, model, n_epochs):
    meta = {"num_channels": channels, "median_height": height, "num_images": images}
    eps = [{"epoch": e, "score": 0.1 * e, "cost": 1.0} for e in range(1, n_epochs + 1)]
    return curve_rows(task, f"{task}-{model}", {"model": model, "lr": 0.01}, eps, meta)


def test_info_reports_the_coverage_axes(tmp_path):
    rows = (
        _rows("digits", 1, 32, 300, "tf_efficientnet_lite0", 12)
        + _rows("digits", 1, 32, 300, "tf_efficientnet_lite0.random", 12)
        + _rows("tuxpaint-64px", 3, 64, 3000, "resnet10t", 10)
        + _rows("tuxpaint-c02569", 3, 32, 263, "tf_efficientnet_lite1", 12)
    )
    path = write_table_atomic(frame_from_rows(rows, hp_names=["model", "lr"]), tmp_path / "t.parquet")
    info = table_info(path)
    assert (info["datasets"], info["curves"], info["rows"], info["max_epoch"]) == (3, 4, 46, 12)
    assert info["sources"] == ["digits", "tuxpaint"] and info["num_sources"] == 2
    assert info["colour_tasks"] == ["tuxpaint-64px", "tuxpaint-c02569"]
    assert info["resolutions"] == [32, 64]
    assert info["images"] == {"min": 263, "max": 3000}
    assert info["configs_per_task"] == {"min": 1, "max": 2}
    assert info["epochs_per_curve"] == {"min": 10, "max": 12}
    assert info["pretrained_random_twins"] == ["tf_efficientnet_lite0"]
    out = subprocess.run(
        [sys.executable, "-m", "quicktune.cli", "metadataset", "info", str(path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == json.loads(json.dumps(info))
