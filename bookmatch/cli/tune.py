"""`bookmatch tune`: a hyper-parameter search over the contrastive bi-encoder's settings (bookmatch.tuning)."""

from __future__ import annotations

import click


@click.command()
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Folder written by `bookmatch prepare`.")
@click.option(
    "--space",
    required=True,
    help="Search space: a YAML file, or a shipped space's name (bookmatch/configs/tune: cpu-small).",
)
@click.option("--trials", required=True, type=click.IntRange(min=1), help="Finished trials the study should hold.")
@click.option(
    "--study",
    "study_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Study folder: study.db (SQLite; a killed search resumes from it), trials/, report.md, best_config.yaml.",
)
@click.option("--seed", type=int, default=None, help="TPE sampler seed [default: the space's sampler.seed].")
def tune(data, space, trials, study_dir, seed) -> None:
    """Search the settings of `bookmatch train contrastive` with Optuna (TPE, median pruning on the validation
    AUC); prints the best trial's config, which `bookmatch train contrastive --config` takes."""
    from bookmatch.tuning.search import run_search

    result = run_search(data, space, trials, study_dir, seed=seed)
    click.echo(str(result.best_config or result.report))
