"""Bootstrap confidence intervals for ROC AUC.

Pairs are resampled with replacement within each class (positives among positives, negatives among negatives), so
every resample holds both classes in the original numbers and has an AUC. The resamples depend only on the labels
and the seed: every method scored on the same pairs is measured on the same resamples, and its interval is
reproducible. The interval is the percentile one (2.5th and 97.5th of the resampled AUCs for 95%).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stratified_resamples(labels: Sequence[int], n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) indices into `labels`: each row draws n_pos positives then n_neg negatives, with replacement.

    Positives fill the first n_pos columns of every row (what `resampled_aucs` relies on)."""
    y = np.asarray(labels, dtype=np.int64)
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y != 1)
    if len(positives) == 0 or len(negatives) == 0:
        raise ValueError("a bootstrap of AUC needs both classes")
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [
            rng.choice(positives, size=(n_resamples, len(positives)), replace=True),
            rng.choice(negatives, size=(n_resamples, len(negatives)), replace=True),
        ],
        axis=1,
    )


def resampled_aucs(scores: Sequence[float], resamples: np.ndarray, n_positives: int) -> np.ndarray:
    """The AUC of `scores` on each row of `resamples` (from `stratified_resamples`), by the Mann-Whitney rank sum
    with tied scores given their mean rank, as `sklearn.metrics.roc_auc_score` counts a tie as half."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)[resamples]
    n_negatives = resamples.shape[1] - n_positives
    ranks = rankdata(s, axis=1)
    rank_sum = ranks[:, :n_positives].sum(axis=1)
    return (rank_sum - n_positives * (n_positives + 1) / 2) / (n_positives * n_negatives)


def auc_interval(
    labels: Sequence[int], scores: Sequence[float], n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC AUC of `scores` for `labels`."""
    resamples = stratified_resamples(labels, n_resamples, seed)
    return percentile_interval(resampled_aucs(scores, resamples, int(np.sum(np.asarray(labels) == 1))), level)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
