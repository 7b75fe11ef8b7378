"""A person starts a search from the MLflow UI, in a real headless Chromium (playwright-core).

The browser (``tests/browser/request_search.js``) opens the real MLflow server fixture, creates a
registered model (Models -> Create model) and sets the request tags in the model page's tag editor;
``quicktune watch --once`` (local launcher) picks the request up and runs a small real search on
the tiny digits folder; the browser keeps reloading the model page and must see the status tag
change (queued/running, then succeeded) and the new version with the ``champion`` alias.

The request sets no ``quicktune.space``: the search runs on what users get, the default
``builtin:cpu`` space and the shipped meta-learned artifact (only the budget - one epoch of one
configuration at 32 px - is small). The watcher runs with its default data roots plus the one
folder the test data lies in (``--allowed-data-root``), as an operator would start it.
Screenshots go to ``$QUICKTUNE_TEST_ARTIFACTS/browser-ui`` (default ``tests/artifacts/browser-ui``).

Needs /usr/bin/chromium (``apt-get install -y chromium``) and node; ``playwright-core`` is installed
into tests/browser/node_modules with ``npm ci`` when missing. Cost: ~2.5-4.5 min on 2 busy cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).parent
BROWSER = HERE / "browser"
CHROMIUM = os.environ.get("QUICKTUNE_CHROMIUM", "/usr/bin/chromium")

pytestmark = [pytest.mark.slow, pytest.mark.servers]


@pytest.fixture(scope="module")
def browser_tools():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not installed (apt-get install -y nodejs npm)")
    if not (BROWSER / "node_modules" / "playwright-core").exists():
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=BROWSER, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"npm ci in {BROWSER} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return node


@pytest.fixture
def artifacts(tmp_path):
    shots = tmp_path / "shots"
    shots.mkdir()
    yield shots
    dest = Path(os.environ.get("QUICKTUNE_TEST_ARTIFACTS") or HERE / "artifacts") / "browser-ui"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(shots, dest)


def _events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_start_a_search_from_the_mlflow_ui_and_find_the_champion(
    browser_tools, artifacts, mlflow_server, tiny_image_folder, tmp_path
):
    from mlflow import MlflowClient

    model = f"ui-digits-{uuid.uuid4().hex[:6]}"
    progress = tmp_path / "progress.jsonl"
    cfg = {
        "url": mlflow_server.tracking_uri.rstrip("/"),
        "model": model,
        "shots": str(artifacts),
        "progress_file": str(progress),
        "timeout_s": 420,
        "chromium": CHROMIUM,
        "tags": [
            ["quicktune.data", str(tiny_image_folder)],
            ["quicktune.budget", "10m"],
            ["quicktune.max_epochs", "1"],
            ["quicktune.budget_epochs", "1"],
            ["quicktune.image_size", "32"],
            ["quicktune.request", "start"],
        ],
    }
    cfg_file = tmp_path / "browser.json"
    cfg_file.write_text(json.dumps(cfg))
    env = {**os.environ, **mlflow_server.env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
    browser = subprocess.Popen(
        [browser_tools, str(BROWSER / "request_search.js"), str(cfg_file)],
        cwd=BROWSER,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watcher = None
    try:
        deadline = time.monotonic() + 180
        while not any(e["event"] == "request tagged" for e in _events(progress)):
            assert browser.poll() is None, f"the browser stopped early: {browser.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "the browser did not set the request tags within 180 s"
            time.sleep(0.5)
        client = MlflowClient(mlflow_server.tracking_uri)
        tags = client.get_registered_model(model).tags  # what the person typed reached MLflow
        assert tags["quicktune.request"] == "start" and tags["quicktune.data"] == str(tiny_image_folder)
        watcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "quicktune.cli",
                "watch",
                "--tracking-uri",
                mlflow_server.tracking_uri,
                "--once",
                "--poll",
                "2",
                "--timeout",
                "400",
                "--experiment",
                f"ui-{uuid.uuid4().hex[:6]}",
                "--watcher-id",
                "browser-test",
                "--state-dir",
                str(tmp_path / "watch"),
                "--allowed-data-root",
                str(tiny_image_folder),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        w_out, _ = watcher.communicate(timeout=460)
        b_out, _ = browser.communicate(timeout=120)
    finally:
        for p in (browser, watcher):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert watcher.returncode == 0, w_out[-3000:]
    assert browser.returncode == 0, f"browser:\n{b_out[-3000:]}\nwatcher:\n{w_out[-3000:]}"
    events = _events(progress)
    seen = [e["status"] for e in events if e["event"] == "status"]
    assert seen[-1] == "succeeded", seen
    assert any(s in ("queued", "running") for s in seen[:-1]), f"no progress seen before the end: {seen}"
    final = [e for e in events if e["event"] == "status"][-1]
    assert final["parent_run"].startswith(mlflow_server.tracking_uri.rstrip("/") + "/#/experiments/")
    assert 0.0 <= float(final["incumbent"]) <= 1.0
    (shown,) = [e for e in events if e["event"] == "champion shown"]
    assert "champion" in shown["alias"]
    mv = client.get_model_version_by_alias(model, "champion")
    assert f"Version {mv.version}" in shown["versions"] and mv.tags["quicktune.search_id"] in shown["versions"]
    assert mv.name == model and final["parent_run"].endswith(f"/runs/{mv.tags['quicktune.parent_run_id']}")
    parent = client.get_run(mv.tags["quicktune.parent_run_id"])
    assert float(final["incumbent"]) == pytest.approx(parent.data.metrics["incumbent"], abs=1e-4)
    assert client.get_registered_model(model).tags["quicktune.champion_version"] == str(mv.version)
    # what users run: the default space, the meta-learned optimizer with the artifact shipped in the package
    assert (parent.data.params["space"], parent.data.params["optimizer"], parent.data.params["meta_artifact"]) == (
        "builtin:cpu",
        "quicktune",
        "null",
    ), parent.data.params
    assert mv.tags["quicktune.search_id"] == client.get_registered_model(model).tags["quicktune.search_id"]
    for shot in ("01-create-model", "02-request-tags", "03-status-succeeded", "04-champion"):
        assert (artifacts / f"{shot}.png").stat().st_size > 10_000, shot
