"""`bookmatch export`: other formats for a trained model."""

from __future__ import annotations

import click


@click.group()
def export():
    """Export a trained model to another format."""


@export.command("sentence-transformers")
@click.option(
    "--model", "model_dir", required=True, type=click.Path(file_okay=False), help="The bi-encoder's final/ folder."
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write (replaced if present)."
)
def sentence_transformers(model_dir, out_dir):
    """Write the bi-encoder as a SentenceTransformer (Transformer, Pooling, Dense GELU, Dense, Normalize).

    SentenceTransformer(OUT).encode(texts) then gives the bi-encoder's projected embeddings.
    """
    from bookmatch.export import export_sentence_transformers

    click.echo(str(export_sentence_transformers(model_dir, out_dir)))
