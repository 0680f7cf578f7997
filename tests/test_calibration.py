"""Calibration math: temperature scaling, threshold choice, isotonic style map (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from bookmatch.errors import InputError
from bookmatch.evaluation.metrics import expected_calibration_error
from bookmatch.inference.calibration import (
    Calibration,
    StyleCalibration,
    best_threshold,
    binary_nll,
    fit_style_calibration,
    fit_temperature,
    probability_from_margin,
)


def _overconfident(n: int, seed: int, scale: float = 4.0):
    rng = np.random.default_rng(seed)
    true_margin = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-true_margin))).astype(int)
    return scale * true_margin, labels


def test_temperature_lowers_nll_and_ece_on_held_out_data():
    fit_margin, fit_labels = _overconfident(3000, seed=1)
    test_margin, test_labels = _overconfident(3000, seed=2)
    temperature, offset = fit_temperature(fit_margin, fit_labels)
    assert offset == 0.0 and 3.0 < temperature < 5.0  # the logits were inflated 4x
    raw = probability_from_margin(test_margin, 1.0)
    calibrated = probability_from_margin(test_margin, temperature)
    assert binary_nll(test_labels, calibrated) < binary_nll(test_labels, raw) - 0.1
    assert expected_calibration_error(test_labels, calibrated) < expected_calibration_error(test_labels, raw) / 2


def test_offset_fixes_shifted_margins_and_matches_logistic_regression():
    """Margins inflated 4x and shifted by +6: the temperature alone cannot undo the shift, T + offset can; the
    fit equals a plain logistic regression on the margin (the reference)."""
    from sklearn.linear_model import LogisticRegression

    fit_margin, fit_labels = _overconfident(3000, seed=4)
    test_margin, test_labels = _overconfident(3000, seed=5)
    fit_margin, test_margin = fit_margin + 6.0, test_margin + 6.0
    t_only, _ = fit_temperature(fit_margin, fit_labels)
    temperature, offset = fit_temperature(fit_margin, fit_labels, fit_offset=True)
    assert 3.0 < temperature < 5.0 and 4.5 < offset < 7.5
    reference = LogisticRegression(C=1e9, tol=1e-10, max_iter=10_000).fit(fit_margin[:, None], fit_labels)
    expected = reference.predict_proba(test_margin[:, None])[:, 1]
    platt = probability_from_margin(test_margin, temperature, offset)
    assert platt == pytest.approx(expected, abs=1e-3)
    alone = probability_from_margin(test_margin, t_only)
    assert expected_calibration_error(test_labels, platt) < expected_calibration_error(test_labels, alone) / 2
    assert binary_nll(test_labels, platt) < binary_nll(test_labels, alone)


def test_temperature_equals_softmax_of_scaled_logits():
    import torch

    logits = torch.tensor([[0.3, 2.0], [1.5, -0.5], [0.0, 0.0]])
    expected = torch.softmax(logits / 2.5, dim=-1)[:, 1].numpy()
    cal = Calibration(temperature=2.5)
    assert cal.probabilities((logits[:, 1] - logits[:, 0]).numpy()) == pytest.approx(expected, abs=1e-6)


def test_temperature_needs_both_classes():
    with pytest.raises(InputError):
        fit_temperature([1.0, 2.0], [1, 1])


@pytest.mark.parametrize("target", ["accuracy", "f1"])
def test_best_threshold_matches_brute_force(target):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    p = np.clip(0.25 * labels + 0.2 + 0.5 * rng.random(300), 0, 1)

    def metric(t):
        d = p >= t
        tp, fp, fn = np.sum(d & (labels == 1)), np.sum(d & (labels == 0)), np.sum(~d & (labels == 1))
        return np.mean(d == labels) if target == "accuracy" else 2 * tp / max(2 * tp + fp + fn, 1)

    brute = max(metric(t) for t in np.concatenate([np.unique(p), [1.1]]))
    chosen = best_threshold(labels, p, target)
    assert metric(chosen) == pytest.approx(brute)
    # it sits between two scores, not on one
    assert not np.any(np.isclose(p, chosen, atol=1e-12))


def test_best_threshold_rejects_unknown_target():
    with pytest.raises(InputError):
        best_threshold([0, 1], [0.2, 0.8], "auc")


def test_style_knots_reproduce_isotonic_regression():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(4)
    cosine = rng.uniform(-0.5, 1.0, 400)
    labels = (rng.random(400) < (cosine + 0.5) / 1.5).astype(int)
    style = fit_style_calibration(cosine, labels)
    reference = IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=0, y_max=1).fit(cosine, labels)
    probe = np.linspace(-1.0, 1.0, 101)  # includes points outside the fitted range (clipped)
    assert style(probe) == pytest.approx(reference.predict(probe), abs=1e-9)
    assert np.all(np.diff(style(probe)) >= 0)
    assert StyleCalibration.from_json(style.to_json()) == style


# ---------------------------------------------------------------------------------------------- loading files


@pytest.mark.parametrize(
    "content",
    [
        '{"temperature": 0, "threshold": 0.5}',
        '{"temperature": -1.5, "threshold": 0.5}',
        '{"temperature": NaN, "threshold": 0.5}',
        '{"temperature": Infinity, "threshold": 0.5}',
        '{"temperature": 1.0, "threshold": 1.5}',
        '{"temperature": 1.0, "threshold": 0.5, "offset": NaN}',
        "[1, 2]",
    ],
)
def test_corrupt_calibration_file_is_refused(tmp_path, content):
    from bookmatch.inference.calibration import load_calibration

    (tmp_path / "calibration.json").write_text(content)
    with pytest.raises(InputError, match="re-run `bookmatch calibrate`") as info:
        load_calibration(tmp_path / "final")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "knots",
    [
        {"x": [0.1, 0.2], "y": [0.5]},
        {"x": [], "y": []},
        {"x": [0.5, 0.1], "y": [0.2, 0.3]},
        {"x": [0.1, float("nan")], "y": [0.2, 0.3]},
        {"x": [0.1, 0.2], "y": [0.2, float("inf")]},
        {"x": "ab", "y": "cd"},
        {"y": [0.1]},
    ],
)
def test_corrupt_style_calibration_file_is_refused(tmp_path, knots):
    import json

    from bookmatch.inference.calibration import load_style_calibration

    (tmp_path / "style_calibration.json").write_text(json.dumps(knots))
    with pytest.raises(InputError, match="re-run `bookmatch calibrate`") as info:
        load_style_calibration(tmp_path / "final")
    assert "\n" not in str(info.value)


def test_valid_calibration_files_load(tmp_path):
    import json

    from bookmatch.inference.calibration import load_calibration, load_style_calibration

    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": 2.0, "threshold": 0.4, "offset": -0.5}))
    (tmp_path / "style_calibration.json").write_text(
        json.dumps({"x": [-0.5, 0.1, 0.1, 0.9], "y": [0.0, 0.2, 0.3, 1.0]})
    )
    assert load_calibration(tmp_path / "final").temperature == 2.0
    assert load_style_calibration(tmp_path / "final")(0.9) == pytest.approx(1.0)


def test_calibrate_config_checks_its_values():
    from bookmatch.calibration import CalibrateConfig
    from bookmatch.config import ConfigError

    with pytest.raises(ConfigError, match="target must be one of"):
        CalibrateConfig(model_dir="m", target="f2")
    for value in (0, -4):
        with pytest.raises(ConfigError, match="batch_size must be"):
            CalibrateConfig(model_dir="m", batch_size=value)
