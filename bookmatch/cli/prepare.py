"""`bookmatch prepare` (single machine), `prepare shard` and `prepare merge` (many machines)."""

from __future__ import annotations

import click

from bookmatch.errors import InputError

_CONFIG_OPTIONS = [
    click.option("--chunk-size", type=int, default=None, help="Sentences per passage [14]."),
    click.option("--overlap", type=int, default=None, help="Sentences shared by consecutive passages [4]."),
    click.option("--max-chunks-per-book", type=int, default=None, help="Passages kept per book, sampled with the seed [800]."),
    click.option("--splitter", type=click.Choice(["regex", "spacy"]), default=None, help="Sentence splitter [regex]."),
    click.option("--hard-negatives/--no-hard-negatives", default=None, help="Mine nearest books as hard negatives [on]."),
    click.option("--miner-model", default=None, help="sentence-transformers model for mining [all-MiniLM-L6-v2]."),
    click.option("--miner-precision", type=click.Choice(["auto", "no", "bf16", "fp16"]), default=None,
                 help="Miner autocast: auto = bf16 where the device computes it natively, else fp32 [auto]."),
    click.option("--num-chunks-for-embed", type=int, default=None, help="Passages embedded per book for mining [80]."),
    click.option("--num-hard-negative-books", type=int, default=None, help="Nearest books kept per book [50]."),
    click.option("--knn-backend", type=click.Choice(["auto", "faiss", "torch"]), default=None,
                 help="Exact k-NN backend: auto = faiss where installed, else torch [auto]."),
    click.option("--n-positive-per-book", type=int, default=None, help="Positive pairs per book [= negatives]."),
    click.option("--n-negative-per-book", type=int, default=None, help="Negative pairs per book [40]."),
    click.option("--holdout-authors", default=None, help='Authors whose works all go to test, e.g. "Alcott;Baum".'),
    click.option("--train-ratio", type=float, default=None, help="Share of works in train [0.8]."),
    click.option("--val-ratio", type=float, default=None, help="Share of works in validation [0.1]."),
    click.option("--workers", type=int, default=None, help="Processes loading and chunking books [2]."),
    click.option("--seed", type=int, default=None, help="Seed for sampling, pairs and splits [13]."),
    click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="YAML of PrepareConfig fields; flags override it."),
]


def _config_options(func):
    for option in reversed(_CONFIG_OPTIONS):
        func = option(func)
    return func


def _build(config_file, **overrides):
    from bookmatch.config import ConfigError, build_config
    from bookmatch.prepare.config import PrepareConfig

    try:
        return build_config(PrepareConfig, file=config_file, overrides=overrides)
    except (ConfigError, TypeError) as err:
        raise InputError(f"prepare config: {err}") from err


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


