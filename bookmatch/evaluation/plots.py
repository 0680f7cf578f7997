"""PNG plots for the evaluation report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bookmatch.evaluation.metrics import reliability_bins
from bookmatch.storage import atomic_write_bytes


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_roc(labels: Sequence[int], curves: Mapping[str, Sequence[float]], path: str | os.PathLike) -> Path:
    """One ROC curve per named score set (e.g. uncalibrated, calibrated, style similarity)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 5))
    y = np.asarray(labels)
    for name, scores in curves.items():
        if len(np.unique(y)) < 2:
            break
        fpr, tpr, _ = roc_curve(y, np.asarray(scores))
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, scores):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC: same book")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_reliability(
    labels: Sequence[int], probabilities: Mapping[str, Sequence[float]], path: str | os.PathLike, n_bins: int = 15
) -> Path:
    """Reliability diagram: observed frequency of 'same book' against mean predicted probability per bin."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, p in probabilities.items():
        bins = reliability_bins(labels, p, n_bins)
        ax.plot([b["mean_probability"] for b in bins], [b["frequency"] for b in bins], marker="o", label=name)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="perfect")
    ax.set(
        xlabel="mean predicted P(same book)", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1), title="Reliability"
    )
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_score_histograms(
    probabilities: Sequence[float], kinds: Sequence[str], path: str | os.PathLike, threshold: float | None = None
) -> Path:
    """Overlaid histograms of P(same book), one per kind of pair."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    p = np.asarray(probabilities, dtype=np.float64)
    k = np.asarray(kinds, dtype=object)
    edges = np.linspace(0, 1, 31)
    for kind in sorted(set(k.tolist())):
        ax.hist(p[k == kind], bins=edges, alpha=0.5, label=f"{kind} ({int((k == kind).sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=0.8, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="P(same book)", ylabel="pairs", title="Scores by kind of pair")
    ax.legend(fontsize=8)
    return _save(fig, path)
