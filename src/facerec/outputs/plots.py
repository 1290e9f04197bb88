"""The write-up's figures (training curves, verification ROC, pair-score histogram) as PNG files.

Uses matplotlib's object API on an Agg canvas, imported inside the functions: no pyplot state, no global backend
switch (so an interactive session's backend is left alone) and no display needed. Inputs are plain Python /
NumPy values read from a run folder by `facerec.outputs.report`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from facerec.metrics.verification import roc_points


def _figure(ncols: int, width: float) -> tuple[Any, Any]:
    """A (width x 3.2 in) figure on an Agg canvas and its (ncols,) axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _points(epochs: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one metric over the epochs that logged it (absent and null values are skipped)."""
    x, y = [], []
    for row in epochs:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            x.append(row.get("epoch"))
            y.append(float(value))
    return x, y


def plot_curves(epochs: list[dict[str, Any]], path: Path) -> None:
    """Three panels over epochs: train loss; train / val (top-1, top-5) accuracy; val AUC and EER.

    `epochs` are the metrics.jsonl "epoch" events in order; null values are skipped.
    """
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc, ax_ver) = _figure(3, 12.0)
    panels = (
        (ax_loss, "Training loss", (("train_loss", "o-"),)),
        (ax_acc, "Classification accuracy", (("train_acc", "o-"), ("val_acc", "s-"), ("val_top5", "s--"))),
        (ax_ver, "Verification (val pairs)", (("val_auc", "s-"), ("val_eer", "s--"))),
    )
    for ax, title, lines in panels:
        for key, style in lines:
            x, y = _points(epochs, key)
            if x:  # joins the logged epochs, so evaluating every n-th epoch still draws a line
                ax.plot(x, y, style, label=key.replace("_", " "))
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=110)


def plot_roc(scores: np.ndarray, labels: np.ndarray, report: dict[str, float], path: Path) -> None:
    """ROC of (N,) pair scores vs (N,) 0/1 labels, with the AUC and the EER point from `report`."""
    fig, (ax,) = _figure(1, 4.6)
    fpr, tpr, _ = roc_points(scores, labels)
    ax.plot(fpr, tpr, label=f"val pairs, AUC = {report['auc']:.4f}")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.plot([report["eer"]], [1 - report["eer"]], "o", label=f"EER = {100 * report['eer']:.2f} %")
    ax.set(xlabel="false accept rate", ylabel="true accept rate", title="Verification ROC", xlim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=110)


def plot_score_hist(
    scores: np.ndarray, labels: np.ndarray, report: dict[str, float], path: Path, scoring: str = "cosine"
) -> None:
    """Density histograms of (N,) pair scores for same (1) and different (0) pairs, and the decision threshold
    (`report["best_threshold"]`, accept when score >= it) as a dashed line."""
    fig, (ax,) = _figure(1, 5.5)
    bins = np.histogram_bin_edges(scores, bins=min(60, max(10, scores.size // 20)))
    n_pos = int(labels.sum())
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, density=True, label=f"same ({n_pos})")
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, density=True, label=f"different ({labels.size - n_pos})")
    t, acc = report["best_threshold"], report["best_acc"]
    ax.axvline(t, color="black", linestyle="--", label=f"threshold {t:.3f} (accuracy {100 * acc:.1f} %)")
    unit = " (negative distance)" if scoring == "euclidean" else ""
    ax.set(xlabel=f"{scoring} score{unit}", ylabel="density", title="Validation pair scores")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def plot_lr_find(
    lrs: list[float], smoothed: list[float], suggestion: float | None, steepest: float | None, path: Path
) -> None:
    """The range test's smoothed loss against the learning rate (log axis), the suggested (lowest-loss) and the
    steepest-descent rates marked."""
    fig, (ax,) = _figure(1, 5.0)
    ax.plot(lrs, smoothed, "-", label="smoothed training loss")
    if suggestion is not None:
        ax.axvline(suggestion, linestyle="--", color="tab:red", label=f"suggested {suggestion:.3g} (lowest loss)")
    if steepest is not None:
        ax.axvline(steepest, linestyle=":", color="tab:grey", label=f"steepest descent {steepest:.3g} (cautious)")
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title="Learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
