"""Run datasets x optimizers x seeds on a learning-curve table and write the results.

For every dataset the budget is ``budget_multiple`` times the median cost of one full curve of
that dataset. Every optimizer gets the dataset's configs as its finite candidate pool, the
table's maximum epoch as ``max_epochs``, the dataset's meta-features (``meta_features=``) and the
lowest score of the dataset's table (``worst_score=``: what ASHA and the Syne Tune peers report a
NaN epoch as, the protocol of driving them directly).

The meta-trained methods (``quicktune``, ``quicktune-nocost``, ``quicktune-onehot``) start from an
artifact meta-trained on what ``meta_train`` leaves them (``quicktune.bench.heldout``):

- ``"loo"``: the *other* datasets of the table (``meta_train(table, exclude=[dataset])``);
- ``"lomo"``: for each model m of the table, every curve except m's (all tasks), searched on each
  task whose pool contains m; the pool is the task's whole set of configs, m's included;
- ``"loso"``: for each source (class subsets of one dataset count as one source), every task of the
  other sources, searched on each task of the source;
- ``"none"``: no artifact (the registry's default one, if the method loads one).

Each meta-training is done once per held-out unit and model encoding and cached in the process
(``_ARTIFACTS``), shared by the unit's tasks, seeds and methods. ``quicktune-onehot`` is
``quicktune`` whose artifact encodes models one-hot (``meta_train(model_encoding="onehot")``: a
model it never saw encodes as all zeros) instead of by descriptor. Under ``lomo`` / ``loso`` a run
record names its held-out unit (``held_out``, ``held_out_kind``) and the summaries treat
(unit, dataset) as the problem; a method that is not meta-trained does not depend on the unit, so
its run on (dataset, seed) is simulated once per process and attributed to every unit.

Each run is written to ``OUT/runs/[<unit>__]<dataset>__<optimizer>__s<seed>.json`` as soon as it
finishes; with ``resume=True`` a run whose file exists with identical settings is not repeated, so
an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd

from quicktune.bench.heldout import (  # noqa: F401  (TABLE_IMAGE_SIZE, table_descriptors: used by benchmarks/)
    HELD_OUT_KIND,
    META_TRAIN_MODES,
    TABLE_IMAGE_SIZE,
    check_held_out,
    held_out_artifact,
    held_out_units,
    table_descriptors,
)
from quicktune.bench.regret import regret_at, regret_trajectory
from quicktune.bench.simulator import DatasetCurves, make_candidates, simulate
from quicktune.bench.summary import write_summary
from quicktune.optimizer import registry

log = logging.getLogger(__name__)

META_TRAINED = ("quicktune", "quicktune-nocost", "quicktune-onehot")
TORCH_BASED = ("quicktune", "quicktune-nometa", "quicktune-nocost", "quicktune-onehot", "dyhpo")
#: the model encoding each meta-trained method's artifact uses (others: the meta-training options' or "descriptor")
MODEL_ENCODING = {"quicktune-onehot": "onehot"}

# quicktune meta-trained with a one-hot model encoding: the ablation of the descriptor encoding
registry.register("quicktune-onehot", "quicktune.optimizer.quicktune:QuickTune", meta=True, cost_aware=True)

#: in-process cache of the runs of methods that do not depend on the held-out unit
_UNIT_FREE_RUNS: dict[tuple[str, str, str, int], dict[str, Any]] = {}


def _ensure_peers_registered() -> None:
    try:
        from quicktune.bench import peers  # noqa: F401  (registers peer optimizers on import)
    except ImportError as exc:  # pragma: no cover - peers are optional
        log.debug("peers not registered: %s", exc)


def is_meta_trained(name: str) -> bool:
    """Does ``name`` start from meta-trained weights (meta-learning switched on)?"""
    fixed = getattr(registry, "_REGISTRY", {}).get(name, (None, {}))[1]
    return name in META_TRAINED or bool(fixed.get("meta", False))


def check_optimizers(names: Sequence[str]) -> None:
    """Raise ValueError naming every unknown or unavailable optimizer (e.g. a peer whose library
    is not installed), before any run starts."""
    _ensure_peers_registered()
    if not names:
        raise ValueError("no optimizer given (use --optimizer NAME, repeatable)")
    problems = []
    for n in names:
        if n not in registry.available():
            problems.append(f"unknown optimizer {n!r} (choose from {', '.join(registry.available())})")
            continue
        try:
            from quicktune.bench.peers import unavailable_reason
        except ImportError:  # pragma: no cover
            continue
        why = unavailable_reason(n)
        if why:
            problems.append(f"optimizer {n!r} is unavailable: {why}")
    if problems:
        raise ValueError("; ".join(problems))


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def run_path(out_dir: Path, dataset: str, optimizer: str, seed: int, held_out: str | None = None) -> Path:
    unit = f"{_safe(held_out)}__" if held_out is not None else ""
    return out_dir / "runs" / f"{unit}{_safe(dataset)}__{_safe(optimizer)}__s{seed}.json"


def run_one(
    curves: DatasetCurves,
    optimizer: str,
    seed: int,
    budget: float,
    workers: int = 1,
    artifact: Any = None,
    overhead_clock: str = "wall",
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Simulate one (dataset, optimizer, seed) and return its run record."""
    # worst_score: what a NaN epoch is reported as by the methods that report it (ASHA, the Syne
    # Tune peers), as when a library is driven directly on the table; the others ignore it
    opts: dict[str, Any] = {
        "meta_features": dict(curves.meta_features),
        "worst_score": curves.worst,
        **(options or {}),
    }
    if artifact is not None:
        opts["artifact"] = artifact
    if registry.uses_model_descriptors(optimizer):
        opts.setdefault("model_descriptors", table_descriptors([c for _, c in curves.configs]))
    t0 = time.perf_counter()
    opt = registry.make_optimizer(optimizer, make_candidates(curves), curves.max_epochs, seed=seed, **opts)
    res = simulate(curves, opt, budget, workers=workers, overhead_clock=overhead_clock)
    at_budget = {}
    for clock in ("time", "table_time"):
        t, r = regret_trajectory(getattr(res, clock), res.score, curves.best, curves.worst)
        at_budget[clock] = float(regret_at(t, r, [budget])[0])
    traj = res.to_dict()
    n = len(res.time)
    close = getattr(opt, "close", None)
    if callable(close):
        close()
    domain = getattr(opt, "domain", None)
    return {
        "dataset": curves.dataset,
        "optimizer": optimizer,
        "seed": int(seed),
        "budget": float(budget),
        "best": curves.best,
        "worst": curves.worst,
        "max_epochs": curves.max_epochs,
        "n_configs": len(curves.configs),
        "workers": int(workers),
        "trajectory": {
            k: traj[k] for k in ("time", "table_time", "config_id", "epoch", "score", "status", "cost", "overhead")
        },
        "overhead_total": res.overhead_total,
        "overhead_median": float(pd.Series(res.overhead).median()) if n else 0.0,
        "n_steps": n,
        "n_invalid": res.n_invalid,
        "stop_reason": res.stop_reason,
        "final_regret": at_budget["time"],  # at the budget, clock with overhead
        "final_regret_table_clock": at_budget["table_time"],
        "wall_seconds": time.perf_counter() - t0,
        "domain_score": float(domain.score) if domain is not None else None,
        "domain_model_score": float(domain.model_score) if domain is not None else None,
    }


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _run_dataset(
    table: pd.DataFrame,
    dataset: str,
    optimizers: Sequence[str],
    seeds: Sequence[int],
    budget_multiple: float,
    out_dir: str,
    meta_train: str,
    workers: int,
    overhead_clock: str,
    settings: Mapping[str, Any],
    resume: bool,
    meta_train_options: Mapping[str, Any] | None = None,
    stop_at: float | None = None,
    on_run: Callable[[dict], None] | None = None,
    held_out: str | None = None,
    sources: Mapping[str, str] | None = None,
    table_id: str = "",
) -> list[dict[str, Any]]:
    """All optimizers x seeds on one dataset (one process); ``held_out``: the unit held out of
    meta-training (``lomo``: a model, ``loso``: a source; ``loo``: the dataset itself)."""
    _ensure_peers_registered()
    if any(n in TORCH_BASED for n in optimizers):
        import torch

        torch.set_num_threads(1)
    out = Path(out_dir)
    curves = DatasetCurves.from_table(table, dataset)
    budget = budget_multiple * curves.median_curve_cost()
    unit = held_out if meta_train in ("lomo", "loso") else None
    opts = dict(meta_train_options or {})
    records: list[dict[str, Any]] = []
    # seeds outer: if the benchmark is stopped early, every finished seed has every optimizer
    for seed in seeds:
        for name in optimizers:
            if stop_at is not None and time.time() >= stop_at:
                log.warning("deadline reached: %s stops before %s seed %d", dataset, name, seed)
                return records
            path = run_path(out, dataset, name, seed, unit)
            if resume and path.exists():
                try:
                    rec = json.loads(path.read_text())
                    if rec.get("settings") == dict(settings):
                        records.append(rec)
                        if on_run:
                            on_run(rec)
                        continue
                except (json.JSONDecodeError, OSError):
                    pass
            meta = is_meta_trained(name)
            encoding = MODEL_ENCODING.get(name, str(opts.get("model_encoding", "descriptor")))
            shared_key = (json.dumps(dict(settings), sort_keys=True, default=str), dataset, name, int(seed))
            if unit is not None and not meta and shared_key in _UNIT_FREE_RUNS:
                rec = copy.deepcopy(_UNIT_FREE_RUNS[shared_key])
            else:
                art = None
                if meta and meta_train != "none":
                    art = held_out_artifact(
                        table, meta_train, held_out or dataset, encoding, opts, sources, table_id=table_id
                    )
                rec = run_one(curves, name, seed, budget, workers=workers, artifact=art, overhead_clock=overhead_clock)
                if unit is not None and not meta:
                    _UNIT_FREE_RUNS[shared_key] = copy.deepcopy(rec)
            rec["settings"] = dict(settings)
            rec["budget_multiple"] = float(budget_multiple)
            rec["meta_train"] = meta_train if meta else "none"
            rec["model_encoding"] = encoding if meta and meta_train != "none" else None
            if unit is not None:
                rec["held_out"] = unit
                rec["held_out_kind"] = HELD_OUT_KIND[meta_train]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(rec, default=_json_default))
            os.replace(tmp, path)
            records.append(rec)
            if on_run:
                on_run(rec)
    return records


def _run_unit(
    table: pd.DataFrame,
    unit: str,
    tasks: Sequence[str],
    *args: Any,
    on_run: Callable[[dict], None] | None = None,
    sources: Mapping[str, str] | None = None,
    table_id: str = "",
) -> list[dict[str, Any]]:
    """Every task searched with ``unit`` held out, in one process (one meta-training per encoding)."""
    records: list[dict[str, Any]] = []
    run: Any = _run_dataset  # args: the positional settings of _run_dataset after the dataset
    for ds in tasks:
        records += run(table, ds, *args, on_run=on_run, held_out=unit, sources=sources, table_id=table_id)
    return records


def run_benchmark(
    table: pd.DataFrame | str | Path,
    optimizers: Sequence[str],
    seeds: int | Sequence[int],
    budget_multiple: float,
    out_dir: str | Path,
    meta_train: str = "loo",
    datasets: Sequence[str] | None = None,
    workers: int = 1,
    jobs: int = 1,
    overhead_clock: str = "wall",
    resume: bool = True,
    title: str = "",
    plots: bool = True,
    meta_train_options: Mapping[str, Any] | None = None,
    stop_at: float | None = None,
    on_run: Callable[[dict], None] | None = None,
    sources: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run the benchmark and write ``out_dir/{summary.json, summary_table_clock.json, results.md,
    regret.png, rank.png, runs/*.json}``; returns the summary (overhead-inclusive clock).

    ``meta_train``: ``"loo"``, ``"lomo"``, ``"loso"`` or ``"none"`` (module docstring).
    ``datasets``: the tasks searched (default all; under ``lomo`` / ``loso`` meta-training still
    uses every task the mode allows). ``sources``: ``{task: source}`` overriding the source read
    from a task's name (``loso``).
    ``jobs > 1`` runs datasets (``lomo`` / ``loso``: held-out units) in separate processes (each
    meta-trains its own artifacts). ``on_run`` is called with each finished run record (in the
    parent process). ``meta_train_options`` are passed to ``meta_train`` (e.g. ``{"epochs": 5}`` for a
    quick demo). ``stop_at`` (a ``time.time()`` deadline): no run starts after it; runs go seed by
    seed, so the summary then covers the seeds that finished (ranks only use complete groups).
    """
    from quicktune.lct import load_lct, table_hash

    if meta_train not in META_TRAIN_MODES:
        raise ValueError(f"meta_train must be one of {', '.join(META_TRAIN_MODES)}, got {meta_train!r}")
    if not budget_multiple > 0:
        raise ValueError(f"budget multiple must be > 0, got {budget_multiple}")
    check_optimizers(optimizers)
    if not isinstance(table, pd.DataFrame):
        table = load_lct(table)
    all_ds = sorted(table["dataset"].unique().tolist())
    if datasets:
        missing = [d for d in datasets if d not in all_ds]
        if missing:
            raise ValueError(f"datasets not in the table: {missing} (have {all_ds})")
        chosen = list(datasets)
    else:
        chosen = all_ds
    any_meta = any(is_meta_trained(n) for n in optimizers)
    units = held_out_units(table, meta_train, chosen, sources) if meta_train in HELD_OUT_KIND else {}
    if meta_train in HELD_OUT_KIND:
        check_held_out(table, meta_train, units, any_meta, sources)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    settings = {
        "budget_multiple": float(budget_multiple),
        "workers": int(workers),
        "meta_train": meta_train,
        "overhead_clock": overhead_clock,
        "n_rows": int(len(table)),
        "meta_train_options": dict(meta_train_options or {}),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    args = (
        list(optimizers),
        seed_list,
        float(budget_multiple),
        str(out),
        meta_train,
        int(workers),
        overhead_clock,
        settings,
        resume,
        dict(meta_train_options or {}),
        stop_at,
    )
    kw: dict[str, Any] = {"sources": dict(sources or {}), "table_id": table_hash(table) if any_meta else ""}
    # one work item per dataset (loo, none) or per held-out unit (lomo, loso: its tasks share its meta-training)
    items = list(units.items()) if meta_train in ("lomo", "loso") else [(ds, [ds]) for ds in chosen]
    records: list[dict[str, Any]] = []
    if jobs <= 1 or len(items) == 1:
        for unit, tasks in items:
            records += _run_unit(table, unit, tasks, *args, on_run=on_run, **kw)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futs = {pool.submit(_run_unit, table, unit, tasks, *args, **kw): unit for unit, tasks in items}
            for fut in as_completed(futs):
                recs = fut.result()
                records += recs
                if on_run:
                    for r in recs:
                        on_run(r)
    order = {n: i for i, n in enumerate(optimizers)}
    records.sort(key=lambda r: (order[r["optimizer"]], str(r.get("held_out", "")), r["dataset"], r["seed"]))
    return write_summary(records, out, title=title, plots=plots)
