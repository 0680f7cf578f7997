"""Calibration artifacts: temperature scaling (with an offset) + decision threshold for P(same book), the
isotonic map for style similarity, their files beside a model, and the maths that fits and applies them.

Everything is fitted on a labelled validation split (by the calibrate stage, `bookmatch.calibration`) and written
as plain JSON (no pickles) in the model's parent folder: `OUT/final/` -> `OUT/calibration.json` (+
`OUT/style_calibration.json` for a bi-encoder). Inference reads them from here, below the stage.

For two classes, softmax(logits / T)[:, 1] == sigmoid((l1 - l0) / T), so everything works on the logit
margin `l1 - l0`. P(same book) = sigmoid((margin - offset) / T): the offset (Platt scaling's intercept) is
fitted with T by default, because a temperature alone cannot move a model whose margins are shifted on new
data, and ours are: training reads a passage's first window, inference reads the whole passage.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bookmatch.cohort import COHORT_FILE, read_cohort
from bookmatch.errors import InputError, first_line
from bookmatch.evaluation.metrics import compute_metrics

CALIBRATION_FILE = "calibration.json"
STYLE_CALIBRATION_FILE = "style_calibration.json"
TARGETS = ("accuracy", "f1")


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # NaN in (a pair a model did not score) -> NaN out, quietly
        return np.exp(-np.logaddexp(0.0, -x))


def logit_margin(logits: Any) -> np.ndarray:
    """(N, 2) logits (tensor or array) -> l1 - l0 as float64."""
    array = logits.detach().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits)
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"expected (N, 2) logits, got shape {array.shape}")
    return array[:, 1] - array[:, 0]


def probability_from_margin(margin: Sequence[float], temperature: float = 1.0, offset: float = 0.0) -> np.ndarray:
    return sigmoid((np.asarray(margin, dtype=np.float64) - offset) / temperature)


def binary_nll(labels: Sequence[int], probabilities: Sequence[float]) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit_temperature(
    margin: Sequence[float],
    labels: Sequence[int],
    fit_offset: bool = False,
    bounds: tuple[float, float] = (0.01, 100.0),
) -> tuple[float, float]:
    """(T, offset) minimising the NLL of sigmoid((margin - offset) / T), T > 0; offset stays 0 unless
    `fit_offset`. Searched on log T, where the loss is smooth; with the offset it is a 2-parameter logistic
    regression on the margin (convex in 1/T and offset/T)."""
    from scipy.optimize import minimize, minimize_scalar

    m = np.asarray(margin, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(m) == 0 or len(np.unique(y)) < 2:
        raise InputError("temperature scaling needs labelled pairs of both classes in the calibration split")

    def nll(log_t: float, offset: float = 0.0) -> float:
        z = (m - offset) / np.exp(log_t)
        # log(1 + e^-z) for y=1, log(1 + e^z) for y=0, written stably.
        return float(np.mean(y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)))

    log_bounds = (np.log(bounds[0]), np.log(bounds[1]))
    log_t = minimize_scalar(nll, bounds=log_bounds, method="bounded", options={"xatol": 1e-6}).x
    if not fit_offset:
        return float(np.exp(log_t)), 0.0
    spread = float(np.ptp(m)) or 1.0
    result = minimize(
        lambda v: nll(v[0], v[1]),
        x0=[log_t, 0.0],
        method="L-BFGS-B",
        bounds=[log_bounds, (float(m.min()) - spread, float(m.max()) + spread)],
    )
    return float(np.exp(result.x[0])), float(result.x[1])


def best_threshold(labels: Sequence[int], probabilities: Sequence[float], target: str = "accuracy") -> float:
    """The threshold t (decision: p >= t) maximising `target` on these pairs.

    Candidates sit midway between consecutive distinct scores, so the rule generalises to unseen scores
    instead of hugging one validation example; ties go to the candidate closest to 0.5.
    """
    if target not in TARGETS:
        raise InputError(f"unknown calibration target {target!r}: use one of {', '.join(TARGETS)}")
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    distinct = np.unique(p)
    if len(distinct) == 0:
        return 0.5
    # "all positive", every midpoint, "all negative"
    candidates = np.concatenate(
        [[distinct[0] - 1e-9], (distinct[1:] + distinct[:-1]) / 2, [np.nextafter(distinct[-1], 2.0)]]
    )
    pos = np.sort(p[y == 1])
    neg = np.sort(p[y == 0])
    # Counts of scores >= t via binary search: O((n + k) log n) instead of one pass per candidate.
    tp = len(pos) - np.searchsorted(pos, candidates, side="left")
    fp = len(neg) - np.searchsorted(neg, candidates, side="left")
    fn = len(pos) - tp
    tn = len(neg) - fp
    if target == "accuracy":
        score = (tp + tn) / max(len(y), 1)
    else:
        denominator = 2 * tp + fp + fn
        score = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    best = np.flatnonzero(score >= score.max() - 1e-12)
    chosen = best[np.argmin(np.abs(candidates[best] - 0.5))]
    return float(np.clip(candidates[chosen], 0.0, 1.0))


@dataclass(frozen=True)
class StyleCalibration:
    """Monotone map from raw cosine to [0, 1], stored as isotonic-regression knots (apply with np.interp)."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __call__(self, cosine: Sequence[float] | float) -> np.ndarray:
        return np.interp(np.asarray(cosine, dtype=np.float64), self.x, self.y)

    def to_json(self) -> dict[str, Any]:
        return {"method": "isotonic", "input": "cosine of projected embeddings", "x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StyleCalibration:
        """ValueError (or KeyError/TypeError) unless the knots are a usable map: np.interp quietly returns
        garbage for unequal lengths, unsorted or non-finite x, so a damaged file is refused here instead."""
        x, y = tuple(float(v) for v in data["x"]), tuple(float(v) for v in data["y"])
        if len(x) != len(y) or not x:
            raise ValueError(f"x and y must hold the same number (>= 1) of knots, got {len(x)} and {len(y)}")
        if not all(math.isfinite(v) for v in x + y):
            raise ValueError("the knots must be finite numbers")
        if any(b < a for a, b in zip(x, x[1:])):
            raise ValueError("x must be non-decreasing")
        return cls(x, y)


def fit_style_calibration(cosines: Sequence[float], labels: Sequence[int]) -> StyleCalibration:
    """Isotonic (increasing, clipped) map cosine -> P(same book); np.interp on the knots reproduces it."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(np.asarray(cosines, dtype=np.float64), np.asarray(labels, dtype=np.float64))
    return StyleCalibration(tuple(float(v) for v in iso.X_thresholds_), tuple(float(v) for v in iso.y_thresholds_))


@dataclass(frozen=True)
class Calibration:
    """How raw logits become a decision: p = sigmoid((m - offset) / temperature), same book when p >= threshold,
    where m is the margin l1 - l0, or the cohort-normalised margin when `cohort_sha256` names a score cohort
    (`RawScores.score` picks the right one once the scorer holds that cohort)."""

    temperature: float = 1.0
    threshold: float = 0.5
    offset: float = 0.0
    cohort_sha256: str | None = None

    def probabilities(self, margin: Sequence[float]) -> np.ndarray:
        return probability_from_margin(margin, self.temperature, self.offset)


def calibration_path(model_dir: str | os.PathLike) -> Path:
    return Path(model_dir).resolve().parent / CALIBRATION_FILE


def style_calibration_path(model_dir: str | os.PathLike) -> Path:
    return Path(model_dir).resolve().parent / STYLE_CALIBRATION_FILE


def cohort_path(model_dir: str | os.PathLike) -> Path:
    return Path(model_dir).resolve().parent / COHORT_FILE


def load_score_cohort(model_dir: str | os.PathLike, calibration: Calibration | None):
    """The score cohort `calibration` was fitted with (beside calibration.json), or None when it has none."""
    if calibration is None or calibration.cohort_sha256 is None:
        return None
    return read_cohort(cohort_path(model_dir), calibration.cohort_sha256)


def load_calibration(model_dir: str | os.PathLike, model_kind: str | None = None) -> Calibration | None:
    """The calibration.json beside `model_dir` (in its parent), or None when there is none.

    With `model_kind`, a file fitted for the other kind of model (two models sharing a parent) is an error.
    """
    path = calibration_path(model_dir)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        normalization = data.get("score_normalization")
        calibration = Calibration(
            temperature=float(data["temperature"]),
            threshold=float(data["threshold"]),
            offset=float(data.get("offset", 0.0)),
            cohort_sha256=None if normalization is None else str(normalization["sha256"]),
        )
        # A zero, negative or infinite temperature (or a NaN anywhere) would give every pair p = 0, 1 or NaN
        # without a word: refuse it like an unreadable file.
        if not (math.isfinite(calibration.temperature) and calibration.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {calibration.temperature}")
        if not (math.isfinite(calibration.threshold) and 0.0 <= calibration.threshold <= 1.0):
            raise ValueError(f"threshold must lie in [0, 1], got {calibration.threshold}")
        if not math.isfinite(calibration.offset):
            raise ValueError(f"offset must be finite, got {calibration.offset}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(
            f"calibration file {path} is unreadable or corrupt ({first_line(err, 200)}); re-run `bookmatch calibrate` or delete it"
        ) from err
    fitted_for = data.get("model_kind")
    if model_kind is not None and fitted_for is not None and fitted_for != model_kind:
        raise InputError(
            f"calibration file {path} was fitted for a {fitted_for}, not this {model_kind}; keep each model in its own run folder or re-run `bookmatch calibrate`"
        )
    return calibration


def load_style_calibration(model_dir: str | os.PathLike) -> StyleCalibration | None:
    path = style_calibration_path(model_dir)
    if not path.exists():
        return None
    try:
        return StyleCalibration.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(
            f"style calibration file {path} is unreadable or corrupt ({first_line(err, 200)}); re-run `bookmatch calibrate` or delete it"
        ) from err


def calibration_figures(labels: Sequence[int], probabilities: Sequence[float], threshold: float) -> dict[str, Any]:
    figures = compute_metrics(labels, probabilities, threshold)
    figures["nll"] = binary_nll(labels, probabilities)
    return figures
