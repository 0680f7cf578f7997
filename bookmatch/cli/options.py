"""Options shared by several commands."""

from __future__ import annotations

import click

from bookmatch.precision import PRECISIONS

PRECISION_HELP = ("Autocast for the encoders: auto = bf16 where the device computes it natively (bf16 GPUs, CPUs with "
                  "AVX512-BF16/AMX; ~2x faster, margins within ~0.01), else fp32; no = fp32.")


def precision_option(default: str | None):
    return click.option("--precision", type=click.Choice(PRECISIONS), default=default, help=PRECISION_HELP + ("" if default else " [default: auto]"))
