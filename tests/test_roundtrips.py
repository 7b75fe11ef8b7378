"""Property-based tests (Hypothesis) of every serialisation round trip a resumed search relies on:
search spaces (spec.json), config ids, optimizer state (the two state slots), and the search spec
as the controller writes and reads it.

Issue 12, defect 1: spec.json is written with sorted keys, and a space whose conditional knob
sorted before its parent (every built-in space) could not be read back, so no search on a
built-in space could be resumed. These tests write with arbitrary key orders, sorted keys and
numpy values, and require the same space (same parameter order, same sampling stream), the same
ids and the same next ``ask``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from quicktune.optimizer.base import STATUSES
from quicktune.optimizer.registry import available, make_optimizer
from quicktune.space import SearchSpace, builtin_space, config_id, load_space

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- strategies ---------------------------------------------------------------------------------
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8)
# grid-like floats: at most 8 significant digits, no -0.0 (it equals 0.0 and shares its id)
grid_floats = st.builds(
    lambda x, k: float(f"{x:.{k}g}") + 0.0,
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.integers(1, 8),
)
scalars = st.one_of(st.text(max_size=6), st.integers(-(10**6), 10**6), grid_floats, st.booleans())


def _unique(values: list[Any]) -> list[Any]:
    out: dict[str, Any] = {}
    for v in values:
        out.setdefault(repr(v), v)
    return list(out.values())


@st.composite
def param_specs(draw) -> dict[str, Any]:
    kind = draw(st.sampled_from(["categorical", "float", "int", "bool"]))
    if kind == "categorical":
        choices = _unique(draw(st.lists(scalars, min_size=1, max_size=5)))
        return {"type": "categorical", "choices": choices}
    if kind == "bool":
        return {"type": "bool"}
    log = draw(st.booleans())
    if kind == "int":
        low = draw(st.integers(1 if log else -1000, 1000))
        return {"type": "int", "low": low, "high": low + draw(st.integers(1, 1000)), "log": log}
    if log:
        low = draw(st.floats(1e-6, 1e2))
        return {"type": "float", "low": low, "high": low * draw(st.floats(1.5, 1e4)), "log": True}
    low = draw(st.floats(-1e3, 1e3))  # wide enough that two samples never agree to 9 digits
    return {"type": "float", "low": low, "high": low + draw(st.floats(1.0, 1e3)), "log": False}


@st.composite
def space_docs(draw) -> dict[str, Any]:
    """A valid space document: random names, types, choices, ranges, and conditions that form a
    DAG (a parameter may depend on categorical/bool parameters generated before it); the params
    mapping is then declared in a random order, so children often come before their parents."""
    keys = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    params: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(keys):
        spec = draw(param_specs())
        parents = [k for k in keys[:i] if params[k]["type"] in ("categorical", "bool")]
        if parents and draw(st.booleans()):
            cond = {}
            for parent in draw(st.lists(st.sampled_from(parents), min_size=1, max_size=2, unique=True)):
                pool = params[parent].get("choices", [False, True])
                cond[parent] = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=len(pool), unique_by=repr))
            spec["only_active_with"] = cond
        params[name] = spec
    declared = draw(st.permutations(keys))
    doc: dict[str, Any] = {"name": draw(names), "params": {k: params[k] for k in declared}}
    if draw(st.booleans()):
        doc["model_param"] = draw(st.sampled_from(keys))
    return doc


def shuffled(obj: Any, data: st.DataObject) -> Any:
    """``obj`` with the keys of every mapping in it (at any depth) in an arbitrary order."""
    if isinstance(obj, dict):
        keys = data.draw(st.permutations(list(obj)))
        return {k: shuffled(obj[k], data) for k in keys}
    if isinstance(obj, list):
        return [shuffled(v, data) for v in obj]
    return obj


def numpyfied(obj: Any) -> Any:
    """``obj`` with its scalars as numpy scalars and its lists as tuples (what code may build)."""
    if isinstance(obj, dict):
        return {k: numpyfied(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return tuple(numpyfied(v) for v in obj)
    if isinstance(obj, bool):
        return np.bool_(obj)
    if isinstance(obj, int) and abs(obj) < 2**62:
        return np.int64(obj)
    if isinstance(obj, float):
        return np.float64(obj)
    if isinstance(obj, str) and not obj.endswith("\x00"):  # np.str_ drops trailing NULs: another string
        return np.str_(obj)
    return obj


def same_stream(a: SearchSpace, b: SearchSpace, seed: int, n: int = 8) -> bool:
    return a.sample_many(n, np.random.default_rng(seed)) == b.sample_many(n, np.random.default_rng(seed))


# --- (a) spaces ---------------------------------------------------------------------------------
@FAST
@given(doc=space_docs(), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_space_round_trip_any_key_order_and_sorted_json(doc, data, seed):
    space = SearchSpace.from_dict(doc)
    for p in space.params:  # every parent before its children, in the declared order otherwise
        assert all(space.names.index(q) < space.names.index(p.name) for q in p.only_active_with)
    stored = space.to_dict()
    assert json.loads(json.dumps(stored)) == stored  # plain JSON
    for again in (
        SearchSpace.from_dict(shuffled(stored, data)),
        SearchSpace.from_dict(json.loads(json.dumps(shuffled(stored, data), sort_keys=True))),
        SearchSpace.from_dict(numpyfied(shuffled(stored, data))),
    ):
        assert again == space and again.names == space.names
        assert again.to_dict() == stored
        assert same_stream(again, space, seed)
    for c in space.sample_many(8, np.random.default_rng(seed)):
        space.validate(c)


@FAST
@given(doc=space_docs(), data=st.data())
def test_space_without_param_order_is_resolved_by_dependency(doc, data):
    """An old spec.json (no param_order, keys in any order) loads to the same parameters."""
    space = SearchSpace.from_dict(doc)
    stored = space.to_dict()
    del stored["param_order"]
    old = SearchSpace.from_dict(json.loads(json.dumps(shuffled(stored, data), sort_keys=True)))
    assert sorted(old.names) == sorted(space.names)
    assert {p.name: p for p in old.params} == {p.name: p for p in space.params}
    assert old.model_param == space.model_param


@pytest.mark.parametrize("name", ["cpu", "paper"])
@settings(max_examples=10, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_builtin_spaces_round_trip(name, data, seed):
    space = builtin_space(name)
    again = SearchSpace.from_dict(json.loads(json.dumps(shuffled(space.to_dict(), data), sort_keys=True)))
    assert again == space and same_stream(again, space, seed, n=20)


# --- (b) config ids -----------------------------------------------------------------------------
configs = st.dictionaries(names, scalars, min_size=1, max_size=6)


@FAST
@given(config=configs, data=st.data())
def test_config_id_key_order_and_numpy_scalars(config, data):
    cid = config_id(config)
    assert config_id(shuffled(config, data)) == cid
    assert config_id({k: numpyfied(v) for k, v in config.items()}) == cid
    assert config_id(json.loads(json.dumps(config, sort_keys=True))) == cid
    assert len(cid) == 12 and int(cid, 16) >= 0


@FAST
@given(config=configs, noise=st.lists(st.floats(-0.99e-10, 0.99e-10), min_size=6, max_size=6))
def test_config_id_ignores_float_noise_below_1e_10(config, noise):
    """Values written with up to 8 significant digits (every grid value) keep their id under
    relative noise below 1e-10 (arithmetic, a float formatted and parsed again)."""
    noisy = {
        k: (v * (1.0 + e) if isinstance(v, float) else v) for (k, v), e in zip(config.items(), noise, strict=False)
    }
    assert config_id(noisy) == config_id(config)


@FAST
@given(doc=space_docs(), seed=st.integers(0, 2**32 - 1))
def test_different_sampled_configs_get_different_ids(doc, seed):
    space = SearchSpace.from_dict(doc)
    sampled = [space.sample(np.random.default_rng([seed, i])) for i in range(12)]
    by_json = {json.dumps(c, sort_keys=True) for c in sampled}
    by_id = {config_id(c) for c in sampled}
    assert len(by_id) == len(by_json)


# --- (c) optimizer state ------------------------------------------------------------------------
SMALL_QUICKTUNE = dict(
    n_candidates=12, refit_steps=2, first_fit_steps=3, cost_steps=2, fit_cap=16, predict_cap=32, refresh_every=3
)
SMALL_SPACE = SearchSpace.from_dict(
    {
        "params": {
            "model": {"choices": ["tf_efficientnet_lite0", "resnet10t", "test_vit"]},
            "lr": {"choices": [0.0001, 0.001, 0.01]},
            "opt": {"choices": ["sgd", "adamw"]},
            "momentum": {"choices": [0.0, 0.9], "only_active_with": {"opt": ["sgd"]}},
            "data_augmentation": {"choices": ["none", "auto_augment"]},
            "auto_augment": {
                "choices": ["v0", "original"],
                "only_active_with": {"data_augmentation": ["auto_augment"]},
            },
            "batch_size": {"choices": [16, 32]},
        }
    },
    source="small",
)


class _MemoryClient:
    """Just the two MLflow client calls the optimizer-state slots use, kept in memory."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], str] = {}

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.files[(run_id, path)] = text

    def download_artifacts(self, run_id: str, path: str, dst: str) -> str:
        if (run_id, path) not in self.files:
            raise FileNotFoundError(path)
        out = Path(dst) / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.files[(run_id, path)])
        return str(out)


@pytest.fixture(scope="module")
def state_store():
    """The controller's real snapshot writer/reader (SearchTracker.save/load_optimizer_state) over
    an in-memory artifact store: the JSON encoding and the slot choice are the real ones. Built
    without SearchTracker.__init__, which imports MLflow (15 s on a busy CPU) for nothing here."""
    from quicktune.tracking.layout import SearchTracker
    from quicktune.tracking.retry import RetryPolicy

    tracker = SearchTracker.__new__(SearchTracker)
    tracker.tracking_uri, tracker.experiment_name, tracker.retry = "memory:", "roundtrips", RetryPolicy()
    tracker.client, tracker.calls, tracker.seconds = _MemoryClient(), 0, 0.0
    return tracker


def _optimizer(name: str, seed: int):
    options = SMALL_QUICKTUNE if name.startswith(("quicktune", "dyhpo")) else {}
    return make_optimizer(name, SMALL_SPACE, 4, seed=seed, **options)


def _drive(opt, actions: list[tuple[int, int, float]]) -> list[tuple[str, int]]:
    """Apply ``actions``: (0, _, _) asks; (1, k, score) tells the k-th pending step (status from
    the score's sign: negative scores report a failure status)."""
    pending: list[tuple[str, int]] = []
    for op, k, score in actions:
        if op == 0 or not pending:
            sug = opt.ask()
            if sug is not None:
                pending.append((sug.config_id, sug.epoch))
            continue
        cid, epoch = pending.pop(k % len(pending))
        status = "ok" if score >= 0 else STATUSES[1 + int(-score * 10) % (len(STATUSES) - 1)]
        opt.tell(cid, epoch, abs(score) if status == "ok" else float("nan"), 1.0 + abs(score), status)
    return pending


def _asks(opt, pending: list[tuple[str, int]], n: int = 3) -> list[tuple[str, int, dict]]:
    """The next ``n`` asks, each told back at once with a score that depends only on the ask."""
    out = []
    for _ in range(n):
        sug = opt.ask()
        if sug is None:
            out.append(None)
            continue
        out.append((sug.config_id, sug.epoch, dict(sug.config)))
        score = (int(sug.config_id[:4], 16) % 97) / 100.0
        opt.tell(sug.config_id, sug.epoch, score, 2.0, "ok")
    for cid, epoch in pending:  # results that were in flight at the snapshot arrive after it
        opt.tell(cid, epoch, 0.5, 1.0, "ok")
    sug = opt.ask()
    out.append(sug and (sug.config_id, sug.epoch))
    return out


actions = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5), st.floats(-1.0, 1.0)), max_size=12)


@pytest.mark.parametrize("name", available())
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), steps=actions)
def test_optimizer_state_round_trip_gives_the_same_next_asks(name, seed, steps, state_store):
    opt = _optimizer(name, seed)
    pending = _drive(opt, steps)
    run_id = uuid.uuid4().hex
    payload = {
        "seq": len(steps),
        "optimizer": name,
        "inflight": sorted([c, e] for c, e in pending),
        "state": opt.state_dict(),
    }
    state_store.save_optimizer_state(run_id, 1, payload)
    state_store.save_optimizer_state(run_id, 2, payload)  # both slots written; the newest is read
    snap = state_store.load_optimizer_state(run_id)
    assert snap["generation"] == 2 and snap["inflight"] == payload["inflight"]
    restored = _optimizer(name, seed)
    restored.load_state_dict(snap["state"])
    assert _asks(restored, pending) == _asks(opt, pending)


# --- (d) the search spec, as the controller writes and reads it ---------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("ref", ["builtin:cpu", "builtin:paper"])
def test_controller_reloads_the_space_it_stored(ref, tiny_image_folder, tmp_path):
    """A new search stores its spec (spec.json); a second session on the same search id (a
    resume) reads the space back from it: the same space, same order, same stream. The same
    with spec.json rewritten with sorted keys (as tracking/layout.py wrote it until issue 12),
    and with a spec.json of the old format (sorted, no param_order): it still resumes."""
    from quicktune.backends.local import LocalBackend
    from quicktune.search import SearchSession as _Search, SearchSpec
    from quicktune.tracking.layout import SearchTracker

    tracker = SearchTracker(
        f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="spec", artifact_location=str(tmp_path / "artifacts")
    )
    spec = SearchSpec(
        data_uri=str(tiny_image_folder),
        budget_seconds=60,
        space=ref,
        optimizer="random",
        search_id=f"rt-{uuid.uuid4().hex[:8]}",
        workdir=str(tmp_path / "work"),
        max_epochs=2,
    )

    def session() -> _Search:
        s = _Search(spec, LocalBackend(spec.workdir, fork_server=False), tracker, None, progress=False)
        s.open()
        return s

    first = session()
    assert first.space == load_space(ref)
    run_id = first.parent.run_id
    stored = tracker.spec(run_id)
    for text in (None, json.dumps(stored, indent=2, sort_keys=True)):
        if text is not None:
            tracker.client.log_text(run_id, text, "spec.json")
        again = session()
        assert again.parent.run_id == run_id and again.parent.resumed
        assert again.space == first.space and again.space.names == first.space.names
        assert same_stream(again.space, first.space, seed=0, n=30)

    old = dict(stored, space_def={k: v for k, v in stored["space_def"].items() if k != "param_order"})
    tracker.client.log_text(run_id, json.dumps(old, indent=2, sort_keys=True), "spec.json")
    third = session()
    assert sorted(third.space.names) == sorted(first.space.names)
    for c in third.space.sample_many(30, np.random.default_rng(0)):
        first.space.validate(c)
