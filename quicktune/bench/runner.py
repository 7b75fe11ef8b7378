"""Run datasets x optimizers x seeds on a learning-curve table and write the results.

For every dataset the budget is ``budget_multiple`` times the median cost of one full curve of
that dataset. Every optimizer gets the dataset's configs as its finite candidate pool, the
table's maximum epoch as ``max_epochs``, the dataset's meta-features (``meta_features=``), the
lowest score of the dataset's table (``worst_score=``: what ASHA and the Syne Tune peers report a
NaN epoch as, the protocol of driving them directly) and, for
meta-trained methods with ``meta_train="loo"``, an artifact meta-trained on the *other* datasets
of the table (``artifact=meta_train(table, exclude=[dataset])``, computed once per held-out
dataset and shared by its seeds and methods).

Each run is written to ``OUT/runs/<dataset>__<optimizer>__s<seed>.json`` as soon as it finishes;
with ``resume=True`` a run whose file exists with identical settings is not repeated, so an
interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

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

from quicktune.bench.regret import regret_at, regret_trajectory
from quicktune.bench.simulator import DatasetCurves, make_candidates, simulate
from quicktune.bench.summary import write_summary
from quicktune.optimizer import registry

log = logging.getLogger(__name__)

META_TRAINED = ("quicktune", "quicktune-nocost")
TORCH_BASED = ("quicktune", "quicktune-nometa", "quicktune-nocost", "dyhpo")


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


#: the training resolution the descriptors of a table's models are computed at (px): the project's
#: meta-dataset is trained at 32 px; a table of another resolution only shifts every model's log GMACs
TABLE_IMAGE_SIZE = 32


def table_descriptors(configs: Any) -> dict[str, dict[str, float]]:
    """Descriptor features of the models the configs (or table rows, ``hp.model``) name, for those the hub
    knows (made-up model names of a foreign table are left out: the optimizer encodes them one-hot)."""
    from quicktune.hub import known_descriptor_features

    names = {str(c.get("model", c.get("hp.model"))) for c in configs if c.get("model", c.get("hp.model")) is not None}
    return known_descriptor_features(sorted(names), TABLE_IMAGE_SIZE)


def run_path(out_dir: Path, dataset: str, optimizer: str, seed: int) -> Path:
    return out_dir / "runs" / f"{_safe(dataset)}__{_safe(optimizer)}__s{seed}.json"


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
) -> list[dict[str, Any]]:
    """All optimizers x seeds on one dataset (one process), meta-training at most once."""
    _ensure_peers_registered()
    if any(n in TORCH_BASED for n in optimizers):
        import torch

        torch.set_num_threads(1)
    out = Path(out_dir)
    curves = DatasetCurves.from_table(table, dataset)
    budget = budget_multiple * curves.median_curve_cost()
    artifact = None
    records = []
    # seeds outer: if the benchmark is stopped early, every finished seed has every optimizer
    for seed in seeds:
        for name in optimizers:
            if stop_at is not None and time.time() >= stop_at:
                log.warning("deadline reached: %s stops before %s seed %d", dataset, name, seed)
                return records
            path = run_path(out, dataset, name, seed)
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
            art = None
            if meta_train == "loo" and is_meta_trained(name):
                if artifact is None:
                    from quicktune.optimizer.metatrain import meta_train as _meta_train

                    t0 = time.perf_counter()
                    artifact = _meta_train(
                        table,
                        exclude=[dataset],
                        model_descriptors=table_descriptors(table.drop_duplicates("config_id").to_dict("records")),
                        image_size=TABLE_IMAGE_SIZE,
                        **dict(meta_train_options or {}),
                    )
                    log.info("meta-trained without %s in %.1f s", dataset, time.perf_counter() - t0)
                art = artifact
            rec = run_one(curves, name, seed, budget, workers=workers, artifact=art, overhead_clock=overhead_clock)
            rec["settings"] = dict(settings)
            rec["budget_multiple"] = float(budget_multiple)
            rec["meta_train"] = meta_train if is_meta_trained(name) else "none"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(rec, default=_json_default))
            os.replace(tmp, path)
            records.append(rec)
            if on_run:
                on_run(rec)
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
) -> dict[str, Any]:
    """Run the benchmark and write ``out_dir/{summary.json, summary_table_clock.json, results.md,
    regret.png, rank.png, runs/*.json}``; returns the summary (overhead-inclusive clock).

    ``jobs > 1`` runs datasets in separate processes (each meta-trains its own artifact).
    ``on_run`` is called with each finished run record (in the parent process).
    ``meta_train_options`` are passed to ``meta_train`` (e.g. ``{"epochs": 5}`` for a quick demo).
    ``stop_at`` (a ``time.time()`` deadline): no run starts after it; runs go seed by seed, so the
    summary then covers the seeds that finished (ranks only use complete (dataset, seed) groups).
    """
    from quicktune.lct import load_lct

    if meta_train not in ("loo", "none"):
        raise ValueError(f"meta_train must be 'loo' or 'none', got {meta_train!r}")
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
    if meta_train == "loo" and len(all_ds) < 2 and any(is_meta_trained(n) for n in optimizers):
        raise ValueError("--meta-train loo needs at least two datasets in the table")
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
    records: list[dict[str, Any]] = []
    if jobs <= 1 or len(chosen) == 1:
        for ds in chosen:
            records += _run_dataset(table, ds, *args, on_run=on_run)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futs = {pool.submit(_run_dataset, table, ds, *args): ds for ds in chosen}
            for fut in as_completed(futs):
                recs = fut.result()
                records += recs
                if on_run:
                    for r in recs:
                        on_run(r)
    order = {n: i for i, n in enumerate(optimizers)}
    records.sort(key=lambda r: (order[r["optimizer"]], r["dataset"], r["seed"]))
    return write_summary(records, out, title=title, plots=plots)
