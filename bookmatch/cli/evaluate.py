"""`bookmatch evaluate`: metrics, report, plots and predictions for labelled pairs."""

from __future__ import annotations

import json

import click

from bookmatch.cli.options import precision_option


@click.command()
@click.option(
    "--model", "model_dir", required=True, type=click.Path(file_okay=False), help="The bi-encoder's final/ folder."
)
@click.option(
    "--data", "data_dir", type=click.Path(file_okay=False), help="Prepared dataset folder (from `bookmatch prepare`)."
)
@click.option("--split", default=None, help="Dataset split to evaluate [default: test].")
@click.option(
    "--pairs", "pairs_file", type=click.Path(dir_okay=False), help="Or a JSONL file: text1, text2, label[, kind]."
)
@click.option(
    "--report",
    "report_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for metrics.json, report.md, plots, predictions.jsonl.",
)
@click.option(
    "--cross-model",
    "cross_model_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Cross-encoder final/ folder (two-stage).",
)
@click.option("--mode", type=click.Choice(["contrastive", "two-stage"]), default=None, help="[default: contrastive]")
@click.option(
    "--prefilter-threshold",
    type=float,
    default=None,
    help="Two-stage: bi-encoder probability below which a pair is rejected at once [default: the bi-encoder's calibrated threshold].",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="[default: 64]")
@click.option("--max-pairs", type=int, default=None, help="Evaluate at most this many pairs.")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@precision_option(None)
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), default=None, help="YAML with EvaluateConfig options."
)
def evaluate(
    model_dir,
    data_dir,
    split,
    pairs_file,
    report_dir,
    cross_model_dir,
    mode,
    prefilter_threshold,
    batch_size,
    max_pairs,
    device,
    precision,
    config_file,
):
    """Score labelled pairs; write metrics (PAN c@1, F0.5u, AUC, Brier, ECE...), by-kind figures, report.md, plots.

    The bi-encoder reads long texts whole, window by window; the cross-encoder truncates at its max_seq_length.
    """
    from bookmatch.config import build_config
    from bookmatch.evaluation.evaluate import EvaluateConfig
    from bookmatch.evaluation.evaluate import evaluate as run_evaluate

    config = build_config(
        EvaluateConfig,
        config_file,
        {
            "model_dir": model_dir,
            "data_dir": data_dir,
            "split": split,
            "pairs_file": pairs_file,
            "report_dir": report_dir,
            "cross_model_dir": cross_model_dir,
            "mode": mode,
            "prefilter_threshold": prefilter_threshold,
            "batch_size": batch_size,
            "max_pairs": max_pairs,
            "device": device,
            "precision": precision,
        },
    )
    metrics = run_evaluate(config)
    best = metrics["calibrated"] or metrics["uncalibrated"]
    click.echo(
        json.dumps(
            {k: best[k] for k in ("accuracy", "f1", "auc", "c_at_1", "f05u", "brier", "ece")}
            | {"report": str(report_dir)},
            indent=2,
        )
    )
