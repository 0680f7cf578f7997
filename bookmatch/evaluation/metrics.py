"""Verification metrics: scikit-learn where it has them, PAN's c@1 and F0.5u as the PAN evaluator defines them.

PAN authorship-verification convention: a score of exactly 0.5 is a non-answer. c@1 rewards leaving hard
cases unanswered; F0.5u counts non-answers as false negatives. For a decision threshold other than 0.5 the
scores are first mapped piecewise-linearly so the threshold lands on 0.5 (`to_pan_scores`), which is what a
PAN submission with a tuned threshold hands to the evaluator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "auc", "average_precision", "brier", "ece", "c_at_1", "f05u")


def to_pan_scores(probabilities: Sequence[float], threshold: float = 0.5) -> np.ndarray:
    """Map [0, threshold] to [0, 0.5] and [threshold, 1] to [0.5, 1]: order kept, threshold -> 0.5."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    if threshold == 0.5:
        return p
    low = 0.5 * p / threshold if threshold > 0 else np.ones_like(p)
    high = 0.5 + 0.5 * (p - threshold) / (1.0 - threshold) if threshold < 1 else np.full_like(p, 0.5)
    return np.where(p < threshold, low, high)


def c_at_1(labels: Sequence[int], scores: Sequence[float]) -> float:
    """PAN c@1: (correct + unanswered * correct / n) / n, where a score of exactly 0.5 is unanswered."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    n = float(len(s))
    if n == 0:
        return float("nan")
    unanswered = s == 0.5
    correct = (~unanswered) & ((s > 0.5) == (y > 0.5))
    n_correct, n_unanswered = float(correct.sum()), float(unanswered.sum())
    return (n_correct + n_unanswered * n_correct / n) / n


def f05u(labels: Sequence[int], scores: Sequence[float]) -> float:
    """PAN F0.5u: 1.25 TP / (1.25 TP + 0.25 (FN + U) + FP), U = non-answers (score exactly 0.5)."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    unanswered = s == 0.5
    predicted = s > 0.5
    answered = ~unanswered
    tp = float((answered & predicted & (y == 1)).sum())
    fp = float((answered & predicted & (y == 0)).sum())
    fn = float((answered & ~predicted & (y == 1)).sum())
    denominator = 1.25 * tp + 0.25 * (fn + float(unanswered.sum())) + fp
    return 1.25 * tp / denominator if denominator > 0 else 0.0


def expected_calibration_error(labels: Sequence[int], probabilities: Sequence[float], n_bins: int = 15) -> float:
    """ECE of P(same book): equal-width bins over [0, 1], sum over bins of |bin| / n * |mean p - mean y|.

    The first bin is closed ([0, 1/n_bins]), the others half-open on the left: (a, b].
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    if len(p) == 0:
        return float("nan")
    bins = np.clip(np.ceil(p * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        mask = bins == b
        total += mask.sum() / len(p) * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def reliability_bins(labels: Sequence[int], probabilities: Sequence[float], n_bins: int = 15) -> list[dict[str, float]]:
    """Per-bin mean probability, observed frequency and count (same bins as the ECE) for reliability diagrams."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    bins = np.clip(np.ceil(p * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            rows.append(
                {
                    "bin": b,
                    "mean_probability": float(p[mask].mean()),
                    "frequency": float(y[mask].mean()),
                    "count": int(mask.sum()),
                }
            )
    return rows


def rank_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC AUC by the Mann-Whitney rank sum, tied scores at their mean rank (a tie counts half, as in
    `sklearn.metrics.roc_auc_score`); NaN without both classes. For the training loop's evaluations, where
    importing scikit-learn (~1 s) would be a fifth of a small run's start-up."""
    y = np.asarray(labels) == 1
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    _, position, counts = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2
    rank_sum = float(mean_rank[position.reshape(-1)][y].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def _average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import average_precision_score

    if len(np.unique(labels)) < 2:
        return None
    return float(average_precision_score(labels, scores))


def compute_metrics(
    labels: Sequence[int],
    probabilities: Sequence[float],
    threshold: float = 0.5,
    decisions: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """All figures for one set of scores. Decision: same book when probability >= threshold, unless
    `decisions` are given (two-stage answers, where a bi-encoder rejection is final whatever its score).

    AUC and average precision are None where only one class is present. c@1 and F0.5u are computed on
    `to_pan_scores(probabilities, threshold)`, with a negative decision always kept under 0.5.
    """
    from sklearn.metrics import accuracy_score, brier_score_loss, precision_recall_fscore_support

    y = np.asarray(labels, dtype=np.int64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    pan_scores = to_pan_scores(p, threshold)
    if decisions is None:
        decisions = (p >= threshold).astype(np.int64)
    else:
        decisions = np.asarray(decisions, dtype=np.int64)
        pan_scores = np.where(decisions == 1, pan_scores, np.minimum(pan_scores, np.nextafter(0.5, 0.0)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, decisions, average="binary", pos_label=1, zero_division=0
    )
    return {
        "n": int(len(y)),
        "positives": int(y.sum()),
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(y, decisions)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auc": _auc(y, p),
        "average_precision": _average_precision(y, p),
        "brier": float(brier_score_loss(y, p, pos_label=1)) if len(y) else float("nan"),
        "ece": expected_calibration_error(y, p),
        "c_at_1": c_at_1(y, pan_scores),
        "f05u": f05u(y, pan_scores),
    }


def metrics_by_kind(
    labels: Sequence[int],
    probabilities: Sequence[float],
    kinds: Sequence[str],
    threshold: float = 0.5,
    decisions: Sequence[bool] | None = None,
) -> dict[str, dict[str, Any]]:
    """`compute_metrics` per kind of pair.

    A kind holding one class only (e.g. a negative type) has no AUC of its own; its `auc` and
    `average_precision` are then measured on that kind's pairs against ALL pairs of the other class in the
    data (a negative kind: all positives vs this kind's negatives), marked by `auc_against` = "all positives"
    or "all negatives". The other figures use the kind's own pairs.
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    k = np.asarray(kinds, dtype=object)
    d = None if decisions is None else np.asarray(decisions, dtype=np.int64)
    result: dict[str, dict[str, Any]] = {}
    for kind in sorted(set(k.tolist())):
        mask = k == kind
        figures = compute_metrics(y[mask], p[mask], threshold, None if d is None else d[mask])
        figures["auc_against"] = "own pairs"
        classes = set(y[mask].tolist())
        if len(classes) == 1:
            other = 1 - classes.pop()
            mixed = mask | (y == other)
            if (y[mixed] == other).any():
                figures["auc"] = _auc(y[mixed], p[mixed])
                figures["average_precision"] = _average_precision(y[mixed], p[mixed])
                figures["auc_against"] = "all positives" if other == 1 else "all negatives"
        result[str(kind)] = figures
    return result
