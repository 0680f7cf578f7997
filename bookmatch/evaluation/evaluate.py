"""The evaluate stage: score labelled pairs, write metrics.json, report.md, plots and predictions.jsonl."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bookmatch.config import check_settings, save_config, setting
from bookmatch.errors import InputError
from bookmatch.evaluation import plots
from bookmatch.evaluation.metrics import compute_metrics, metrics_by_kind
from bookmatch.evaluation.report import render_report
from bookmatch.inference.calibration import Calibration, load_calibration, load_score_cohort, probability_from_margin
from bookmatch.inference.pairs_file import load_labelled_pairs
from bookmatch.precision import PRECISIONS
from bookmatch.storage import atomic_write_json, atomic_write_text, os_reason

log = logging.getLogger(__name__)

MODES = ("contrastive", "two-stage")


@dataclass
class EvaluateConfig:
    model_dir: str = setting("", "The bi-encoder's final/ folder.", cli=False)
    report_dir: str = setting("", "Folder for metrics.json, report.md, plots, predictions.jsonl.", cli=False)
    data_dir: str | None = setting(None, "Prepared dataset folder (from `bookmatch prepare`).", cli=False)
    pairs_file: str | None = setting(None, "Or a JSONL file: text1, text2, label[, kind].", cli=False)
    split: str = setting("test", "Dataset split to evaluate.")
    cross_model_dir: str | None = setting(None, "Cross-encoder final/ folder (two-stage).", cli=False)
    mode: str = setting("contrastive", "Which model decides.", choices=MODES)
    batch_size: int = setting(64, "Pairs per forward pass.", ge=1)
    max_pairs: int | None = setting(None, "Evaluate at most this many pairs (null: all).", ge=1)
    prefilter_threshold: float | None = setting(
        None,
        "Two-stage: bi-encoder probability below which a pair is "
        "rejected at once (null: the bi-encoder's calibrated threshold, else "
        "0.5).",
        ge=0,
        le=1,
    )
    device: str | None = setting(None, "torch device (null: cuda if available, else cpu).")
    precision: str = setting("auto", "Encoders' autocast: auto = bf16 where native, else fp32.", choices=PRECISIONS)

    def __post_init__(self) -> None:
        # Checked here, not when the stage runs: the pipeline builds every config before prepare and training.
        check_settings(self)


# Written last by `evaluate`: its presence means every other report file is complete (the pipeline's marker).
METRICS_FILE = "metrics.json"
REPORT_FILES = ("predictions.jsonl", "report.md", "config.yaml", "roc.png", "reliability.png", "score_histograms.png")


@dataclass
class _Scores:
    probability: np.ndarray
    decisions: np.ndarray
    threshold: float
    stage: np.ndarray | None = None


def _two_stage(bi_margin, cross_margin, bi_cal: Calibration, cross_cal: Calibration, prefilter: float) -> _Scores:
    from bookmatch.inference import BI_ENCODER, CROSS_ENCODER, two_stage_decision

    probability, same_book, by_cross = two_stage_decision(
        bi_cal.probabilities(bi_margin), cross_cal.probabilities(cross_margin), prefilter, cross_cal.threshold
    )
    return _Scores(probability, same_book, cross_cal.threshold, np.where(by_cross, CROSS_ENCODER, BI_ENCODER))


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Write metrics.json, report.md, roc.png, reliability.png, score_histograms.png, predictions.jsonl and
    config.yaml into `config.report_dir`; return the metrics dict."""
    from bookmatch.inference import BI_ENCODER, BiEncoderScorer, CrossEncoderScorer, load_bi_encoder, load_cross_encoder
    from bookmatch.progress import summary_line

    if config.mode == "two-stage" and not config.cross_model_dir:
        raise InputError("--mode two-stage needs --cross-model (the cross-encoder's final/ folder)")
    report_dir = _writable_report_dir(config.report_dir)
    pairs = load_labelled_pairs(config.data_dir, config.split, config.pairs_file, config.max_pairs)
    if len(pairs) == 0:
        raise InputError(f"{pairs.source} holds no pairs to evaluate")
    labels = np.asarray(pairs.labels, dtype=np.int64)
    kinds = list(pairs.kinds)

    bi_cal = load_calibration(config.model_dir, BI_ENCODER)
    bi = BiEncoderScorer(
        load_bi_encoder(config.model_dir, config.device),
        precision=config.precision,
        cohort=load_score_cohort(config.model_dir, bi_cal),
    )
    cross = (
        CrossEncoderScorer(load_cross_encoder(config.cross_model_dir, config.device), config.precision)
        if config.mode == "two-stage"
        else None
    )
    config = dataclasses.replace(config, precision=bi.precision)  # saved resolved: what the scores were computed in
    start = time.perf_counter()
    bi_raw = bi.raw_scores(pairs.text1, pairs.text2, batch_size=config.batch_size, show_progress=True)
    if cross is None:
        outcome = _contrastive_outcome(bi_raw, bi_cal, bi)
    else:
        outcome = _two_stage_outcome(config, pairs, bi_raw, bi_cal, cross)
    seconds = time.perf_counter() - start

    metrics = _metrics(config, pairs.source, labels, kinds, outcome, bi_raw.cosine, seconds)
    # metrics.json marks a finished report: drop an old one first and write it last, so a run cut while
    # plotting is redone instead of skipped with files missing.
    (report_dir / METRICS_FILE).unlink(missing_ok=True)
    _write_predictions(
        report_dir / "predictions.jsonl", labels, kinds, outcome.uncalibrated, outcome.calibrated, bi_raw.cosine
    )
    plot_files = _write_plots(report_dir, labels, kinds, outcome.uncalibrated, outcome.calibrated)
    atomic_write_text(report_dir / "report.md", render_report(metrics, plot_files))
    save_config(config, report_dir / "config.yaml")
    atomic_write_json(report_dir / METRICS_FILE, metrics)
    log.info(summary_line("evaluate: scored", len(pairs), seconds, "pairs"))
    return metrics


@dataclass
class _Outcome:
    """Scores of one evaluation before and (when the model has a calibration) after calibrating."""

    uncalibrated: _Scores
    calibrated: _Scores | None
    calibration_info: dict[str, Any] | None
    prefilter_threshold: float | None = None  # two-stage: the prefilter the reported (final) scores used


def _contrastive_outcome(bi_raw, bi_cal: Calibration | None, bi) -> _Outcome:
    raw_p = probability_from_margin(bi_raw.margin)
    uncalibrated = _Scores(raw_p, raw_p >= 0.5, 0.5)
    if bi_cal is None:
        return _Outcome(uncalibrated, None, None)
    cal_p = bi_cal.probabilities(bi_raw.score)
    info = {
        "temperature": bi_cal.temperature,
        "offset": bi_cal.offset,
        "threshold": bi_cal.threshold,
        "score_cohort": len(bi.cohort) if bi.cohort is not None else 0,
    }
    return _Outcome(uncalibrated, _Scores(cal_p, cal_p >= bi_cal.threshold, bi_cal.threshold), info)


def _two_stage_outcome(config: EvaluateConfig, pairs, bi_raw, bi_cal: Calibration | None, cross) -> _Outcome:
    from bookmatch.inference import CROSS_ENCODER

    cross_cal = load_calibration(config.cross_model_dir, CROSS_ENCODER)
    # The prefilter the user gives applies in both settings, as `Matcher` / `infer two-stage` apply it;
    # without one, each setting uses its own bi-encoder threshold (0.5 uncalibrated).
    raw_prefilter = config.prefilter_threshold if config.prefilter_threshold is not None else 0.5
    prefilter = (
        config.prefilter_threshold if config.prefilter_threshold is not None else (bi_cal.threshold if bi_cal else 0.5)
    )
    # The cross-encoder only reads pairs that pass a prefilter in either setting.
    needed = probability_from_margin(bi_raw.margin) >= raw_prefilter
    if bi_cal is not None:
        needed |= bi_cal.probabilities(bi_raw.score) >= prefilter
    cross_margin = np.full(len(pairs), np.nan)
    idx = np.flatnonzero(needed)
    if len(idx):
        cross_margin[idx] = cross.raw_scores(
            [pairs.text1[i] for i in idx], [pairs.text2[i] for i in idx], batch_size=config.batch_size
        ).margin
    uncalibrated = _two_stage(bi_raw.margin, cross_margin, Calibration(), Calibration(), raw_prefilter)
    if bi_cal is None and cross_cal is None:
        return _Outcome(uncalibrated, None, None, raw_prefilter)
    calibrated = _two_stage(bi_raw.score, cross_margin, bi_cal or Calibration(), cross_cal or Calibration(), prefilter)
    info = {
        "bi_temperature": (bi_cal or Calibration()).temperature,
        "prefilter_threshold": prefilter,
        "cross_temperature": (cross_cal or Calibration()).temperature,
        "cross_threshold": (cross_cal or Calibration()).threshold,
    }
    return _Outcome(uncalibrated, calibrated, info, prefilter)


def _metrics(
    config: EvaluateConfig, source: str, labels, kinds, outcome: _Outcome, cosine, seconds: float
) -> dict[str, Any]:
    uncalibrated, calibrated = outcome.uncalibrated, outcome.calibrated
    final = calibrated or uncalibrated
    return {
        "model_dir": str(config.model_dir),
        "cross_model_dir": config.cross_model_dir,
        "mode": config.mode,
        "precision": config.precision,
        "source": source,
        "pairs": len(labels),
        "positives": int(labels.sum()),
        "calibration": outcome.calibration_info,
        "prefilter_threshold": outcome.prefilter_threshold,
        "uncalibrated": compute_metrics(
            labels, uncalibrated.probability, uncalibrated.threshold, uncalibrated.decisions
        ),
        "calibrated": None
        if calibrated is None
        else compute_metrics(labels, calibrated.probability, calibrated.threshold, calibrated.decisions),
        "by_kind": {
            "uncalibrated": metrics_by_kind(
                labels, uncalibrated.probability, kinds, uncalibrated.threshold, uncalibrated.decisions
            ),
            "calibrated": None
            if calibrated is None
            else metrics_by_kind(labels, calibrated.probability, kinds, calibrated.threshold, calibrated.decisions),
        },
        "style_similarity": {"auc": compute_metrics(labels, (cosine + 1) / 2)["auc"]} if cosine is not None else None,
        "stages": None
        if final.stage is None
        else {str(k): int(v) for k, v in zip(*np.unique(final.stage, return_counts=True))},
        "seconds": round(seconds, 3),
    }


def _writable_report_dir(path: str) -> Path:
    """Create the report folder before the (long) scoring, so a location that cannot be written fails at once."""
    report_dir = Path(path)
    if not path:
        raise InputError("no report folder given: pass --report DIR")
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(
            f"cannot create the report folder {report_dir}: {os_reason(err, report_dir)}; pass a writable --report folder"
        ) from err
    if not os.access(report_dir, os.W_OK | os.X_OK):
        raise InputError(f"the report folder {report_dir} is not writable; pass a writable --report folder")
    return report_dir


def _write_predictions(path: Path, labels, kinds, uncalibrated: _Scores, calibrated: _Scores | None, cosine) -> None:
    final = calibrated or uncalibrated
    lines = []
    # Probabilities are written in full: rounded ones can cross the threshold (a weak model's scores sit
    # within 1e-6 of each other) and the file would then disagree with its own decisions and metrics.json.
    for i in range(len(labels)):
        row: dict[str, Any] = {
            "index": i,
            "probability": float(final.probability[i]),
            "decision": int(final.decisions[i]),
            "label": int(labels[i]),
            "kind": kinds[i],
            "uncalibrated_probability": float(uncalibrated.probability[i]),
        }
        if final.stage is not None:
            row["stage"] = str(final.stage[i])
        if cosine is not None:
            row["cosine"] = round(float(cosine[i]), 6)
        lines.append(json.dumps(row))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _write_plots(report_dir: Path, labels, kinds, uncalibrated: _Scores, calibrated: _Scores | None) -> dict[str, str]:
    curves = {"uncalibrated": uncalibrated.probability}
    if calibrated is not None:
        curves["calibrated"] = calibrated.probability
    final = calibrated or uncalibrated
    plots.plot_roc(labels, curves, report_dir / "roc.png")
    plots.plot_reliability(labels, curves, report_dir / "reliability.png")
    plots.plot_score_histograms(final.probability, kinds, report_dir / "score_histograms.png", final.threshold)
    return {
        "ROC curve": "roc.png",
        "Reliability diagram (before/after calibration)": "reliability.png",
        "Scores by kind": "score_histograms.png",
    }
