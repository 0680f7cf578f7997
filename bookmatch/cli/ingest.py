"""`bookmatch ingest gutenberg|folder`: bring books into a `<author>/<title>.txt` books folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click


class _MirrorURL(click.ParamType):
    """An http(s) base URL with a host and a port in 1-65535, checked before any work."""

    name = "URL"

    def convert(self, value, param, ctx):
        from bookmatch.errors import InputError
        from bookmatch.ingest.gutenberg import check_mirror_url

        try:
            return check_mirror_url(value)
        except InputError as err:
            self.fail(str(err), param, ctx)


@click.group()
def ingest() -> None:
    """Fetch or import books into a books folder laid out as <author>/<title>.txt."""


def _echo_problems(title: str, problems: dict, limit: int = 50) -> None:
    if not problems:
        return
    click.echo(f"{title} ({len(problems)}):", err=True)
    for key, reason in list(problems.items())[:limit]:
        shown = str(key).replace("\r", "\\r").replace("\n", "\\n")
        click.echo(f"  {shown}: {reason}", err=True)
    if len(problems) > limit:
        click.echo(f"  ... and {len(problems) - limit} more", err=True)


@ingest.command("gutenberg")
@click.option("--ids", "ids_text", default=None, help="Comma-separated Gutenberg IDs, e.g. 1342,84.")
@click.option(
    "--ids-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A file of IDs (one or more a line, '#' comments).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Books folder to fill.")
@click.option(
    "--concurrency", type=click.IntRange(min=1, max=256), default=None, help="Downloads at once.  [default: 8]"
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True, max=86400),
    default=None,
    help="Seconds one request may take.  [default: 60]",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0, max=100),
    default=None,
    help="Retries per URL on timeouts, 5xx, cut bodies.  [default: 4]",
)
@click.option(
    "--mirror",
    type=_MirrorURL(),
    default=None,
    help="Gutenberg mirror base URL (http or https).  [default: https://www.gutenberg.org]",
)
@click.option(
    "--max-book-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Largest answer accepted, in decoded bytes; larger ones fail that ID.  [default: 134217728 (128 MiB)]",
)
@click.option("--skip-existing/--no-skip-existing", default=None, help="Skip IDs already fetched.  [default: skip]")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML file with GutenbergConfig options.",
)
def gutenberg_command(
    ids_text, ids_file, out, concurrency, timeout, retries, mirror, max_book_bytes, skip_existing, config_file
):
    """Download Gutenberg books by ID (retries, backoff, skip what is already there)."""
    from bookmatch.config import build_config
    from bookmatch.errors import InputError
    from bookmatch.ingest.gutenberg import GutenbergConfig, fetch_books, parse_ids
    from bookmatch.progress import summary_line

    ids = parse_ids(ids_text or "")
    if ids_file is not None:
        try:
            listed = ids_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(
                f"--ids-file {ids_file}: cannot read it as UTF-8 text ({type(err).__name__}); give one Gutenberg ID per line or comma-separated"
            ) from err
        ids += [i for i in parse_ids(listed) if i not in ids]
    if not ids:
        raise InputError("no Gutenberg IDs given: pass --ids 1342,84 or --ids-file FILE")
    config = build_config(
        GutenbergConfig,
        config_file,
        {
            "concurrency": concurrency,
            "timeout": timeout,
            "retries": retries,
            "mirror": mirror,
            "skip_existing": skip_existing,
            "max_book_bytes": max_book_bytes,
        },
    )
    report = fetch_books(ids, out, config)
    if report.skipped:
        click.echo(f"already fetched, skipped: {len(report.skipped)}", err=True)
    retried = sum(1 for n in report.retries.values() if n)
    if retried:
        click.echo(f"needed retries: {retried} book(s), {sum(report.retries.values())} retries", err=True)
    _echo_problems("failed", {k: v for k, v in sorted(report.failed.items())})
    click.echo(
        summary_line("fetched", len(report.fetched), report.seconds, "books")
        + f", {report.bytes / 1e6:.1f} MB, {len(report.failed)} failed"
    )
    if report.failed:
        sys.exit(1)


@ingest.command("folder")
@click.option(
    "--src",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of .txt books (any layout).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Books folder to fill.")
@click.option("--skip-existing/--no-skip-existing", default=True, help="Skip files already imported.")
def folder_command(src, out, skip_existing):
    """Import local .txt books into <author>/<title>.txt, reporting the files skipped."""
    from bookmatch.ingest.folder import import_folder
    from bookmatch.progress import summary_line

    report = import_folder(src, out, skip_existing=skip_existing)
    if report.unchanged:
        click.echo(f"already imported, skipped: {len(report.unchanged)}", err=True)
    _echo_problems("skipped", report.skipped)
    click.echo(
        summary_line("imported", len(report.imported), report.seconds, "books")
        + f", {report.bytes / 1e6:.1f} MB, {len(report.skipped)} skipped"
    )
