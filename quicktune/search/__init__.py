"""One search: the optimizer, a trial backend and MLflow wired into a resumable loop, and the
promotion of its winner.

The package, file by file (each one responsibility):

- :mod:`~quicktune.search.spec`: ``SearchSpec`` (what to search, within which budget),
  ``SearchResult``, ``SearchError``, ``IDENTITY_FIELDS`` (what a resume must keep);
- :mod:`~quicktune.search.inputs`: the inputs checked before anything is created (dataset
  identity, space, meta-artifact, checkpoint location, a resume's definition);
- :mod:`~quicktune.search.session`: one session's state and budget rules;
- :mod:`~quicktune.search.resume`: open a search, new or resumed from MLflow (optimizer rebuilt
  from its snapshot plus replay in ``tell_seq`` order; steps in flight reconciled);
- :mod:`~quicktune.search.loop`: ask -> dispatch -> collect -> tell, retries, fail-fast;
  ``run_search``;
- :mod:`~quicktune.search.report`: the status line, progress metrics, summary, plots, result;
- :mod:`~quicktune.search.promotion`: ``promote`` tests, logs and registers the winner
  (it imports torch and MLflow's model flavours: loaded on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

from quicktune.search.loop import SearchSession, run_search
from quicktune.search.spec import IDENTITY_FIELDS, SearchError, SearchResult, SearchSpec

_PROMOTE = ("promote", "Promotion", "PromotionError", "RawImageClassifier", "best_record", "predict_classes")

__all__ = ["IDENTITY_FIELDS", "SearchError", "SearchResult", "SearchSession", "SearchSpec", "run_search", *_PROMOTE]


def __getattr__(name: str) -> Any:
    if name in _PROMOTE:  # torch, numpy and mlflow's model flavours: only for who promotes
        return getattr(importlib.import_module("quicktune.search.promotion"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
