"""Building a search index from a folder of books with a trained bi-encoder (`bookmatch index`)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bookmatch.errors import InputError
from bookmatch.search.index import INDEX_FORMAT, BookIndex, model_fingerprint

log = logging.getLogger(__name__)


@dataclass
class IndexConfig:
    # Passages per book, spread evenly through it as the miner samples them (0 = every chunk). 64 passages of
    # 14 sentences cover ~900 sentences, most of a novel; more cost encoding time linearly.
    passages_per_book: int = 64
    chunk_size: int = 14
    overlap: int = 4
    batch_size: int = 64
    precision: str = "auto"
    device: str | None = None
    vector: str = "projected"  # or "pooled" (see search.index.embed_queries)

    def __post_init__(self) -> None:
        if self.passages_per_book < 0 or self.batch_size < 1:
            raise InputError("passages per book must be >= 0 and batch size >= 1")
        if self.vector not in ("projected", "pooled"):
            raise InputError(f"vector must be projected or pooled, got {self.vector!r}")
        if self.chunk_size < 2 or not 0 <= self.overlap < self.chunk_size:
            raise InputError(
                f"chunk size must be >= 2 and 0 <= overlap < chunk size (got {self.chunk_size}, {self.overlap})"
            )


def book_files(books_dir: str | os.PathLike) -> list[Path]:
    books_dir = Path(books_dir)
    if not books_dir.is_dir():
        raise InputError(f"books folder {books_dir} does not exist")
    return sorted(p for p in books_dir.rglob("*.txt") if p.is_file())


def book_passages(paths: Iterable[Path], config: IndexConfig) -> tuple[list[dict], list[list[str]], list[str]]:
    """(books, passages per book, skip reasons): each readable book's sampled chunks."""
    from bookmatch.prepare.mining import embed_positions
    from bookmatch.text.chunking import chunk_book
    from bookmatch.text.standardize import SkipBook, load_book

    books, passages, skipped = [], [], []
    for path in paths:
        try:
            book = load_book(path)
        except SkipBook as err:
            skipped.append(str(err))
            continue
        chunks = chunk_book(book.text, chunk_size=config.chunk_size, overlap=config.overlap)
        if not chunks:
            skipped.append(f"{book.source_id}: no passage of {config.chunk_size} sentences of prose")
            continue
        keep = (
            range(len(chunks))
            if config.passages_per_book == 0
            else embed_positions(len(chunks), config.passages_per_book)
        )
        books.append({"id": book.source_id, "author": book.author, "title": book.title})
        passages.append([chunks[i].text for i in keep])
    return books, passages, skipped


def embed_passages(model, texts: list[str], batch_size: int, precision: str, vector: str = "projected") -> np.ndarray:
    """Unit vectors in the model's contrastive space, through the same scorer path queries take."""
    from bookmatch.inference.scorers import BiEncoderScorer
    from bookmatch.search.index import embed_queries

    scorer = BiEncoderScorer(model, cache_size=0, precision=precision)
    return embed_queries(scorer, texts, batch_size, vector)


def build_index(
    books_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    config: IndexConfig | None = None,
    paths: list[Path] | None = None,
) -> BookIndex:
    """Embed each book's passages with the bi-encoder in `model_dir` and write the index to `out`.

    `paths`: the book files to index (default: every .txt under `books_dir`)."""
    from bookmatch.inference import load_bi_encoder

    config = config or IndexConfig()
    start = time.perf_counter()
    paths = book_files(books_dir) if paths is None else paths
    books, passages, skipped = book_passages(paths, config)
    for reason in skipped[:5]:
        log.warning("skipped %s", reason)
    if not books:
        raise InputError(f"no usable book under {books_dir}: nothing to index")
    model = load_bi_encoder(model_dir, config.device)
    flat = [text for book in passages for text in book]
    vectors = embed_passages(model, flat, config.batch_size, config.precision, config.vector)
    passage_book = np.repeat(np.arange(len(books), dtype=np.int32), [len(p) for p in passages])
    manifest = {
        "format": INDEX_FORMAT,
        "complete": True,
        "model": str(Path(model_dir).resolve()),
        "model_sha256": model_fingerprint(model),
        "books": len(books),
        "passages": len(flat),
        "dim": int(vectors.shape[1]),
        "skipped": len(skipped),
        "skip_reasons": skipped[:50],
        "search": "exact inner product (faiss IndexFlatIP or numpy)",
        "config": asdict(config),
        "seconds": round(time.perf_counter() - start, 1),
    }
    index = BookIndex(vectors, passage_book, books, flat, manifest)
    index.save(out)
    return index
