"""`bookmatch train cross|contrastive`: parse options, build the config, call the trainer.

Each program's options are generated from its config's field declarations (`bookmatch.training.config`), so
every training setting is settable here and its help is written once.
"""

from __future__ import annotations

import click

from bookmatch.cli.options import config_options
from bookmatch.training.config import ContrastiveTrainConfig, CrossTrainConfig

_CONFIG_FILE = click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML with option values; flags override it.",
)


def _precision_aliases(func):
    """Short spellings of --mixed-precision, kept for scripts written against earlier versions."""
    for flag, value, text in reversed(
        [
            ("--bf16", "bf16", "bf16 mixed precision."),
            ("--fp16", "fp16", "fp16 mixed precision (with loss scaling)."),
            (
                "--auto-precision",
                "auto",
                "bf16 where the device computes it natively (bf16 GPU, AVX512-BF16/AMX CPU), else fp32.",
            ),
            ("--fp32", "no", "No mixed precision."),
        ]
    ):
        alias = click.option(
            flag, "precision", flag_value=value, default=None, help=f"= --mixed-precision {value}: {text}"
        )
        func = alias(func)
    return func


def _run(config_cls, train_function, config_file, values: dict) -> None:
    import os

    from bookmatch.config import build_config

    precision = values.pop("precision", None)
    if precision is not None and values.get("mixed_precision") is None:
        values["mixed_precision"] = precision
    config = build_config(config_cls, file=config_file, overrides=values)  # a bad value: ConfigError, one line
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
@_CONFIG_FILE
@config_options(CrossTrainConfig)
@_precision_aliases
def cross(config_file, **values) -> None:
    """Train the cross-encoder teacher on prepared pairs; prints the final model folder."""
    from bookmatch.training.trainer import train_cross

    _run(CrossTrainConfig, train_cross, config_file, values)


@train.command("contrastive")
@_CONFIG_FILE
@config_options(ContrastiveTrainConfig)
@_precision_aliases
def contrastive(config_file, **values) -> None:
    """Train the Siamese bi-encoder (optionally distilled from --teacher); prints the final model folder."""
    from bookmatch.training.trainer import train_contrastive

    _run(ContrastiveTrainConfig, train_contrastive, config_file, values)
