"""Options shared by several commands, and options generated from a stage config's field declarations."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable
from typing import Any

import click

from bookmatch.precision import PRECISIONS

PRECISION_HELP = (
    "Autocast for the encoders: auto = bf16 where the device computes it natively (bf16 GPUs, CPUs with "
    "AVX512-BF16/AMX; ~2x faster, margins within ~0.01), else fp32; no = fp32."
)


def precision_option(default: str | None):
    return click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default=default,
        help=PRECISION_HELP + ("" if default else " [default: auto]"),
    )


_CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING}


def _option_for(f: dataclasses.Field, hint: Any) -> Callable:
    """One click option for a config field: `--name` (or `--name/--no-name` for a flag), its help and default from
    the field's declaration. The option's own default is None ("not given"), so a value from `--config` is not
    masked; the config builder converts and checks the value, so every source gets the same one-line error."""
    from bookmatch.config import _scalar_type, setting_help

    scalar, nullable = _scalar_type(hint)
    flag = "--" + f.name.replace("_", "-")
    default = f.default if f.default is not dataclasses.MISSING else None
    shown = (
        "null"
        if default is None
        else (str(default).lower() if isinstance(default, bool) else default if default != "" else "''")
    )
    help_text = f"{setting_help(f)} [default: {shown}]".strip()
    if scalar is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=help_text)
    choices = f.metadata.get("choices")
    # a nullable number arrives as text, so that `null` can be given; the config builder converts and checks it
    kind = click.Choice(choices) if choices else _CLICK_TYPES.get(scalar, click.STRING)
    metavar = None
    if nullable and not choices and scalar in (int, float):
        kind, metavar = click.STRING, f"{kind.name.upper()}|null"
    return click.option(flag, f.name, type=kind, default=None, help=help_text, metavar=metavar)


def config_options(config_cls: type, skip: Iterable[str] = ()) -> Callable:
    """A decorator adding one option per field of `config_cls` declared with `setting(..., cli=True)` (the
    default), in declaration order, except `skip`: every setting settable from the CLI, its help written once."""
    hints = typing.get_type_hints(config_cls)
    skipped = set(skip)
    fields = [f for f in dataclasses.fields(config_cls) if f.metadata.get("cli", False) and f.name not in skipped]

    def decorate(func: Callable) -> Callable:
        for f in reversed(fields):
            func = _option_for(f, hints[f.name])(func)
        return func

    return decorate
