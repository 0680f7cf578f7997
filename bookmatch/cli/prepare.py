"""`bookmatch prepare` (single machine), `prepare shard` and `prepare merge` (many machines)."""

from __future__ import annotations

import click

from bookmatch.cli.options import config_options
from bookmatch.errors import InputError
from bookmatch.prepare.config import PrepareConfig

_CONFIG_FILE = click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML of PrepareConfig fields; flags override it.",
)


def _config_options(func):
    """One option per PrepareConfig setting (generated from its declarations), then --config."""
    return _CONFIG_FILE(config_options(PrepareConfig)(func))


def _build(config_file, **overrides):
    from bookmatch.config import build_config

    return build_config(PrepareConfig, file=config_file, overrides=overrides, where="prepare config: ")


@click.group(invoke_without_command=True)
@click.option("--books", type=click.Path(), default=None, help="Folder of <author>/<title>.txt books.")
@click.option("--out", type=click.Path(), default=None, help="Output folder for the DatasetDict and manifest.json.")
@_config_options
@click.pass_context
def prepare(ctx: click.Context, config_file, **options) -> None:
    """Build the passage-pair DatasetDict (train/validation/test) from a books folder."""
    if ctx.invoked_subcommand is not None:
        return
    config = _build(config_file, **options)
    if not config.books or not config.out:
        raise InputError("prepare needs --books DIR and --out DIR (or books:/out: in --config)")
    from bookmatch.prepare import run_prepare

    out = run_prepare(config)
    click.echo(f"dataset written to {out}")


@prepare.command("shard")
@click.option("--books", type=click.Path(), required=True, help="Folder of <author>/<title>.txt books.")
@click.option("--out", "shards_dir", type=click.Path(), required=True, help="Folder that collects the shards.")
@click.option("--shard-index", type=int, required=True)
@click.option("--num-shards", type=int, required=True)
@_config_options
def shard(books, shards_dir, shard_index, num_shards, config_file, **options) -> None:
    """Scan every NUM_SHARDS-th book (starting at SHARD_INDEX) into one shard folder."""
    from bookmatch.prepare.shards import prepare_shard

    config = _build(config_file, books=books, **options)
    click.echo(f"shard written to {prepare_shard(books, shards_dir, shard_index, num_shards, config)}")


@prepare.command("merge")
@click.option("--shards", "shards_dir", type=click.Path(), required=True, help="Folder holding shard-*-of-* folders.")
@click.option("--out", type=click.Path(), required=True, help="Output folder for the DatasetDict and manifest.json.")
@click.option("--wait-timeout", type=float, default=0.0, show_default=True, help="Seconds to wait for missing shards.")
@_config_options
def merge(shards_dir, out, wait_timeout, config_file, **options) -> None:
    """Wait for all shards, then dedup, mine, split, pair and save."""
    from bookmatch.prepare.shards import merge_shards

    config = _build(config_file, out=out, **options)
    click.echo(f"dataset written to {merge_shards(shards_dir, out, config, wait_timeout)}")
