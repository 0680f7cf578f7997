"""`bookmatch search`: which books of an index is a passage likeliest to come from?"""

from __future__ import annotations

import json

import click

from bookmatch.cli.options import precision_option


@click.command()
@click.option(
    "--index", "index_dir", required=True, type=click.Path(file_okay=False), help="Folder written by `bookmatch index`."
)
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="The bi-encoder [default: the model the index was built with].",
)
@click.option("--text", default=None, help="The passage.")
@click.option(
    "--file", "file_path", default=None, type=click.Path(dir_okay=False), help="Read the passage from a file."
)
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=10, help="Books to return.")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@precision_option("auto")
def search(index_dir, model_dir, text, file_path, k, device, precision):
    """Prints JSON: the top books with their scores and best-matching passages."""
    from pathlib import Path

    from bookmatch.errors import InputError
    from bookmatch.inference import BiEncoderScorer, load_bi_encoder
    from bookmatch.search import BookIndex, search_texts

    if (text is None) == (file_path is None):
        raise InputError("give the passage with exactly one of --text or --file")
    if file_path is not None:
        try:
            text = Path(file_path).read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            raise InputError(f"cannot read {file_path}: {err.strerror or err}") from err
    if not text.strip():
        raise InputError("the passage is empty")
    book_index = BookIndex.load(index_dir)
    model = load_bi_encoder(model_dir or book_index.manifest["model"], device)
    book_index.check_model(model)
    books = search_texts(book_index, BiEncoderScorer(model, precision=precision), [text], k=k)[0]
    click.echo(json.dumps({"books": books}, ensure_ascii=False))
