"""Continual meta-learning end to end, against a real MLflow server + SeaweedFS S3: two searches
end -> ``quicktune metatrain --from-mlflow`` registers version 1 of ``quicktune-surrogate`` with
alias ``champion`` -> a third search loads ``models:/quicktune-surrogate@champion`` and its parent
run records the version and table hash -> a retrain with zero training steps (an untrained
surrogate: really worse, not a mocked comparison) registers version 2 and leaves the alias on 1.

Its own MLflow server (on the session's S3): the registry is server-wide, and the champion it
leaves behind would change what every later search on a shared server starts from.
Cost on 2 busy cores: ~4-6 min (three tiny real searches, two meta-trainings on the shipped table).
"""

from __future__ import annotations

import io
import json
import tempfile
import uuid
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from quicktune.backends.local import LocalBackend
from quicktune.search import SearchSpec, run_search
from quicktune.tracking import SearchTracker

pytestmark = [pytest.mark.slow, pytest.mark.servers]
TINY_SPACE = str(Path(__file__).parents[1] / "tiny_space.yaml")


@pytest.fixture(scope="module")
def own_mlflow(s3_server, tmp_path_factory):
    from quicktune.testing import MlflowServer

    s3_server.create_bucket("continual")
    with MlflowServer(tmp_path_factory.mktemp("mlflow-continual"), s3_server, bucket="continual") as server:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in server.env.items():
                mp.setenv(k, v)
            mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            yield server


def _search(server, data, tmp_path, seed, **kw):
    spec = SearchSpec(
        data_uri=str(data),
        budget_seconds=300,
        space=TINY_SPACE,
        search_id=f"c-{uuid.uuid4().hex[:8]}",
        workers=1,
        max_epochs=2,
        budget_epochs=3,
        image_size=16,
        seed=seed,
        workdir=str(tmp_path / "work"),
        step_retry_delay=2.0,
        **kw,
    )
    tracker = SearchTracker(server.tracking_uri, experiment="team")
    backend = LocalBackend(spec.workdir)
    try:
        result = run_search(spec, backend, tracker, progress=False)
    finally:
        backend.close()
    assert result.status == "succeeded", result.message
    return tracker.client.get_run(result.parent_run_id).data.tags


def _metatrain(uri, *extra):
    from quicktune.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(["metatrain", "--from-mlflow", uri, "--with-shipped", *extra])
    assert rc == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


def test_two_searches_register_a_champion_a_third_uses_it_a_worse_retrain_does_not_move_it(
    own_mlflow, tiny_image_folder, tmp_path
):
    from quicktune.tracking.registry import client_for

    uri = own_mlflow.tracking_uri
    for seed in (0, 1):  # random search: the team's history, independent of any meta-artifact
        tags = _search(own_mlflow, tiny_image_folder, tmp_path, seed, optimizer="random")
        assert "quicktune.meta_artifact" not in tags

    first = _metatrain(uri, "--epochs", "3", "--steps-per-epoch", "20")
    assert (first["version"], first["alias_moved"], first["searches"]) == (1, True, 2)
    from quicktune.lct import load_lct
    from quicktune.metadataset import shipped_table_path

    n_shipped = load_lct(shipped_table_path())["dataset"].nunique()  # 29: v1 + v2
    # the shipped tasks + the team's (its own fingerprint, renamed beside the shipped 'digits')
    assert len(first["datasets"]) == n_shipped + 1
    client = client_for(uri)
    v1 = client.get_model_version_by_alias("quicktune-surrogate", "champion")
    assert v1.version == "1"
    assert v1.tags["quicktune.table_hash"] == first["table_hash"]
    assert float(v1.tags["quicktune.heldout_loglik"]) == pytest.approx(first["heldout_loglik"])
    assert json.loads(v1.tags["quicktune.datasets"]) == first["datasets"]
    assert v1.tags["quicktune.version"] and v1.tags["quicktune.artifact_version"]

    tags = _search(own_mlflow, tiny_image_folder, tmp_path, 2, meta_artifact="models:/quicktune-surrogate@champion")
    assert tags["quicktune.meta_artifact"] == "models:/quicktune-surrogate@champion"
    assert tags["quicktune.meta_artifact_version"] == "1"
    assert tags["quicktune.meta_artifact_table_hash"] == first["table_hash"]

    scratch = tmp_path / "tmpdir"  # where the champion is downloaded to be scored: nothing may stay
    scratch.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(scratch))
        worse = _metatrain(uri, "--epochs", "1", "--steps-per-epoch", "0")  # an untrained surrogate
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("qt-champion-")]
    assert (worse["version"], worse["alias_moved"], worse["champion_version"]) == (2, False, 1)
    assert worse["searches"] == 3 and worse["champion_heldout_loglik"] > worse["heldout_loglik"]
    assert client.get_model_version_by_alias("quicktune-surrogate", "champion").version == "1"
    assert "kept" in client.get_model_version("quicktune-surrogate", "2").tags["quicktune.alias_decision"]
