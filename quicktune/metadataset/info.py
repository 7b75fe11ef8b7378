"""A summary of a learning-curve table (the shipped meta-dataset by default): size, and the axes a
meta-dataset must cover to teach finetuning (sources, colour, resolution, size, pretrained or not).

Why these axes: a surrogate meta-trained on one resolution, one channel count or one kind of
weights cannot tell a new task's situation apart (issue 15); ``info`` makes the coverage visible.
Sources are read from task names, which campaigns derive from their dataset specs
(``NAME[-c<classes>][-<size>px]``, :func:`quicktune.metadataset.plan.parse_dataset_spec`): the
source is the longest packaged dataset name the task name starts with, else the task name itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from quicktune.lct import HP_PREFIX, META_PREFIX, load_lct

#: catalogue suffix of a random-init twin (``quicktune.hub.catalog.RANDOM_SUFFIX``)
_RANDOM_SUFFIX = ".random"


def source_of(task: str, packaged: Iterable[str]) -> str:
    """The packaged source a campaign task name was made from (``fashion-mnist-c02346-64px`` ->
    ``fashion-mnist``); a name that starts with no packaged name is its own source."""
    best = ""
    for name in packaged:
        if (task == name or task.startswith(name + "-")) and len(name) > len(best):
            best = name
    return best or task


def table_info(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Counts (``datasets``, ``curves``, ``rows``, ``max_epoch``) and coverage of a validated
    table; ``path`` None means the table shipped in the package.

    Coverage: ``sources``, ``colour_tasks`` (3 channels), ``resolutions`` (the tasks' median
    image heights), ``images`` (min/max per task), ``configs_per_task`` and ``epochs_per_curve``
    (min/max), ``models`` and ``pretrained_random_twins`` (architectures present both pretrained
    and as ``<arch>.random``)."""
    from quicktune.data.packaged import LOADERS
    from quicktune.metadataset import shipped_table_path

    p = str(path) if path is not None else str(shipped_table_path())
    df = load_lct(p)
    tasks = sorted(df["dataset"].unique())
    per_task = df.groupby("dataset")
    first = per_task.first()
    configs = per_task["config_id"].nunique()
    epochs = df.groupby(["dataset", "config_id"])["epoch"].max()
    out: dict[str, Any] = {
        "datasets": len(tasks),
        "curves": int(df.groupby(["dataset", "config_id"]).ngroups),
        "rows": int(len(df)),
        "max_epoch": int(df["epoch"].max()),
        "path": os.path.abspath(p),
        "sources": sorted({source_of(t, LOADERS) for t in tasks}),
        "configs_per_task": {"min": int(configs.min()), "max": int(configs.max())},
        "epochs_per_curve": {"min": int(epochs.min()), "max": int(epochs.max())},
    }
    out["num_sources"] = len(out["sources"])
    channels = f"{META_PREFIX}num_channels"
    if channels in first:
        out["colour_tasks"] = sorted(t for t in tasks if first.loc[t, channels] == 3)
    height = f"{META_PREFIX}median_height"
    if height in first:
        out["resolutions"] = sorted({int(v) for v in first[height].dropna()})
    images = f"{META_PREFIX}num_images"
    if images in first:
        out["images"] = {"min": int(first[images].min()), "max": int(first[images].max())}
    model = f"{HP_PREFIX}model"
    if model in df:
        models = sorted({str(m) for m in df[model].dropna().unique()})
        out["models"] = models
        out["pretrained_random_twins"] = sorted(
            m for m in models if not m.endswith(_RANDOM_SUFFIX) and m + _RANDOM_SUFFIX in models
        )
    return out
