"""`bookmatch index`: embed a folder of books into a search index."""

from __future__ import annotations

import click

from bookmatch.cli.options import precision_option


@click.command()
@click.option(
    "--books",
    "books_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder of .txt books (searched recursively).",
)
@click.option(
    "--model", "model_dir", required=True, type=click.Path(file_okay=False), help="The bi-encoder's final/ folder."
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Index folder to write (appears when complete).",
)
@click.option(
    "--passages-per-book", type=click.IntRange(min=0), default=64, help="Passages per book, spread evenly (0 = all)."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, help="Texts per forward pass.")
@click.option(
    "--vector",
    type=click.Choice(["projected", "pooled"]),
    default="projected",
    help="projected: the trained contrastive space; pooled: the encoder's mean-pooled vector (pretrained, untrained heads).",
)
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@precision_option("auto")
def index(books_dir, model_dir, out_dir, passages_per_book, batch_size, vector, device, precision):
    """Embed every book's passages into a search index for `bookmatch search` and `serve --index`."""
    from bookmatch.progress import summary_line
    from bookmatch.search import IndexConfig, build_index

    config = IndexConfig(
        passages_per_book=passages_per_book, batch_size=batch_size, precision=precision, device=device, vector=vector
    )
    built = build_index(books_dir, model_dir, out_dir, config)
    manifest = built.manifest
    click.echo(
        summary_line(
            f"index: {manifest['books']} books ({manifest['skipped']} skipped),",
            manifest["passages"],
            manifest["seconds"],
            "passages",
        )
        + f" -> {out_dir}",
        err=True,
    )
