"""Step 1-3: find the books, then load, standardize, split and chunk them in a process pool.

Workers stream one `BookRecord` per book back in input order (so results never depend on scheduling); the
book's full text stays in the worker.
"""

from __future__ import annotations

import functools
import multiprocessing
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bookmatch.errors import InputError
from bookmatch.prepare.records import BookRecord, sentence_hashes, word_gram_shingles
from bookmatch.prepare.topics import chunk_topic
from bookmatch.text.names import unicode_name


@dataclass(frozen=True)
class ChunkingOptions:
    """The picklable subset of PrepareConfig a worker needs."""

    chunk_size: int
    overlap: int
    max_chunks_per_book: int
    splitter: str
    shingle_min_words: int
    gram_words: int
    gram_keep_one_in: int
    seed: int


def find_book_files(books_dir: str | Path) -> list[Path]:
    """Every `.txt` under `books_dir`, sorted by relative path (stable across machines)."""
    root = Path(books_dir)
    if not root.is_dir():
        raise InputError(f"books folder {root} does not exist: pass --books DIR with <author>/<title>.txt files")
    files = sorted((p for p in root.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise InputError(f"books folder {root} holds no .txt files: put books there as <author>/<title>.txt")
    return files


@functools.lru_cache(maxsize=2)
def _splitter(name: str) -> Callable[[str], list[str]]:
    from bookmatch.text.sentences import get_splitter

    return get_splitter(name, standardized=True)  # load_book's text is standardize's output


def sample_chunk_indices(num_chunks: int, limit: int, key: str, seed: int) -> list[int]:
    """At most `limit` chunk indices, sampled reproducibly from the seed and the book's key, in order."""
    if num_chunks <= limit:
        return list(range(num_chunks))
    return sorted(random.Random(f"{seed}:{key}").sample(range(num_chunks), limit))


def load_book_record(path: Path, root: Path, options: ChunkingOptions) -> BookRecord | tuple[str, str]:
    """A BookRecord, or (relative path, reason) for a file that cannot be used."""
    from bookmatch.text.chunking import chunk_book
    from bookmatch.text.standardize import SkipBook, load_book

    # A name whose bytes are not UTF-8 is kept, spelled with \xNN escapes: the records file and manifest hold text.
    relative = unicode_name(path.relative_to(root).as_posix())
    try:
        book = load_book(path)
        sentences = _splitter(options.splitter)(book.text)
        # chunk_book splits again through the splitter it is given; hand it the sentences we already have.
        chunks = chunk_book(book.text, lambda _text: sentences, options.chunk_size, options.overlap)
    except SkipBook as err:
        return relative, str(err) or "skipped"
    except Exception as err:  # a bad file must never stop the run; its reason goes to the manifest
        return relative, unicode_name(f"{type(err).__name__}: {err}")
    if not chunks:
        return relative, "no usable chunks (too short or not English prose)"
    keep = sample_chunk_indices(len(chunks), options.max_chunks_per_book, relative, options.seed)
    texts = [chunks[i].text for i in keep]
    return BookRecord(
        path=relative,
        author=book.author or "",
        title=book.title or unicode_name(path.stem),
        chunks=texts,
        chunk_starts=[int(chunks[i].start_sentence) for i in keep],
        chunk_topics=[chunk_topic(t) for t in texts],
        sentence_hashes=sentence_hashes(sentences, options.shingle_min_words),
        gram_shingles=word_gram_shingles(book.text, options.gram_words, options.gram_keep_one_in),
        removed=dict(book.removed),
    )


def _load_star(args: tuple[Path, Path, ChunkingOptions]) -> BookRecord | tuple[str, str]:
    return load_book_record(*args)


def iter_book_records(
    files: list[Path], root: Path, options: ChunkingOptions, workers: int
) -> Iterator[BookRecord | tuple[str, str]]:
    """Records (or skip reasons) in the order of `files`; `workers` > 1 uses a process pool."""
    jobs = [(path, root, options) for path in files]
    if workers <= 1 or len(files) <= 1:
        yield from map(_load_star, jobs)
        return
    # fork is cheap and keeps the parent's imports; spawn would re-import torch in every worker.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        yield from pool.imap(_load_star, jobs, chunksize=1)


def assign_book_ids(records: list[BookRecord]) -> None:
    """`author_slug/title_slug` from the folder and file name; a clash gets `_2`, `_3`... in path order."""
    from bookmatch.text.standardize import slugify

    seen: dict[str, int] = {}
    for record in sorted(records, key=lambda r: r.path):
        parts = record.path.split("/")
        author = slugify(parts[-2]) if len(parts) >= 2 else slugify(record.author)
        title = slugify(Path(parts[-1]).stem)
        base = f"{author or 'unknown'}/{title or 'untitled'}"
        seen[base] = seen.get(base, 0) + 1
        record.book_id = base if seen[base] == 1 else f"{base}_{seen[base]}"
