"""`bookmatch baselines`: TF-IDF, zero-shot and stock-recipe references beside bookmatch models, on the same pairs."""

from __future__ import annotations

import json

import click

from bookmatch.cli.options import config_options
from bookmatch.evaluation.baselines import BaselinesConfig


@click.command()
@click.option(
    "--pairs",
    "pairs_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="Labelled JSONL pairs: text1, text2, label[, kind].",
)
@click.option(
    "--report",
    "report_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for baselines.json, report.md, roc.png, scores.jsonl, config.yaml.",
)
@click.option(
    "--model",
    "model_dirs",
    multiple=True,
    type=click.Path(file_okay=False),
    help="A bookmatch model's final/ folder (bi-encoder or cross-encoder) to score beside the baselines; repeatable.",
)
@click.option(
    "--st-recipe",
    "st_recipe_data",
    default=None,
    type=click.Path(file_okay=False),
    help="Also train the stock sentence-transformers recipe on this prepared dataset's train positives.",
)
@config_options(BaselinesConfig)
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), default=None, help="YAML with BaselinesConfig options."
)
def baselines(config_file, **values):
    """ROC AUC (bootstrap 95% intervals, overall and per kind) and evaluate's metrics of character and word TF-IDF
    cosine, a sentence-transformers model zero-shot, the stock recipe (--st-recipe) and each --model, on one pairs
    file; writes report.md and roc.png. Prints the AUCs as JSON."""
    from bookmatch.config import build_config
    from bookmatch.evaluation.baselines import run_baselines

    values["model_dirs"] = values["model_dirs"] or None  # none given: not "no models" over a --config file's
    config = build_config(BaselinesConfig, config_file, values)
    result = run_baselines(config)
    summary = {name: {subset: round(f["auc"], 4) for subset, f in auc.items()} for name, auc in result["auc"].items()}
    click.echo(json.dumps({"auc": summary, "report": str(config.report_dir)}, indent=2))
