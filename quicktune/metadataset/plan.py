"""A campaign's plan: tasks, the shared config pool, per-task assignments and the run order.

Why a module of its own: planning is pure bookkeeping over ``plan.json`` (no backend, no step,
no training), so it can be tested, inspected (``status``/``export``) and extended without a
trial backend. The run loop (:mod:`quicktune.metadataset.campaign`) and the result store
(:mod:`quicktune.metadataset.records`) read the plan through :class:`CampaignPlan`.

Sampling: one shared pool of configs (1.5 x N, drawn from a seeded stream), each dataset gets a
random N of them, so configs overlap partly across datasets (which helps meta-learning). The run
order is round-robin over datasets, so a partial campaign covers every task evenly. Extending a
campaign (more configs per dataset, more datasets) appends to the plan; nothing planned changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quicktune import storage
from quicktune.space import SearchSpace, config_id

PLAN_VERSION = 1
POOL_FACTOR = 1.5
#: packaged datasets kept out of the project's meta-dataset (they evaluate the shipped surrogate)
HELD_OUT = ("animal-mnist", "emoji")

_OPTION_RE = re.compile(r":(classes|max_per_class|size|name)=([^:]*)$")


class CampaignError(ValueError):
    """The campaign cannot run as asked (bad dataset spec, plan mismatch); the message says what."""


# --------------------------------------------------------------------------------------------
# Dataset specs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """One task of the campaign: a packaged dataset (optionally a class subset) or a path/URI."""

    task: str  # the ``dataset`` value in the table
    source: str  # packaged name, or a folder / s3:// URI
    packaged: bool
    classes: tuple[int, ...] | None = None
    max_per_class: int | None = None
    #: this task's image size in px (the step's ``--image-size``, and the size the packaged images
    #: are written at); None = the plan's. Lets one campaign measure several resolutions.
    image_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes) if self.classes is not None else None
        if d["image_size"] is None:  # plans written before per-task sizes stay byte-identical
            del d["image_size"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetSpec:
        return cls(
            task=str(d["task"]),
            source=str(d["source"]),
            packaged=bool(d["packaged"]),
            classes=tuple(int(c) for c in d["classes"]) if d.get("classes") is not None else None,
            max_per_class=int(d["max_per_class"]) if d.get("max_per_class") is not None else None,
            image_size=int(d["image_size"]) if d.get("image_size") is not None else None,
        )


def _packaged_names() -> list[str]:
    from quicktune.data.packaged import LOADERS

    return sorted(LOADERS)


def parse_dataset_spec(text: str) -> DatasetSpec:
    """``NAME[:classes=0,2,3][:max_per_class=60][:size=64][:name=TASK]`` for a packaged dataset, or
    ``PATH_OR_URI[:size=64][:name=TASK]`` for an image folder / ``s3://`` prefix.

    The task name defaults to NAME (``-c`` + the class indices for a subset, e.g. ``digits-c01234``)
    or to the folder's base name, plus ``-<size>px`` when ``size`` is given (``digits-c01234-64px``)."""
    raw = text.strip()
    if not raw:
        raise CampaignError("empty dataset spec")
    opts: dict[str, str] = {}
    rest = raw
    while True:
        m = _OPTION_RE.search(rest)
        if not m:
            break
        if m.group(1) in opts:
            raise CampaignError(f"dataset spec {text!r}: option {m.group(1)!r} given twice")
        opts[m.group(1)] = m.group(2)
        rest = rest[: m.start()]
    if not rest:
        raise CampaignError(f"dataset spec {text!r}: no dataset name or path")
    names = _packaged_names()
    packaged = rest in names
    if not packaged and ":" in rest and not storage.is_s3(rest):
        raise CampaignError(
            f"dataset spec {text!r}: unknown option in {rest!r} (options: classes=, max_per_class=, size=, name=)"
        )
    if not packaged and not (storage.is_s3(rest) or "/" in rest or os.path.isdir(rest)):
        raise CampaignError(
            f"dataset spec {text!r}: {rest!r} is neither a packaged dataset ({', '.join(names)}) "
            f"nor an existing folder / s3:// URI"
        )
    classes: tuple[int, ...] | None = None
    max_per_class: int | None = None
    if "classes" in opts:
        if not packaged:
            raise CampaignError(f"dataset spec {text!r}: classes= only applies to packaged datasets")
        try:
            classes = tuple(int(c) for c in opts["classes"].split(",") if c.strip())
        except ValueError:
            raise CampaignError(f"dataset spec {text!r}: classes must be comma-separated integers") from None
        if len(set(classes)) < 2:
            raise CampaignError(f"dataset spec {text!r}: a class subset needs at least 2 distinct classes")
    if "max_per_class" in opts:
        if not packaged:
            raise CampaignError(f"dataset spec {text!r}: max_per_class= only applies to packaged datasets")
        try:
            max_per_class = int(opts["max_per_class"])
        except ValueError:
            raise CampaignError(f"dataset spec {text!r}: max_per_class must be an integer") from None
        if max_per_class < 1:
            raise CampaignError(f"dataset spec {text!r}: max_per_class must be >= 1")
    image_size: int | None = None
    if "size" in opts:
        try:
            image_size = int(opts["size"])
        except ValueError:
            raise CampaignError(f"dataset spec {text!r}: size must be an integer (pixels)") from None
        if not 8 <= image_size <= 1024:
            raise CampaignError(f"dataset spec {text!r}: size must be 8..1024 px, got {image_size}")
    if "name" in opts:
        task = opts["name"]
    elif packaged:
        task = rest
        if classes is not None:
            sep = "" if all(c < 10 for c in classes) else "-"
            task += "-c" + sep.join(str(c) for c in classes)
    else:
        task = rest.rstrip("/").rsplit("/", 1)[-1]
    if image_size is not None and "name" not in opts:
        task += f"-{image_size}px"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", task):
        raise CampaignError(f"dataset spec {text!r}: task name {task!r} must be 1-63 letters, digits, '.', '_' or '-'")
    return DatasetSpec(
        task=task,
        source=rest,
        packaged=packaged,
        classes=classes,
        max_per_class=max_per_class,
        image_size=image_size,
    )


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
def _stable_int(*parts: Any) -> int:
    return int(hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:12], 16)


def _pool_stream(space: SearchSpace, seed: int, start: int, have: set[str], n: int) -> list[tuple[int, dict[str, Any]]]:
    """``n`` new distinct configs from the deterministic stream (draw ``k`` uses rng seed (seed, k))."""
    out: list[tuple[int, dict[str, Any]]] = []
    k = start
    tries = 0
    while len(out) < n:
        cfg = space.sample(np.random.default_rng([seed, 7919, k]))
        k += 1
        tries += 1
        cid = config_id(cfg)
        if cid not in have:
            have.add(cid)
            out.append((k, cfg))
        if tries > 50 * n + 1000:  # a small space: fewer distinct configs than asked for
            break
    return out


def make_or_extend_plan(
    workdir: Path,
    specs: Sequence[DatasetSpec],
    configs: int,
    epochs: int,
    seed: int,
    space: SearchSpace,
    space_ref: str,
    image_size: int | None,
) -> dict[str, Any]:
    """Create ``workdir/plan.json`` or extend it (new datasets, more configs per dataset).

    A plan's seed, epochs, image size and space are fixed once made; asking for different ones is
    an error (start a new workdir instead). Existing assignments and run order never change."""
    path = workdir / "plan.json"
    if path.exists():
        plan = json.loads(path.read_text())
        for key, want in (("seed", seed), ("epochs", epochs), ("image_size", image_size)):
            if plan[key] != want:
                raise CampaignError(
                    f"{path}: the campaign was planned with {key}={plan[key]!r}, asked for {want!r}; "
                    f"use the same value or a new --workdir"
                )
        if SearchSpace.from_dict(plan["space"], source=str(path)) != space:  # as spaces: older plans lack param_order
            raise CampaignError(
                f"{path}: the campaign was planned with space {plan['space_ref']!r}, "
                f"asked for {space_ref!r} (different parameters); use a new --workdir"
            )
    else:
        plan = {
            "version": PLAN_VERSION,
            "seed": seed,
            "epochs": epochs,
            "image_size": image_size,
            "space_ref": space_ref,
            "space": space.to_dict(),
            "configs_per_dataset": 0,
            "datasets": [],
            "pool": [],
            "pool_draws": 0,
            "assignments": {},
            "order": [],
            "created_at": time.time(),
        }
    known = {d["task"]: DatasetSpec.from_dict(d) for d in plan["datasets"]}
    for s in specs:
        if s.task in known and known[s.task] != s:
            raise CampaignError(
                f"{path}: task {s.task!r} is already planned as {known[s.task].to_dict()}, "
                f"asked for {s.to_dict()}; give the new one another name (:name=...)"
            )
        if s.task not in known:
            known[s.task] = s
            plan["datasets"].append(s.to_dict())
    seen_tasks = [s.task for s in specs]
    dup = {t for t in seen_tasks if seen_tasks.count(t) > 1}
    if dup:
        raise CampaignError(f"dataset specs name the same task twice: {sorted(dup)} (use :name=...)")

    n_target = max(int(configs), int(plan["configs_per_dataset"]))
    pool_target = int(math.ceil(POOL_FACTOR * n_target))
    pool_ids = [p["config_id"] for p in plan["pool"]]
    if len(pool_ids) < pool_target:
        have = set(pool_ids)
        for k, cfg in _pool_stream(space, seed, int(plan["pool_draws"]), have, pool_target - len(pool_ids)):
            plan["pool"].append({"config_id": config_id(cfg), "config": cfg})
            plan["pool_draws"] = k
        pool_ids = [p["config_id"] for p in plan["pool"]]
    if len(pool_ids) < n_target:
        raise CampaignError(
            f"space {space.name!r} has only {len(pool_ids)} distinct configs; cannot assign {n_target} per dataset"
        )
    new_per_task: dict[str, list[str]] = {}
    for d in plan["datasets"]:
        task = d["task"]
        assigned = plan["assignments"].setdefault(task, [])
        need = n_target - len(assigned)
        if need <= 0:
            continue
        rng = np.random.default_rng([seed, _stable_int(task), len(assigned)])
        free = [c for c in pool_ids if c not in set(assigned)]
        pick = [free[i] for i in rng.permutation(len(free))[:need]]
        assigned.extend(pick)
        new_per_task[task] = pick
    longest = max((len(v) for v in new_per_task.values()), default=0)
    for i in range(longest):
        for d in plan["datasets"]:
            lst = new_per_task.get(d["task"], [])
            if i < len(lst):
                plan["order"].append([d["task"], lst[i]])
    plan["configs_per_dataset"] = n_target
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".plan.json.tmp")
    tmp.write_text(json.dumps(plan, indent=1))  # no sort_keys: parameter order matters
    os.replace(tmp, path)
    return plan


def load_plan(workdir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(workdir) / "plan.json"
    if not path.exists():
        raise CampaignError(f"{path}: no campaign plan here (run build with --datasets first)")
    return json.loads(path.read_text())


def campaign_id(plan: Mapping[str, Any]) -> str:
    """The campaign's id (``mds-`` + 8 hex digits of seed and creation time): the prefix of its
    step ids, so that a restarted campaign finds its own running steps and nobody else's."""
    return "mds-" + hashlib.sha1(f"{plan['seed']}/{plan['created_at']}".encode()).hexdigest()[:8]


class CampaignPlan:
    """A loaded ``plan.json`` with the views the run loop and the result store need (read-only:
    only :func:`make_or_extend_plan` writes plans)."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw: dict[str, Any] = dict(raw)
        self.space = SearchSpace.from_dict(self.raw["space"], source=self.raw["space_ref"])
        self.pool: dict[str, dict[str, Any]] = {p["config_id"]: p["config"] for p in self.raw["pool"]}
        self.specs: dict[str, DatasetSpec] = {d["task"]: DatasetSpec.from_dict(d) for d in self.raw["datasets"]}
        self.campaign_id = campaign_id(self.raw)

    @classmethod
    def load(cls, workdir: str | os.PathLike[str]) -> CampaignPlan:
        return cls(load_plan(workdir))

    @property
    def order(self) -> list[tuple[str, str]]:
        """Every planned (task, config id), in run order."""
        return [(str(t), str(c)) for t, c in self.raw["order"]]

    @property
    def tasks(self) -> list[str]:
        return [str(d["task"]) for d in self.raw["datasets"]]

    @property
    def epochs(self) -> int:
        return int(self.raw["epochs"])

    @property
    def seed(self) -> int:
        return int(self.raw["seed"])

    @property
    def image_size(self) -> int | None:
        v = self.raw["image_size"]
        return int(v) if v is not None else None

    def task_image_size(self, task: str) -> int | None:
        """The image size ``task`` is trained at: its spec's ``size``, else the plan's."""
        own = self.specs[task].image_size
        return own if own is not None else self.image_size

    def assigned(self, task: str) -> list[str]:
        return list(self.raw["assignments"].get(task, []))

    def data_uri(self, task: str, root: str) -> str:
        """Where ``task``'s images are: a packaged spec is materialised under ``root``/data/<task>;
        a folder or s3:// spec is used where it is."""
        spec = self.specs[task]
        if not spec.packaged:
            return spec.source
        return storage.join(root, "data", task)
