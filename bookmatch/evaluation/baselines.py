"""`bookmatch baselines`: the references a bookmatch model is judged against, scored on the same labelled pairs.

Methods, each giving every pair a score:
- character 1-4-gram and word TF-IDF cosine (sublinear tf), fitted on the distinct texts of the pairs themselves
  (no labels read: what a user without training data would do);
- a sentence-transformers model zero-shot (default all-MiniLM-L6-v2): cosine of its normalised embeddings;
- when asked, the stock sentence-transformers recipe (`st_recipe`) trained on a prepared dataset's train positives;
- each bookmatch model given (bi-encoder or cross-encoder `final/` folder), as `bookmatch evaluate` scores it:
  the calibrated P(same book) when a calibration sits beside the model, else the softmax of its logits.

For each: ROC AUC overall and per `kind` with stratified bootstrap 95% intervals (the same resamples for every
method), the metrics table of `bookmatch evaluate`, and one ROC plot. Writes baselines.json (last: its presence
marks a finished report), report.md, roc.png, scores.jsonl and config.yaml into the report folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bookmatch.config import check_settings, save_config, setting
from bookmatch.errors import InputError
from bookmatch.evaluation.bootstrap import percentile_interval, resampled_aucs, stratified_resamples
from bookmatch.evaluation.metrics import compute_metrics, metrics_by_kind
from bookmatch.evaluation.st_recipe import DEFAULT_ST_MODEL, RecipeSettings
from bookmatch.precision import PRECISIONS
from bookmatch.storage import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

RESULT_FILE = "baselines.json"
TFIDF_METHODS = {
    # name: TfidfVectorizer arguments
    "char 1-4-gram TF-IDF cosine": {"analyzer": "char", "ngram_range": (1, 4), "sublinear_tf": True},
    "word TF-IDF cosine": {"analyzer": "word", "ngram_range": (1, 1), "sublinear_tf": True},
}


@dataclass
class BaselinesConfig:
    pairs_file: str = setting("", "Labelled JSONL pairs: text1, text2, label[, kind].", cli=False)
    report_dir: str = setting("", "Folder for baselines.json, report.md, roc.png, scores.jsonl.", cli=False)
    model_dirs: tuple[str, ...] = setting(
        (), "bookmatch models (final/ folders) to score beside the baselines.", cli=False
    )
    tfidf: bool = setting(True, "Score the character and word TF-IDF cosines.")
    zero_shot: bool = setting(True, "Score the sentence-transformers model zero-shot.")
    st_model: str = setting(DEFAULT_ST_MODEL, "sentence-transformers model: zero-shot, and the stock recipe's start.")
    st_seq_length: int = setting(256, "Tokens of each text the sentence-transformers models read when scoring.", ge=1)
    st_recipe_data: str | None = setting(
        None, "Prepared dataset whose train positives the stock recipe trains on (null: no stock recipe).", cli=False
    )
    st_steps: int = setting(RecipeSettings.steps, "Stock recipe: training steps.", ge=1)
    st_batch_size: int = setting(RecipeSettings.batch_size, "Stock recipe: pairs per step.", ge=2)
    st_lr: float = setting(RecipeSettings.lr, "Stock recipe: learning rate.", gt=0)
    st_train_seq_length: int = setting(RecipeSettings.train_seq_length, "Stock recipe: tokens read in training.", ge=1)
    bootstrap: int = setting(1000, "Bootstrap resamples for the 95% intervals.", ge=10)
    seed: int = setting(0, "Seed of the bootstrap resamples (and of the stock recipe's shuffle).", ge=0)
    max_pairs: int | None = setting(None, "Score at most this many pairs (null: all).", ge=1)
    batch_size: int = setting(32, "Texts (or pairs) per forward pass.", ge=1)
    device: str | None = setting(None, "torch device (null: cuda if available, else cpu).")
    precision: str = setting("auto", "Encoders' autocast: auto = bf16 where native, else fp32.", choices=PRECISIONS)

    def __post_init__(self) -> None:
        self.model_dirs = tuple(str(m) for m in self.model_dirs)
        check_settings(self)


@dataclass
class MethodScores:
    """One method's scores of the pairs: `probability` in [0, 1] (ranks the pairs: AUC, ROC) and the threshold
    its decisions use (threshold metrics)."""

    name: str
    probability: np.ndarray
    threshold: float
    note: str
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------ the methods


def tfidf_cosines(text1: Sequence[str], text2: Sequence[str], **vectorizer_args: Any) -> np.ndarray:
    """Cosine of each pair's TF-IDF vectors, the vectorizer fitted on the pairs' distinct texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = sorted(set(text1) | set(text2))
    matrix = TfidfVectorizer(**vectorizer_args).fit_transform(texts)  # rows are L2-normalised
    index = {t: i for i, t in enumerate(texts)}
    a = matrix[[index[t] for t in text1]]
    b = matrix[[index[t] for t in text2]]
    return np.clip(np.asarray(a.multiply(b).sum(axis=1)).ravel(), 0.0, 1.0)


def _tfidf_methods(pairs) -> list[MethodScores]:
    methods = []
    for name, args in TFIDF_METHODS.items():
        start = time.perf_counter()
        cosine = tfidf_cosines(pairs.text1, pairs.text2, **args)
        note = "cosine in [0, 1], threshold 0.5; fitted on the pairs' own texts"
        methods.append(MethodScores(name, cosine, 0.5, note, time.perf_counter() - start))
    return methods


def _st_methods(config: BaselinesConfig, pairs) -> tuple[list[MethodScores], dict[str, Any]]:
    """Zero-shot and/or stock-recipe cosines of the sentence-transformers model."""
    from bookmatch.evaluation.st_recipe import cosine_scores, load_sentence_transformer, train_stock_recipe
    from bookmatch.inference.loading import resolve_device
    from bookmatch.precision import autocast, resolve_mixed_precision

    device = resolve_device(config.device)
    precision = resolve_mixed_precision(config.precision, use_cuda=device.startswith("cuda"))
    model = load_sentence_transformer(config.st_model, device=device)
    device_type = model.device.type
    note = f"(cosine + 1) / 2, threshold 0.5; first {config.st_seq_length} tokens of each text"
    methods, info = [], {"precision": precision}

    def score(name: str) -> None:
        start = time.perf_counter()
        with autocast(precision, device_type):
            cosine = cosine_scores(model, pairs.text1, pairs.text2, config.st_seq_length, config.batch_size)
        methods.append(MethodScores(name, (cosine + 1) / 2, 0.5, note, time.perf_counter() - start))

    short = Path(config.st_model).name
    if config.zero_shot:
        score(f"{short} zero-shot cosine")
    if config.st_recipe_data:
        settings = RecipeSettings(
            steps=config.st_steps,
            batch_size=config.st_batch_size,
            lr=config.st_lr,
            train_seq_length=config.st_train_seq_length,
            seed=config.seed,
        )
        info["st_recipe_train_seconds"] = round(
            train_stock_recipe(model, config.st_recipe_data, settings, precision), 1
        )
        score(f"{short} stock recipe cosine ({settings.steps} steps)")
    return methods, info


def _model_method(model_dir: str, pairs, config: BaselinesConfig) -> MethodScores:
    """A bookmatch model scored as `bookmatch evaluate` scores it (its calibrated P(same book) when calibrated)."""
    from bookmatch.inference.calibration import load_calibration, load_score_cohort, probability_from_margin
    from bookmatch.inference.loading import BI_ENCODER, detect_model_kind
    from bookmatch.inference.scorers import load_scorer

    kind = detect_model_kind(model_dir)
    calibration = load_calibration(model_dir, kind)
    scorer = load_scorer(model_dir, kind, config.device, config.precision)
    if kind == BI_ENCODER:
        scorer.cohort = load_score_cohort(model_dir, calibration)
    start = time.perf_counter()
    raw = scorer.raw_scores(pairs.text1, pairs.text2, batch_size=config.batch_size, show_progress=True)
    seconds = time.perf_counter() - start
    name = f"bookmatch {kind} `{_short_path(model_dir)}`"
    if calibration is None:
        note = "softmax of the logits, threshold 0.5 (no calibration.json beside the model)"
        return MethodScores(name, probability_from_margin(raw.margin), 0.5, note, seconds)
    note = f"calibrated P(same book), threshold {calibration.threshold:.3f}; {scorer.precision}"
    return MethodScores(name, calibration.probabilities(raw.score), calibration.threshold, note, seconds)


def _short_path(path: str) -> str:
    parts = Path(path).resolve().parts
    return "/".join(parts[-4:])


# ------------------------------------------------------------------------------------------------ the figures


def auc_subsets(labels: np.ndarray, kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """Masks of the pairs each AUC is measured on: "all", and per kind its own pairs, or, for a kind holding one
    class only, its pairs against all pairs of the other class (as `metrics_by_kind` measures it); a kind whose
    mask is every pair (the positives, when they are the only positive kind) is "all" already."""
    k = np.asarray(kinds, dtype=object)
    subsets = {"all": np.ones(len(labels), dtype=bool)}
    for kind in sorted(set(k.tolist())):
        mask = k == kind
        classes = set(labels[mask].tolist())
        if len(classes) == 1:
            mask = mask | (labels == 1 - classes.pop())
        if len(set(labels[mask].tolist())) == 2 and not mask.all():  # all pairs (the positives vs all): "all"
            subsets[str(kind)] = mask
    return subsets


def auc_with_intervals(
    labels: np.ndarray, kinds: Sequence[str], methods: Sequence[MethodScores], n_resamples: int, seed: int
) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {subset: {auc, low, high}}}: sklearn's AUC and its percentile bootstrap interval, each subset's
    resamples drawn once (from `seed`) and shared by every method."""
    from sklearn.metrics import roc_auc_score

    result: dict[str, dict[str, dict[str, float]]] = {m.name: {} for m in methods}
    for subset, mask in auc_subsets(labels, kinds).items():
        rows = np.flatnonzero(mask)
        y = labels[rows]
        resamples = stratified_resamples(y, n_resamples, seed)
        for method in methods:
            p = method.probability[rows]
            low, high = percentile_interval(resampled_aucs(p, resamples, int(y.sum())))
            result[method.name][subset] = {"auc": float(roc_auc_score(y, p)), "low": low, "high": high}
    return result


def _method_figures(method: MethodScores, labels: np.ndarray, kinds: Sequence[str]) -> dict[str, Any]:
    return {
        "note": method.note,
        "seconds": round(method.seconds, 2),
        "metrics": compute_metrics(labels, method.probability, method.threshold),
        "by_kind": metrics_by_kind(labels, method.probability, kinds, method.threshold),
    }


# ------------------------------------------------------------------------------------------------ the stage


def run_baselines(config: BaselinesConfig) -> dict[str, Any]:
    """Score the pairs with every method asked for; write the report folder; return baselines.json's dict."""
    from bookmatch.evaluation.evaluate import _writable_report_dir
    from bookmatch.inference.pairs_file import load_labelled_pairs

    if not config.pairs_file:
        raise InputError("no pairs file given: pass --pairs FILE (JSONL: text1, text2, label[, kind])")
    report_dir = _writable_report_dir(config.report_dir)
    pairs = load_labelled_pairs(pairs_file=config.pairs_file, max_pairs=config.max_pairs)
    labels = np.asarray(pairs.labels, dtype=np.int64)
    if len(set(labels.tolist())) < 2:
        raise InputError(f"{pairs.source} must hold both same-book (label 1) and other (label 0) pairs")
    methods, info = _score_all(config, pairs)
    if not methods:
        raise InputError("nothing to compare: every method is switched off and no --model was given")
    result = {
        "source": pairs.source,
        "pairs": len(labels),
        "positives": int(labels.sum()),
        "kinds": {k: int(n) for k, n in zip(*np.unique(np.asarray(pairs.kinds, dtype=object), return_counts=True))},
        "bootstrap": {"resamples": config.bootstrap, "seed": config.seed, "level": 0.95, "stratified": True},
        "auc": auc_with_intervals(labels, pairs.kinds, methods, config.bootstrap, config.seed),
        "methods": {m.name: _method_figures(m, labels, pairs.kinds) for m in methods},
        **info,
    }
    _write_report(report_dir, config, result, labels, pairs.kinds, methods)
    return result


def _score_all(config: BaselinesConfig, pairs) -> tuple[list[MethodScores], dict[str, Any]]:
    methods: list[MethodScores] = []
    info: dict[str, Any] = {}
    if config.tfidf:
        methods += _tfidf_methods(pairs)
    if config.zero_shot or config.st_recipe_data:
        st_methods, info = _st_methods(config, pairs)
        methods += st_methods
    for model_dir in config.model_dirs:
        methods.append(_model_method(model_dir, pairs, config))
    for method in methods:
        log.info("baselines: %s scored %d pairs in %.1f s", method.name, len(pairs), method.seconds)
    return methods, info


def _write_report(
    report_dir: Path, config: BaselinesConfig, result: dict[str, Any], labels, kinds, methods: list[MethodScores]
) -> None:
    import json

    from bookmatch.evaluation import plots
    from bookmatch.evaluation.baselines_report import render_baselines_report

    (report_dir / RESULT_FILE).unlink(missing_ok=True)  # written last: a run cut short leaves none
    lines = [
        json.dumps(
            {"index": i, "label": int(labels[i]), "kind": kinds[i]} | {m.name: float(m.probability[i]) for m in methods}
        )
        for i in range(len(labels))
    ]
    atomic_write_text(report_dir / "scores.jsonl", "\n".join(lines) + "\n")
    plots.plot_roc(labels, {m.name: m.probability for m in methods}, report_dir / "roc.png")
    atomic_write_text(report_dir / "report.md", render_baselines_report(result, "roc.png"))
    save_config(config, report_dir / "config.yaml")
    atomic_write_json(report_dir / RESULT_FILE, result)
