"""report.md: the evaluation figures as Markdown tables (before/after calibration, per kind of pair)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TABLE_METRICS = ("accuracy", "precision", "recall", "f1", "auc", "average_precision", "brier", "ece", "c_at_1", "f05u")


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def render_report(metrics: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    """The Markdown report for a metrics.json dict (as written by `evaluate`) and {title: png file name}."""
    settings = [name for name in ("uncalibrated", "calibrated") if metrics.get(name)]
    lines = [
        "# bookmatch evaluation",
        "",
        f"- model: `{metrics['model_dir']}`"
        + (f"; cross-encoder: `{metrics['cross_model_dir']}`" if metrics.get("cross_model_dir") else ""),
        f"- mode: {metrics['mode']}; pairs: {metrics['pairs']} ({metrics['positives']} same-book) from `{metrics['source']}`",
    ]
    calibration = metrics.get("calibration")
    if calibration:
        lines.append("- calibration: " + ", ".join(f"{k} {_fmt(v)}" for k, v in calibration.items()))
    else:
        lines.append(
            "- calibration: none found beside the model (run `bookmatch calibrate`); only uncalibrated figures"
        )
    if metrics.get("stages"):
        lines.append("- decided by: " + ", ".join(f"{k} {v}" for k, v in metrics["stages"].items()))
    lines += [
        "",
        "Uncalibrated: softmax of the raw logits, threshold 0.5. Calibrated: the logit margin (for a bi-encoder with a",
        "score cohort, less its two texts' mean margins against the cohort) scaled by the temperature and offset, and",
        "the threshold from calibration.json. c@1 and F0.5u follow the PAN evaluator (a score of exactly 0.5 is a",
        "non-answer; scores are mapped so the threshold lands on 0.5). ECE: 15 equal-width bins.",
        "",
        "## Overall",
        "",
    ]
    lines += _table(
        ["setting", "threshold"] + list(TABLE_METRICS),
        [[s, metrics[s]["threshold"]] + [metrics[s][m] for m in TABLE_METRICS] for s in settings],
    )
    for setting in settings:
        by_kind = metrics["by_kind"].get(setting) or {}
        lines += ["", f"## By kind ({setting})", ""]
        lines += _table(
            ["kind", "n", "auc vs"] + list(TABLE_METRICS),
            [
                [kind, figures["n"], figures.get("auc_against", "")] + [figures[m] for m in TABLE_METRICS]
                for kind, figures in by_kind.items()
            ],
        )
    lines += [
        "",
        "A kind holding one class only has its AUC and average precision measured against all pairs of the",
        "other class (e.g. these negatives vs all positives), as the `auc vs` column says. For such a kind,",
        "accuracy is the share answered correctly (specificity for negatives); precision, recall and F1 are degenerate.",
    ]
    style = metrics.get("style_similarity")
    if style:
        lines += [
            "",
            "## Style similarity",
            "",
            f"ROC AUC of the cosine of the projected embeddings for 'same book': {_fmt(style.get('auc'))}",
        ]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{title}]({name})" for title, name in plots.items()]
    return "\n".join(lines) + "\n"
