"""`bookmatch train cross|contrastive`: parse options, build the config, call the trainer."""

from __future__ import annotations

import click


def _common_options(func):
    """Options shared by both programs; None means 'not given' so YAML values (--config) are not masked."""
    options = [
        click.option("--data", type=click.Path(file_okay=False), default=None, help="Folder written by `bookmatch prepare`."),
        click.option("--model", default=None, help="Backbone: Hugging Face name or local folder."),
        click.option("--out", type=click.Path(file_okay=False), default=None, help="Run folder (checkpoints, final/, config.yaml)."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None, help="YAML with option values."),
        click.option("--epochs", type=int, default=None),
        click.option("--batch-size", type=int, default=None, help="Pairs per device per micro-batch."),
        click.option("--lr", type=float, default=None),
        click.option("--warmup-steps", type=int, default=None, help="Capped at 10% of the total steps."),
        click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps (0: no limit)."),
        click.option("--max-seq-length", type=int, default=None),
        click.option("--head-lr", type=float, default=None, help="Learning rate of the new heads (0: same as --lr)."),
        click.option("--bf16", "precision", flag_value="bf16", default=None, help="bf16 mixed precision."),
        click.option("--fp16", "precision", flag_value="fp16", help="fp16 mixed precision (with loss scaling)."),
        click.option("--auto-precision", "precision", flag_value="auto",
                     help="bf16 where the device computes it natively (bf16 GPU, AVX512-BF16/AMX CPU), else fp32."),
        click.option("--fp32", "precision", flag_value="no", help="No mixed precision."),
        click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None),
        click.option("--compile/--no-compile", "compile_model", default=None, help="torch.compile the model."),
        click.option("--grad-accum", type=int, default=None, help="Micro-batches per optimizer step."),
        click.option("--eval-steps", type=int, default=None),
        click.option("--eval-max-pairs", type=int, default=None, help="Validation pairs per evaluation (seeded subsample)."),
        click.option("--save-steps", type=int, default=None),
        click.option("--save-total-limit", type=int, default=None, help="Recent checkpoints kept."),
        click.option("--patience", type=int, default=None, help="Evaluations without a better val AUC before stopping (0: off)."),
        click.option("--seed", type=int, default=None),
        click.option("--cpu/--no-cpu", default=None, help="Train on the CPU even when a GPU is present."),
        click.option("--sample", type=int, default=None, help="Train on a seeded subsample of N pairs."),
        click.option("--num-workers", type=int, default=None, help="Data-loader worker processes."),
        click.option("--preprocess-workers", type=int, default=None, help="Processes for tokenizing + style features."),
        click.option("--resume/--no-resume", default=None, help="Continue exactly from the latest checkpoint in --out."),
        click.option("--local-files-only/--no-local-files-only", default=None, help="Never touch the network for models."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _overrides(values: dict) -> dict:
    values = dict(values)
    values.pop("config_file", None)
    precision = values.pop("precision", None)
    if precision is not None:
        values["mixed_precision"] = precision
    compile_model = values.pop("compile_model", None)
    if compile_model is not None:
        values["compile"] = compile_model
    return values


def _run(config_cls, train_function, config_file, values: dict) -> None:
    from bookmatch.config import ConfigError, build_config
    from bookmatch.errors import InputError

    try:
        config = build_config(config_cls, file=config_file, overrides=_overrides(values))
    except (ConfigError, ValueError, TypeError) as err:
        raise InputError(str(err)) from err
    import os

    # a caller embedding the CLI (the resume tests' launcher) may pass a step callback as click's context object
    on_step = (click.get_current_context().obj or {}).get("on_step")
    final_dir = train_function(config, on_step=on_step)
    # the trainer logs progress and its summary line; stdout carries only the final model folder, once
    if os.environ.get("RANK", "0") == "0":
        click.echo(str(final_dir))


@click.group()
def train() -> None:
    """Train the cross-encoder teacher or the contrastive bi-encoder (accelerate: CPU, GPU, DDP, DeepSpeed)."""


@train.command("cross")
@_common_options
def cross(config_file, **values) -> None:
    """Train the cross-encoder teacher on prepared pairs; prints the final model folder."""
    from bookmatch.training.config import CrossTrainConfig
    from bookmatch.training.trainer import train_cross

    _run(CrossTrainConfig, train_cross, config_file, values)


@train.command("contrastive")
@_common_options
@click.option("--teacher", type=click.Path(file_okay=False), default=None, help="Cross-encoder folder to distil from.")
@click.option("--distill-weight", type=float, default=None)
@click.option("--distill-temperature", type=float, default=None)
@click.option("--contrastive-weight", type=float, default=None)
@click.option("--temperature", type=float, default=None, help="SupCon temperature.")
@click.option("--projection-dim", type=int, default=None)
@click.option("--side-features", default=None, help="Per-text feature set beside the pooled vector (style_v1, none).")
@click.option("--lexical-buckets", type=int, default=None, help="Hash buckets of the per-side lexical signature (0: off).")
@click.option("--lexical-top-k", type=int, default=None, help="Heaviest content-word buckets kept per text.")
@click.option("--name-top-k", type=int, default=None, help="Heaviest proper-name buckets kept per text (0: no names signature).")
@click.option("--pooled-cosine/--no-pooled-cosine", default=None, help="Give the classifier the pooled vectors' cosine.")
@click.option("--training-window", type=click.Choice(["first", "random"]), default=None,
              help="Which max-seq-length tokens of a longer training text are read: the first, or a window at a seeded random offset.")
@click.option("--authors-per-batch", type=int, default=None,
              help="Each batch takes its pairs from this many authors, so in-batch negatives include an author's other books (0: random batches).")
@click.option("--topic-adversary/--no-topic-adversary", default=None, help="Gradient-reversal topic classifier on the pooled vectors.")
@click.option("--independence-weight", type=float, default=None, help="Weight of the embedding/topic independence loss.")
@click.option("--cached-contrastive/--no-cached-contrastive", default=None, help="GradCache for large contrastive batches.")
@click.option("--mini-batch-size", type=int, default=None, help="GradCache mini-batch size.")
def contrastive(config_file, **values) -> None:
    """Train the Siamese bi-encoder (optionally distilled from --teacher); prints the final model folder."""
    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.trainer import train_contrastive

    _run(ContrastiveTrainConfig, train_contrastive, config_file, values)
