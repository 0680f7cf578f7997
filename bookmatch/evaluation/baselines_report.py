"""report.md of `bookmatch baselines`: AUC with bootstrap intervals per method and kind, then evaluate's metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bookmatch.evaluation.report import TABLE_METRICS, _table


def _with_interval(figures: Mapping[str, float] | None) -> str:
    if not figures:
        return "n/a"
    return f"{figures['auc']:.3f} [{figures['low']:.3f}, {figures['high']:.3f}]"


def render_baselines_report(result: Mapping[str, Any], roc_png: str | None = None) -> str:
    """The Markdown report for a baselines.json dict (as `run_baselines` returns it)."""
    boot = result["bootstrap"]
    subsets = list(next(iter(result["auc"].values())))
    kinds = ", ".join(f"{k} {n}" for k, n in result["kinds"].items())
    lines = [
        "# bookmatch baselines",
        "",
        f"- pairs: {result['pairs']} ({result['positives']} same-book) from `{result['source']}`; kinds: {kinds}",
        f"- 95% intervals: percentile bootstrap, {boot['resamples']} resamples (seed {boot['seed']}) drawn within each "
        "class, the same resamples for every method",
    ]
    if "st_recipe_train_seconds" in result:
        lines.append(f"- stock recipe trained in {result['st_recipe_train_seconds']} s")
    lines += ["", "## ROC AUC [95% interval]", ""]
    lines += _table(
        ["method"] + [_subset_title(s) for s in subsets],
        [[name] + [_with_interval(by_subset.get(s)) for s in subsets] for name, by_subset in result["auc"].items()],
    )
    lines += [
        "",
        "A kind holding one class only is measured against all pairs of the other class (a negative kind: its",
        "pairs vs all positives), as `bookmatch evaluate` reports it.",
        "",
        "## Metrics (as `bookmatch evaluate` computes them)",
        "",
    ]
    methods = result["methods"]
    lines += _table(
        ["method", "threshold"] + list(TABLE_METRICS),
        [[name, m["metrics"]["threshold"]] + [m["metrics"][k] for k in TABLE_METRICS] for name, m in methods.items()],
    )
    lines += [
        "",
        "Only AUC and average precision compare across methods: the threshold figures of a cosine are those of a",
        "fixed mapping into [0, 1] at 0.5, not of a tuned decision, and its Brier and ECE are not of a probability.",
        "",
        "## Methods",
        "",
    ]
    lines += [f"- **{name}**: {m['note']}; scored in {m['seconds']:.1f} s" for name, m in methods.items()]
    for name, m in methods.items():
        lines += ["", f"### By kind: {name}", ""]
        lines += _table(
            ["kind", "n", "auc vs"] + list(TABLE_METRICS),
            [
                [kind, figures["n"], figures.get("auc_against", "")] + [figures[k] for k in TABLE_METRICS]
                for kind, figures in m["by_kind"].items()
            ],
        )
    if roc_png:
        lines += ["", "## ROC curves", "", f"![ROC curves]({roc_png})"]
    return "\n".join(lines) + "\n"


def _subset_title(subset: str) -> str:
    return "all pairs" if subset == "all" else subset
