"""The `bookmatch` command: a click group; each stage's command lives in its own module.

Commands only parse options and call the library; heavy imports (torch, datasets) happen inside them.
"""

from __future__ import annotations

import logging
import sys

import click

from bookmatch import __version__
from bookmatch.errors import BookmatchError


class _Group(click.Group):
    """Turns a BookmatchError into one clear line and its exit code instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BookmatchError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="bookmatch")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Train and serve a book-text matcher: same book or not, and how alike the style."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _register() -> None:
    # Each module defines one click command or group; a module that is not written yet is skipped
    # so the CLI stays usable while stages land one at a time.
    import importlib

    for module_name, attr in [
        ("ingest", "ingest"),
        ("prepare", "prepare"),
        ("train", "train"),
        ("calibrate", "calibrate"),
        ("evaluate", "evaluate"),
        ("baselines", "baselines"),
        ("infer", "infer"),
        ("export", "export"),
        ("pipeline", "pipeline"),
        ("serve", "serve"),
        ("index", "index"),
        ("search", "search"),
        ("tune", "tune"),
    ]:
        try:
            module = importlib.import_module(f"bookmatch.cli.{module_name}")
        except ModuleNotFoundError as err:
            if err.name == f"bookmatch.cli.{module_name}":
                continue
            raise
        main.add_command(getattr(module, attr))


_register()
