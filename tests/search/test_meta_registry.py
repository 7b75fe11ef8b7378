"""Which meta-artifact a search starts from when it names a registered version, or none
(quicktune/search/inputs.py, spec.py): an explicit ``models:/`` that cannot be used is an error
naming the version; the default champion that cannot be used is a warning naming it, and the
shipped artifact. A real MLflow registry (sqlite store, artifacts in a folder)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from quicktune.search import SearchError, SearchSpec, inputs
from quicktune.tracking import registry as r
from quicktune.tracking.schema import SURROGATE_ALIAS, SURROGATE_MODEL, TAG_ARTIFACT_VERSION, TAG_TABLE_HASH


@pytest.fixture
def store(tmp_path):
    from quicktune.bench.synthetic import make_synthetic_table
    from quicktune.optimizer.artifact import FORMAT_VERSION
    from quicktune.optimizer.metatrain import meta_train

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = r.client_for(uri)
    client.create_experiment(SURROGATE_MODEL, artifact_location=str(tmp_path / "artifacts"))
    art = meta_train(make_synthetic_table(n_datasets=2, n_configs=8, max_epochs=3, seed=0), epochs=1, steps_per_epoch=2)
    art.save(tmp_path / "art")
    tags = {TAG_TABLE_HASH: art.table_hash, TAG_ARTIFACT_VERSION: str(FORMAT_VERSION)}

    def register(champion: bool = True):
        mv = r.register_folder(client, tmp_path / "art", SURROGATE_MODEL, SURROGATE_MODEL, tags)
        if champion:
            r.set_alias(client, SURROGATE_MODEL, SURROGATE_ALIAS, mv.version)
        return mv, Path(client.get_run(mv.run_id).info.artifact_uri) / "surrogate"

    return {"uri": uri, "art": art, "register": register, "work": str(tmp_path / "work")}


def test_no_champion_means_the_shipped_artifact(store):
    assert inputs.registry_default_artifact(store["work"], store["uri"]) is None
    assert inputs.registry_default_artifact(store["work"], None) is None  # a store without a registry


def test_the_champion_is_the_default(store):
    mv, _ = store["register"]()
    art, source, version = inputs.registry_default_artifact(store["work"], store["uri"])
    assert (source, version) == (f"models:/{SURROGATE_MODEL}@{SURROGATE_ALIAS}", str(mv.version))
    assert art.table_hash == store["art"].table_hash


def test_a_broken_champion_falls_back_with_a_warning_but_an_explicit_one_is_an_error(store, caplog):
    mv, folder = store["register"]()
    shutil.rmtree(folder)
    with caplog.at_level(logging.WARNING):
        assert inputs.registry_default_artifact(store["work"], store["uri"]) is None
    assert f"models:/{SURROGATE_MODEL}/{mv.version}" in caplog.text and "shipped" in caplog.text
    for asked in (f"models:/{SURROGATE_MODEL}@{SURROGATE_ALIAS}", f"models:/{SURROGATE_MODEL}/{mv.version}"):
        with pytest.raises(SearchError, match=f"models:/{SURROGATE_MODEL}/{mv.version}: cannot download"):
            inputs.fetch_registered_artifact(asked, store["work"], store["uri"])


def test_a_resume_keeps_its_version_when_the_alias_moved(store):
    v1, _ = store["register"]()
    store["register"]()  # v2 is champion now
    art, source, version = inputs.registry_default_artifact(
        store["work"], store["uri"], pinned=f"models:/{SURROGATE_MODEL}/{v1.version}"
    )
    assert version == str(v1.version)


@pytest.mark.parametrize("bad", ["models:/../x@champion", "models:/x@latest", "models:/x/0", "models:/x"])
def test_the_spec_refuses_a_malformed_models_uri(bad, tmp_path):
    with pytest.raises(SearchError, match="meta_artifact"):
        SearchSpec(data_uri=str(tmp_path), budget_seconds=10, meta_artifact=bad)
