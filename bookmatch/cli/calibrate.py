"""`bookmatch calibrate`: temperature + offset + threshold (and the style map) fitted on the validation split."""

from __future__ import annotations

import json

import click

from bookmatch.cli.options import precision_option


@click.command()
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="The model's final/ folder (bi-encoder or cross-encoder).",
)
@click.option(
    "--data", "data_dir", type=click.Path(file_okay=False), help="Prepared dataset folder (from `bookmatch prepare`)."
)
@click.option(
    "--pairs",
    "pairs_file",
    type=click.Path(dir_okay=False),
    help="Or a JSONL file of labelled pairs (text1, text2, label).",
)
@click.option("--split", default=None, help="Dataset split to fit on [default: validation].")
@click.option(
    "--target",
    type=click.Choice(["accuracy", "f1"]),
    default=None,
    help="Metric the threshold maximises [default: accuracy].",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Pairs per forward pass [default: 64].")
@click.option("--max-pairs", type=int, default=None, help="Use at most this many pairs.")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@click.option(
    "--offset/--no-offset",
    "fit_offset",
    default=None,
    help="Fit an offset with the temperature (Platt scaling) [default: on].",
)
@click.option(
    "--cohort-size",
    type=click.IntRange(min=0),
    default=None,
    help="Bi-encoder: training passages in the score cohort that normalises margins (0 = none) [default: 256].",
)
@click.option(
    "--cohort-data",
    type=click.Path(file_okay=False),
    default=None,
    help="Prepared dataset whose train split gives the score cohort [default: --data].",
)
@precision_option(None)
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), default=None, help="YAML with CalibrateConfig options."
)
def calibrate(
    model_dir,
    data_dir,
    pairs_file,
    split,
    target,
    batch_size,
    max_pairs,
    device,
    fit_offset,
    cohort_size,
    cohort_data,
    precision,
    config_file,
):
    """Fit temperature scaling (with an offset) and the decision threshold on labelled pairs.

    Writes calibration.json (and, for a bi-encoder, style_calibration.json and the score cohort
    score_cohort.safetensors) in the model's parent folder: OUT/final/ -> OUT/calibration.json.
    """
    from bookmatch.calibration import CalibrateConfig
    from bookmatch.calibration import calibrate as run_calibrate
    from bookmatch.config import build_config
    from bookmatch.inference.calibration import calibration_path

    config = build_config(
        CalibrateConfig,
        config_file,
        {
            "model_dir": model_dir,
            "data_dir": data_dir,
            "pairs_file": pairs_file,
            "split": split,
            "target": target,
            "batch_size": batch_size,
            "max_pairs": max_pairs,
            "device": device,
            "fit_offset": fit_offset,
            "cohort_size": cohort_size,
            "cohort_data": cohort_data,
            "precision": precision,
        },
    )
    result = run_calibrate(config)
    summary = {k: result[k] for k in ("model_kind", "pairs", "temperature", "offset", "threshold", "target")}
    summary["score_cohort"] = (result["score_normalization"] or {}).get("texts", 0)
    summary["nll"] = {"before": result["before"]["nll"], "after": result["after"]["nll"]}
    summary["ece"] = {"before": result["before"]["ece"], "after": result["after"]["ece"]}
    summary["written"] = str(calibration_path(config.model_dir))
    click.echo(json.dumps(summary, indent=2))
