"""`bookmatch pipeline`: the whole job, skipping finished stages and resuming a cut one."""

from __future__ import annotations

import click


@click.command()
@click.option(
    "--books",
    default="../shared/corpus/books",
    type=click.Path(file_okay=False),
    help="Folder of .txt books (searched recursively).",
)
@click.option(
    "--out",
    default="artifacts/cpu-small",
    type=click.Path(file_okay=False),
    help="Artifacts folder (data/, models/, reports/).",
)
@click.option("--preset", default="cpu-small", help="Stage settings: cpu-small (2-core CPU, MiniLM, ~20 min) or gpu.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML {stage: {option: value}} over the preset.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="STAGE.OPTION=VALUE",
    help="Override one stage option, e.g. --set cross.max_steps=50 (repeatable).",
)
@click.option(
    "--eval-pairs", type=click.Path(dir_okay=False), help="Also evaluate on these labelled pairs (JSON lines)."
)
def pipeline(books, out, preset, config_file, sets, eval_pairs):
    """Run prepare -> teacher -> contrastive (distilled) -> calibrate -> evaluate, then print the metrics."""
    from bookmatch.pipeline import PipelineConfig, load_stage_options, metrics_table, run_pipeline

    stages = load_stage_options(preset, config_file, list(sets))
    results = run_pipeline(PipelineConfig(books=books, out=out, preset=preset, eval_pairs=eval_pairs, stages=stages))
    click.echo(metrics_table(results))
