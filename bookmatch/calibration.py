"""The calibrate stage: score a labelled split with a trained model, fit the calibration artifacts
(`bookmatch.inference.calibration`: temperature, offset, threshold, style map, score cohort) and write them
beside the model."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bookmatch.cohort import COHORT_FILE, ScoreCohort, select_cohort_texts, write_cohort
from bookmatch.config import check_settings, setting
from bookmatch.errors import InputError
from bookmatch.inference import BI_ENCODER, detect_model_kind, load_scorer
from bookmatch.inference.calibration import (
    TARGETS,
    best_threshold,
    calibration_figures,
    calibration_path,
    cohort_path,
    fit_style_calibration,
    fit_temperature,
    probability_from_margin,
    style_calibration_path,
)
from bookmatch.inference.pairs_file import load_labelled_pairs
from bookmatch.precision import PRECISIONS
from bookmatch.progress import summary_line
from bookmatch.storage import atomic_write_json

log = logging.getLogger(__name__)


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
    cohort_size: int = setting(
        256,
        "Bi-encoder score cohort (bookmatch.cohort): training passages spread over the "
        "training books that normalise margins (0: none).",
        ge=0,
    )
    cohort_data: str | None = setting(None, "Prepared dataset whose train split gives the cohort (null: data_dir).")

    def __post_init__(self) -> None:
        # Checked here, not when the stage runs: the pipeline builds every config before prepare and training.
        check_settings(self)


def calibrate(
    config: CalibrateConfig | str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    target: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Fit temperature + threshold (and the style map for a bi-encoder); write them beside the model.

    Call with a CalibrateConfig, or as `calibrate(model_dir, data_dir, target, **other CalibrateConfig
    fields)`. Returns the content of calibration.json.
    """
    if not isinstance(config, CalibrateConfig):
        config = CalibrateConfig(
            model_dir=os.fspath(config),
            data_dir=None if data_dir is None else os.fspath(data_dir),
            target=target or "accuracy",
            **options,
        )
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
        sha256 = write_cohort(cohort, cohort_path(config.model_dir))
        result["score_normalization"] = {
            "method": "cohort mean margin",
            "file": COHORT_FILE,
            "texts": len(cohort),
            "sha256": sha256,
            "source": f"{config.cohort_data or config.data_dir}[train]",
        }
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
        log.warning(
            "calibrate: no prepared dataset to draw a score cohort from (--pairs without --cohort-data): margins are not normalised"
        )
        return None
    texts = select_cohort_texts(source, config.cohort_size)
    if not texts:
        log.warning(
            "calibrate: %s has no training passages (train split) to draw a score cohort from: margins are not normalised",
            source,
        )
        return None
    embeddings = scorer.embed(texts, batch_size=config.batch_size)
    scorer.cohort = cohort = ScoreCohort(*embeddings)
    log.info("calibrate: score cohort of %d training passages", len(cohort))
    return cohort
