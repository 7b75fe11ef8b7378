"""What a meta-trained method may see when the benchmark holds something out of meta-training.

Leave-one-dataset-out (``loo``, the benchmark's default) hides the evaluated task, but class subsets of
the same source (``digits-c01234`` beside ``digits``) stay in meta-training: their curves are near
copies, so ``loo`` flatters meta-learning. Two stricter protocols answer other questions:

- **leave-one-source-out** (``loso``): for each source ``s`` (a task name's packaged dataset,
  ``fashion-mnist-c02346`` -> ``fashion-mnist``), meta-train once without every task of ``s`` and
  search on each task of ``s``. No sibling of the evaluated task is seen.
- **leave-one-model-out** (``lomo``): for each model ``m`` of the table, meta-train once without every
  curve of ``m`` (on all tasks) and search on every task whose configs include ``m``. The search's
  pool is the task's *whole* set of configs, ``m``'s included: the question is whether the optimizer
  can judge, find (or avoid) a model it never saw, from what the model encoding says about it (a
  descriptor places ``m`` near the models it resembles; a one-hot encoding gives it all zeros). The
  evaluated task's curves of the *other* models stay in meta-training, so ``lomo`` measures a new
  model on known tasks, not a new task; ``loso`` measures a new task.

The source of a task follows ``quicktune.metadataset.info.source_of`` (the layers keep the benchmark
from importing the meta-dataset package): the longest packaged dataset name the task name equals or
starts with followed by ``-``; else the name without its campaign suffixes (``-c<classes>``,
``-<size>px``), so a foreign table's ``alpha-c01`` and ``alpha-c23`` share the source ``alpha``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

#: ``--meta-train`` modes: leave-one-dataset-out, leave-one-model-out, leave-one-source-out, no meta-training
META_TRAIN_MODES = ("loo", "lomo", "loso", "none")
#: what each held-out mode holds out (the ``held_out_kind`` of its run records)
HELD_OUT_KIND = {"loo": "dataset", "lomo": "model", "loso": "source"}
#: the table column that names a config's model
MODEL_COLUMN = "hp.model"

#: in-process cache of held-out meta-trainings: (table id, mode, unit, encoding, options) -> artifact
_ARTIFACTS: dict[tuple[str, str, str, str, str], Any] = {}

_SUFFIX = re.compile(r"(-c\d+|-\d+px)+$")


def packaged_sources() -> list[str]:
    """Names of the packaged datasets (the sources of the meta-dataset's tasks); [] when unavailable."""
    try:
        from quicktune.data.packaged import LOADERS
    except ImportError:  # pragma: no cover - the data package is part of the install
        return []
    return list(LOADERS)


def source_of(task: str, known: Iterable[str] = ()) -> str:
    """The source a task was made from: the longest name of ``known`` that ``task`` equals or starts
    with followed by ``-``; else ``task`` without trailing ``-c<digits>`` / ``-<n>px`` suffixes."""
    best = ""
    for name in known:
        if (task == name or task.startswith(name + "-")) and len(name) > len(best):
            best = name
    return best or (_SUFFIX.sub("", task) or task)


def task_sources(tasks: Iterable[str], sources: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{task: source}``: from ``sources`` where it names the task, else :func:`source_of` with the
    packaged dataset names."""
    known = packaged_sources()
    given = dict(sources or {})
    return {str(t): str(given.get(str(t)) or source_of(str(t), known)) for t in tasks}


def held_out_units(
    table: pd.DataFrame, mode: str, tasks: Iterable[str] | None = None, sources: Mapping[str, str] | None = None
) -> dict[str, list[str]]:
    """``{held-out unit: [tasks to search on]}`` for ``mode``, in sorted order. ``tasks`` restricts the
    searched tasks (meta-training still uses every task the mode allows).

    - ``loo``: each task is its own unit;
    - ``lomo``: each model of the table -> the tasks whose configs include it;
    - ``loso``: each source -> its tasks."""
    if mode not in HELD_OUT_KIND:
        raise ValueError(f"no held-out units for meta_train={mode!r} (choose from {', '.join(HELD_OUT_KIND)})")
    all_tasks = sorted(str(t) for t in table["dataset"].unique())
    chosen = set(all_tasks if tasks is None else (str(t) for t in tasks))
    out: dict[str, list[str]] = {}
    if mode == "loo":
        return {t: [t] for t in all_tasks if t in chosen}
    if mode == "lomo":
        if MODEL_COLUMN not in table.columns:
            raise ValueError(f"--meta-train lomo needs a model column ({MODEL_COLUMN}) in the table")
        firsts = table.drop_duplicates(["dataset", "config_id"])
        firsts = firsts[firsts[MODEL_COLUMN].notna()]
        for m, g in firsts.groupby(firsts[MODEL_COLUMN].astype(str), sort=True):
            ts = sorted(t for t in {str(x) for x in g["dataset"]} if t in chosen)
            if ts:
                out[str(m)] = ts
        return out
    src = task_sources(all_tasks, sources)
    for t in all_tasks:
        if t in chosen:
            out.setdefault(src[t], []).append(t)
    return dict(sorted(out.items()))


def training_table(
    table: pd.DataFrame, mode: str, unit: str, sources: Mapping[str, str] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """``(table, exclude)`` to meta-train on when ``unit`` is held out under ``mode``: ``lomo`` drops
    every row of model ``unit``; ``loo`` excludes the task ``unit``; ``loso`` every task of source
    ``unit`` (``exclude`` goes to ``meta_train(..., exclude=...)`` and is recorded in the artifact)."""
    if mode == "lomo":
        keep = table[MODEL_COLUMN].isna() | (table[MODEL_COLUMN].astype(str) != unit)
        return table[keep], []
    if mode == "loo":
        return table, [unit]
    if mode == "loso":
        src = task_sources(table["dataset"].unique(), sources)
        return table, sorted(t for t, s in src.items() if s == unit)
    raise ValueError(f"nothing is held out under meta_train={mode!r}")


def check_held_out(
    table: pd.DataFrame,
    mode: str,
    units: Mapping[str, list[str]],
    meta_trained: bool,
    sources: Mapping[str, str] | None = None,
) -> None:
    """Raise ValueError when ``mode`` leaves a meta-trained method nothing to meta-train on or nothing
    to search."""
    if not units:
        raise ValueError(f"--meta-train {mode}: no task to search on")
    if not meta_trained:
        return
    if mode == "lomo":
        n_models = table[MODEL_COLUMN].dropna().astype(str).nunique()
        if n_models < 2:
            raise ValueError("--meta-train lomo needs at least two models in the table")
    elif mode == "loso" and len(set(task_sources(table["dataset"].unique(), sources).values())) < 2:
        raise ValueError("--meta-train loso needs at least two sources in the table")
    elif mode == "loo" and table["dataset"].nunique() < 2:
        raise ValueError("--meta-train loo needs at least two datasets in the table")


#: the training resolution the descriptors of a table's models are computed at (px): the project's
#: meta-dataset is trained at 32 px; a table of another resolution only shifts every model's log GMACs
TABLE_IMAGE_SIZE = 32


def table_descriptors(configs: Any) -> dict[str, dict[str, float]]:
    """Descriptor features of the models the configs (or table rows, ``hp.model``) name, for those the hub
    knows (made-up model names of a foreign table are left out: the optimizer encodes them one-hot)."""
    from quicktune.hub import known_descriptor_features

    names = {str(c.get("model", c.get("hp.model"))) for c in configs if c.get("model", c.get("hp.model")) is not None}
    return known_descriptor_features(sorted(names), TABLE_IMAGE_SIZE)


def held_out_artifact(
    table: pd.DataFrame,
    mode: str,
    unit: str,
    encoding: str = "descriptor",
    options: Mapping[str, Any] | None = None,
    sources: Mapping[str, str] | None = None,
    table_id: str = "",
) -> Any:
    """The artifact meta-trained with ``unit`` held out under ``mode`` (``loo``: a dataset, ``lomo``:
    a model, ``loso``: a source) and models encoded by ``encoding``; cached in the process under
    ``table_id`` (pass the table's hash, or any name unique to the table)."""
    from quicktune.optimizer import metatrain

    opts = {k: v for k, v in (options or {}).items() if k != "model_encoding"}
    extra = {"sources": dict(sources or {})} if mode == "loso" else {}
    key = (table_id or str(id(table)), mode, unit, encoding, json.dumps({**opts, **extra}, sort_keys=True, default=str))
    if key not in _ARTIFACTS:
        train, exclude = training_table(table, mode, unit, sources)
        t0 = time.perf_counter()
        _ARTIFACTS[key] = metatrain.meta_train(
            train,
            exclude=exclude,
            model_descriptors=table_descriptors(table.drop_duplicates("config_id").to_dict("records")),
            image_size=TABLE_IMAGE_SIZE,
            model_encoding=encoding,
            **opts,
        )
        log.info("meta-trained (%s, %s held out, %s) in %.1f s", mode, unit, encoding, time.perf_counter() - t0)
    return _ARTIFACTS[key]
