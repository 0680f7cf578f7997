"""Calibration: temperature scaling (with an offset) + decision threshold for P(same book), isotonic map for
style similarity.

Everything is fitted on a labelled validation split and written as plain JSON (no pickles) in the model's
parent folder: `OUT/final/` -> `OUT/calibration.json` (+ `OUT/style_calibration.json` for a bi-encoder).

For two classes, softmax(logits / T)[:, 1] == sigmoid((l1 - l0) / T), so everything works on the logit
margin `l1 - l0`. P(same book) = sigmoid((margin - offset) / T): the offset (Platt scaling's intercept) is
fitted with T by default, because a temperature alone cannot move a model whose margins are shifted on new
data, and ours are: training reads a passage's first window, inference reads the whole passage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bookmatch.config import check_settings, setting
from bookmatch.errors import InputError, first_line
from bookmatch.evaluation.metrics import compute_metrics
from bookmatch.precision import PRECISIONS
from bookmatch.storage import atomic_write_json

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
STYLE_CALIBRATION_FILE = "style_calibration.json"
TARGETS = ("accuracy", "f1")


# ---------------------------------------------------------------------------------------------- math


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
    margin: Sequence[float], labels: Sequence[int], fit_offset: bool = False, bounds: tuple[float, float] = (0.01, 100.0)
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
    result = minimize(lambda v: nll(v[0], v[1]), x0=[log_t, 0.0], method="L-BFGS-B",
                      bounds=[log_bounds, (float(m.min()) - spread, float(m.max()) + spread)])
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
    candidates = np.concatenate([[distinct[0] - 1e-9], (distinct[1:] + distinct[:-1]) / 2, [np.nextafter(distinct[-1], 2.0)]])
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
    def from_json(cls, data: dict[str, Any]) -> "StyleCalibration":
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
    from bookmatch.cohort import COHORT_FILE

    return Path(model_dir).resolve().parent / COHORT_FILE


def load_score_cohort(model_dir: str | os.PathLike, calibration: Calibration | None):
    """The score cohort `calibration` was fitted with (beside calibration.json), or None when it has none."""
    if calibration is None or calibration.cohort_sha256 is None:
        return None
    from bookmatch.cohort import read_cohort

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
            temperature=float(data["temperature"]), threshold=float(data["threshold"]), offset=float(data.get("offset", 0.0)),
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
        raise InputError(f"calibration file {path} is unreadable or corrupt ({first_line(err, 200)}); re-run `bookmatch calibrate` or delete it") from err
    fitted_for = data.get("model_kind")
    if model_kind is not None and fitted_for is not None and fitted_for != model_kind:
        raise InputError(f"calibration file {path} was fitted for a {fitted_for}, not this {model_kind}; keep each model in its own run folder or re-run `bookmatch calibrate`")
    return calibration


def load_style_calibration(model_dir: str | os.PathLike) -> StyleCalibration | None:
    path = style_calibration_path(model_dir)
    if not path.exists():
        return None
    try:
        return StyleCalibration.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(f"style calibration file {path} is unreadable or corrupt ({first_line(err, 200)}); re-run `bookmatch calibrate` or delete it") from err


def calibration_figures(labels: Sequence[int], probabilities: Sequence[float], threshold: float) -> dict[str, Any]:
    figures = compute_metrics(labels, probabilities, threshold)
    figures["nll"] = binary_nll(labels, probabilities)
    return figures


# ---------------------------------------------------------------------------------------------- data


@dataclass
class LabelledPairs:
    text1: list[str]
    text2: list[str]
    labels: list[int]
    kinds: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)


def load_labelled_pairs(data_dir: str | os.PathLike | None = None, split: str = "validation", pairs_file: str | os.PathLike | None = None, max_pairs: int | None = None) -> LabelledPairs:
    """Labelled pairs from a prepared DatasetDict split, or from a JSONL file (`text1, text2, label[, kind]`).

    The kind of a dataset pair is its `neg_type` for negatives and "positive" for positives.
    """
    if (data_dir is None) == (pairs_file is None):
        raise InputError("give exactly one of --data (a prepared dataset folder) or --pairs (a JSONL file)")
    if pairs_file is not None:
        from bookmatch.inference import read_pairs_jsonl

        rows = []
        for _, row in read_pairs_jsonl(pairs_file, require_label=True):
            rows.append(row)
            if max_pairs is not None and len(rows) >= max_pairs:
                break
        return LabelledPairs(
            [r["text1"] for r in rows], [r["text2"] for r in rows], [int(r["label"]) for r in rows],
            [str(r.get("kind") or ("positive" if int(r["label"]) == 1 else "negative")) for r in rows], str(pairs_file),
        )
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"dataset folder {data_dir} does not exist: pass the folder written by `bookmatch prepare`")
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(str(data_dir))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise InputError(f"{data_dir} is not a saved dataset ({err}); pass the folder written by `bookmatch prepare`") from err
    if split not in dataset:
        raise InputError(f"dataset {data_dir} has no split {split!r} (it has {', '.join(dataset.keys())})")
    part = dataset[split]
    if max_pairs is not None and len(part) > max_pairs:
        part = part.select(range(max_pairs))
    for column in ("text1", "text2", "label"):
        if column not in part.column_names:
            raise InputError(f"dataset {data_dir} split {split!r} lacks the column {column!r}")
    labels = [int(v) for v in part["label"]]
    if "neg_type" in part.column_names:
        kinds = ["positive" if label == 1 else (neg or "negative") for label, neg in zip(labels, part["neg_type"])]
    elif "pair_type" in part.column_names:
        kinds = list(part["pair_type"])
    else:
        kinds = ["positive" if label == 1 else "negative" for label in labels]
    return LabelledPairs(list(part["text1"]), list(part["text2"]), labels, kinds, f"{data_dir}[{split}]")


# ---------------------------------------------------------------------------------------------- stage


@dataclass
class CalibrateConfig:
    model_dir: str = setting("", "The model's final/ folder (bi-encoder or cross-encoder).", cli=False)
    data_dir: str | None = setting(None, "Prepared dataset folder (from `bookmatch prepare`).", cli=False)
    pairs_file: str | None = setting(None, "Or a JSONL file of labelled pairs (text1, text2, label).", cli=False)
    split: str = setting("validation", "Dataset split to fit on.")
    target: str = setting("accuracy", "Metric the threshold maximises.", choices=TARGETS)
    batch_size: int = setting(64, "Pairs per forward pass.", ge=1)
    max_pairs: int | None = setting(None, "Use at most this many pairs (null: all).", ge=1)
    device: str | None = setting(None, "torch device (null: cuda if available, else cpu).")
    fit_offset: bool = setting(True, "Platt scaling (a temperature and an offset); false: the temperature alone.")
    precision: str = setting("auto", "Encoders' autocast: auto = bf16 where native, else fp32.", choices=PRECISIONS)
    # 64 to 546 measured about equal, and each costs every scored text one classifier row.
    cohort_size: int = setting(256, "Bi-encoder score cohort (bookmatch.cohort): training passages spread over the "
                               "training books that normalise margins (0: none).", ge=0)
    cohort_data: str | None = setting(None, "Prepared dataset whose train split gives the cohort (null: data_dir).")

    def __post_init__(self) -> None:
        # Checked here, not when the stage runs: the pipeline builds every config before prepare and training.
        check_settings(self)


def calibrate(config: CalibrateConfig | str | os.PathLike, data_dir: str | os.PathLike | None = None, target: str | None = None, **options: Any) -> dict[str, Any]:
    """Fit temperature + threshold (and the style map for a bi-encoder); write them beside the model.

    Call with a CalibrateConfig, or as `calibrate(model_dir, data_dir, target, **other CalibrateConfig
    fields)`. Returns the content of calibration.json.
    """
    if not isinstance(config, CalibrateConfig):
        config = CalibrateConfig(model_dir=os.fspath(config), data_dir=None if data_dir is None else os.fspath(data_dir), target=target or "accuracy", **options)
    from bookmatch.inference import BI_ENCODER, detect_model_kind, load_scorer
    from bookmatch.progress import summary_line

    kind = detect_model_kind(config.model_dir)
    pairs = load_labelled_pairs(config.data_dir, config.split, config.pairs_file, config.max_pairs)
    if len(set(pairs.labels)) < 2:
        raise InputError(f"{pairs.source} must hold both same-book and different-book pairs to calibrate")
    scorer = load_scorer(config.model_dir, kind, config.device, config.precision)
    config = dataclasses.replace(config, precision=scorer.precision)  # saved resolved: what the scores were computed in
    start = time.perf_counter()
    cohort = _build_cohort(scorer, config) if kind == BI_ENCODER else None
    raw = scorer.raw_scores(pairs.text1, pairs.text2, batch_size=config.batch_size, show_progress=True)
    seconds = time.perf_counter() - start
    labels = np.asarray(pairs.labels)

    temperature, offset = fit_temperature(raw.score, labels, fit_offset=config.fit_offset)
    before = probability_from_margin(raw.margin, 1.0)
    after = probability_from_margin(raw.score, temperature, offset)
    threshold = best_threshold(labels, after, config.target)
    result: dict[str, Any] = {
        "model_kind": kind,
        "model_dir": str(Path(config.model_dir).resolve()),
        "source": pairs.source,
        "pairs": len(pairs),
        "temperature": temperature,
        "offset": offset,
        "threshold": threshold,
        "target": config.target,
        "score_normalization": None,
        "before": calibration_figures(labels, before, 0.5),
        "after": calibration_figures(labels, after, threshold),
        "config": dataclasses.asdict(config),
    }
    # calibration.json is the stage's completion marker (the pipeline skips a calibrated model): remove the old
    # one, write the style map, and write calibration.json last, so a run cut in between is redone.
    calibration_path(config.model_dir).unlink(missing_ok=True)
    cohort_path(config.model_dir).unlink(missing_ok=True)
    if cohort is not None:
        from bookmatch.cohort import COHORT_FILE, write_cohort

        sha256 = write_cohort(cohort, cohort_path(config.model_dir))
        result["score_normalization"] = {"method": "cohort mean margin", "file": COHORT_FILE, "texts": len(cohort), "sha256": sha256,
                                         "source": f"{config.cohort_data or config.data_dir}[train]"}
    if raw.cosine is not None:
        style = fit_style_calibration(raw.cosine, labels)
        payload = style.to_json()
        payload["pairs"] = len(pairs)
        payload["source"] = pairs.source
        atomic_write_json(style_calibration_path(config.model_dir), payload)
    atomic_write_json(calibration_path(config.model_dir), result)
    log.info(summary_line("calibrate: scored", len(pairs), seconds, "pairs"))
    return result


def _build_cohort(scorer, config: CalibrateConfig):
    """Encode the score cohort from the training split and hand it to `scorer`; None when there is none to take."""
    source = config.cohort_data or config.data_dir
    if config.cohort_size == 0:
        return None
    if source is None:
        log.warning("calibrate: no prepared dataset to draw a score cohort from (--pairs without --cohort-data): margins are not normalised")
        return None
    from bookmatch.cohort import ScoreCohort, select_cohort_texts

    texts = select_cohort_texts(source, config.cohort_size)
    if not texts:
        log.warning("calibrate: %s has no training passages (train split) to draw a score cohort from: margins are not normalised", source)
        return None
    embeddings = scorer.embed(texts, batch_size=config.batch_size)
    scorer.cohort = cohort = ScoreCohort(*embeddings)
    log.info("calibrate: score cohort of %d training passages", len(cohort))
    return cohort

