"""Metrics: PAN c@1 / F0.5u and ECE against hand-computed cases, the rest against simple references."""

from __future__ import annotations

import numpy as np
import pytest

from bookmatch.evaluation.metrics import (
    c_at_1,
    compute_metrics,
    expected_calibration_error,
    f05u,
    metrics_by_kind,
    rank_auc,
    reliability_bins,
    to_pan_scores,
)


def test_c_at_1_hand_computed():
    # correct: pairs 0 and 3; pair 1 unanswered (exactly 0.5); pair 2 wrong -> (2 + 1 * 2 / 4) / 4
    assert c_at_1([1, 0, 1, 0], [0.9, 0.5, 0.3, 0.2]) == pytest.approx(0.625)
    assert c_at_1([1, 0], [0.7, 0.2]) == pytest.approx(1.0)
    assert c_at_1([1, 0], [0.5, 0.5]) == pytest.approx(0.0)


def test_f05u_hand_computed():
    # TP=1, FN=1, FP=0, U=1 -> 1.25 / (1.25 + 0.25 * 2)
    assert f05u([1, 0, 1, 0], [0.9, 0.5, 0.3, 0.2]) == pytest.approx(1.25 / 1.75)
    # TP=1, FP=1, FN=0, U=0 -> 1.25 / 2.25; a non-answer on a negative still counts in U
    assert f05u([1, 0], [0.9, 0.8]) == pytest.approx(1.25 / 2.25)
    assert f05u([1, 0, 0], [0.9, 0.8, 0.5]) == pytest.approx(1.25 / 2.5)
    assert f05u([0, 0], [0.1, 0.2]) == 0.0


def test_ece_hand_computed():
    # bin (0.8, 0.9]: mean p 0.85, accuracy 0.5; bin (0.1, 0.2]: mean p 0.15, accuracy 1.0
    ece = expected_calibration_error([1, 0, 1, 1], [0.85, 0.85, 0.15, 0.15], n_bins=10)
    assert ece == pytest.approx(0.5 * 0.35 + 0.5 * 0.85)
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == pytest.approx(0.0)
    bins = reliability_bins([1, 0, 1, 1], [0.85, 0.85, 0.15, 0.15], n_bins=10)
    assert [(b["bin"], b["count"], b["frequency"]) for b in bins] == [(1, 2, 1.0), (8, 2, 0.5)]


def test_pan_scores_put_threshold_on_half_and_keep_order():
    p = np.array([0.0, 0.1, 0.2, 0.6, 1.0])
    assert to_pan_scores(p, 0.2) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert to_pan_scores(p, 0.5) == pytest.approx(p)


def test_compute_metrics_matches_plain_reference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    for threshold in (0.5, 0.42):
        m = compute_metrics(y, p, threshold)
        d = p >= threshold
        tp, fp, fn = np.sum(d & (y == 1)), np.sum(d & (y == 0)), np.sum(~d & (y == 1))
        assert m["accuracy"] == pytest.approx(np.mean(d == y))
        assert m["precision"] == pytest.approx(tp / (tp + fp))
        assert m["recall"] == pytest.approx(tp / (tp + fn))
        assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
        # AUC as the probability a random positive outranks a random negative (ties count half)
        pos, neg = p[y == 1][:, None], p[y == 0][None, :]
        assert m["auc"] == pytest.approx(np.mean((pos > neg) + 0.5 * (pos == neg)))
        # no score sits exactly on the threshold, so c@1 is plain accuracy here
        assert m["c_at_1"] == pytest.approx(m["accuracy"])


def test_by_kind_one_class_auc_uses_all_positives():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.3, 0.4, 0.2, 0.7, 0.1])
    kinds = ["positive"] * 3 + ["hard", "hard", "random", "random"]
    by_kind = metrics_by_kind(y, p, kinds)
    assert set(by_kind) == {"positive", "hard", "random"}
    # hard negatives 0.4, 0.2 vs positives 0.9, 0.6, 0.3: 5 of 6 orderings right
    assert by_kind["hard"]["auc"] == pytest.approx(5 / 6)
    assert by_kind["hard"]["auc_against"] == "all positives"
    # random negatives 0.7, 0.1 vs positives: 0.9>0.7, 0.9>0.1, 0.6>0.1, 0.3>0.1 -> 4 of 6
    assert by_kind["random"]["auc"] == pytest.approx(4 / 6)
    assert by_kind["positive"]["auc_against"] == "all negatives"
    assert by_kind["hard"]["n"] == 2 and by_kind["hard"]["accuracy"] == pytest.approx(1.0)


def test_rank_auc_equals_sklearn_with_and_without_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    for scores in (rng.normal(size=200), rng.integers(0, 4, 200).astype(float), np.zeros(200)):
        labels = rng.integers(0, 2, 200)
        assert rank_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)
    assert rank_auc([1, 1, 0], [0.2, 0.9, 0.1]) == 1.0
    assert np.isnan(rank_auc([1, 1], [0.2, 0.3]))
