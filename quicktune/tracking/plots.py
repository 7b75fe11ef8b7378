"""PNG plots of a search for the parent run: learning curves and the incumbent over time.

matplotlib's Agg backend only (no display); figures are built from what MLflow recorded, so a
resumed search plots its whole history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from quicktune.tracking.records import ConfigRecord


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def learning_curves_figure(records: Mapping[str, ConfigRecord], title: str = "") -> Any:
    """Validation score per epoch, one line per configuration (dead ones dashed, best bold)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    best_id = max(records, key=lambda c: records[c].best_score, default=None)
    for cid, rec in sorted(records.items()):
        pts = sorted((e, m["score"]) for e, m in rec.epochs.items() if "score" in m)
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        label = f"{rec.config.get('model', '?')} {cid[:6]}"
        ax.plot(
            xs,
            ys,
            marker="o",
            ms=3,
            lw=2.5 if cid == best_id else 1.0,
            ls="--" if rec.dead else "-",
            label=label if cid == best_id or len(records) <= 12 else None,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation score")
    ax.set_title(title or "learning curves")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def incumbent_figure(
    history: Sequence[tuple[float, float]], budget_seconds: float | None = None, title: str = ""
) -> Any:
    """Best validation score so far against elapsed seconds (a step plot)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.0), dpi=100)
    if history:
        xs, ys = zip(*sorted(history), strict=True)
        ax.step(xs, ys, where="post", lw=2)
        ax.plot(xs, ys, "o", ms=3)
    if budget_seconds:
        ax.axvline(budget_seconds, color="grey", ls=":", label="budget")
        ax.legend(loc="lower right")
    ax.set_xlabel("elapsed seconds")
    ax.set_ylabel("incumbent validation score")
    ax.set_title(title or "incumbent over time")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def close(fig: Any) -> None:
    _pyplot().close(fig)
