#!/usr/bin/env python
"""Text preparation throughput and sentence-splitter agreement, measured on a books folder.

Prints MB/s per core (CPU time of this process, so other load on the machine does not count against it) for
decode, standardize, sentence splitting (regex and spaCy), chunking, and the whole path, both stage by stage
over the corpus and book by book as prepare runs it; then the regex
splitter's sentence-boundary precision/recall/F1 against spaCy's rule-based sentencizer on a sample.
Boundaries are character offsets into the text with all whitespace removed; paragraph breaks are left out
(both splitters always break there). "snapped" moves each boundary to the next letter or digit, so a quote
placed on the other side of a boundary is not a disagreement; "strict" does not.

    python scripts/bench_text.py --books ../shared/corpus/books [--limit-mb 40] [--spacy-mb 2] [--book-by-book-first]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bookmatch.text.chunking import make_chunk_records  # noqa: E402
from bookmatch.text.decode import UnreadableText, decode_bytes  # noqa: E402
from bookmatch.text.sentences import boundary_agreement, spacy_split_sentences, split_sentences  # noqa: E402
from bookmatch.text.standardize import standardize  # noqa: E402


def cpu_timed(function, items):
    start = time.process_time()
    results = [function(item) for item in items]
    return results, time.process_time() - start


def decode(data: bytes) -> str:
    try:
        return decode_bytes(data)
    except UnreadableText:
        return ""


def book_by_book(raw: list[bytes], megabytes: float) -> None:
    """The same four stages book by book, keeping only counts: how prepare's scan runs them (one book in memory
    at a time), without the stage-by-stage run's cost of holding every book's sentences at once."""

    def whole_path(data: bytes) -> int:
        return len(make_chunk_records(split_sentences(standardize(decode(data)), standardized=True)))

    counts, seconds = cpu_timed(whole_path, raw)
    print(
        f"{'book by book':>15}: {megabytes / seconds:7.1f} MB/s per core  ({seconds:.2f} s CPU, {sum(counts):,} chunks)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", required=True, type=Path)
    parser.add_argument("--limit-mb", type=float, default=0, help="Stop reading books after this many MB (0: all).")
    parser.add_argument("--spacy-mb", type=float, default=2.0, help="MB of clean text to run spaCy on.")
    parser.add_argument(
        "--book-by-book-first",
        action="store_true",
        help="Time the book-by-book pass before the stage-by-stage one (order check).",
    )
    args = parser.parse_args(argv)

    files = sorted(p for p in args.books.rglob("*.txt") if p.is_file())
    raw: list[bytes] = []
    for path in files:
        raw.append(path.read_bytes())
        if args.limit_mb and sum(map(len, raw)) >= args.limit_mb * 1e6:
            break
    megabytes = sum(map(len, raw)) / 1e6
    print(f"books: {len(raw)} files, {megabytes:.1f} MB from {args.books}")

    if args.book_by_book_first:
        book_by_book(raw, megabytes)
    texts, t_decode = cpu_timed(decode, raw)
    clean, t_standardize = cpu_timed(standardize, texts)
    # prepare calls the splitter on load_book's standardized text, and says so
    sentences, t_split = cpu_timed(functools.partial(split_sentences, standardized=True), clean)
    chunks, t_chunk = cpu_timed(make_chunk_records, sentences)
    total = t_decode + t_standardize + t_split + t_chunk
    for name, seconds in [
        ("decode", t_decode),
        ("standardize", t_standardize),
        ("split (regex)", t_split),
        ("chunk", t_chunk),
        ("total", total),
    ]:
        print(f"{name:>15}: {megabytes / seconds:7.1f} MB/s per core  ({seconds:.2f} s CPU)")
    print(f"{'':>15}  {sum(map(len, sentences)):,} sentences, {sum(map(len, chunks)):,} chunks")
    del texts, sentences, chunks
    if not args.book_by_book_first:
        book_by_book(raw, megabytes)

    # spaCy on a sample spread over the books: a slice from the middle of each until --spacy-mb is reached.
    per_book = max(2000, int(args.spacy_mb * 1e6 / max(len(clean), 1)))
    sample_parts = []
    for text in clean:
        if len(text) < 3 * per_book:
            continue
        start = text.find("\n\n", len(text) // 3) + 2
        sample_parts.append(text[start : start + per_book])
    sample = "\n\n".join(sample_parts)[: int(args.spacy_mb * 1e6)]
    sample = sample[: sample.rfind("\n\n")] if "\n\n" in sample else sample  # end on a paragraph break
    spacy_split_sentences("Warm up. Load the pipeline.")
    (spacy_sentences,), t_spacy = cpu_timed(spacy_split_sentences, [sample])

    def spacy_reference(text: str) -> list[str]:
        return spacy_sentences if text == sample else spacy_split_sentences(text)

    _, t_regex = cpu_timed(split_sentences, [sample])
    sample_mb = len(sample.encode("utf-8")) / 1e6
    print(
        f"{'split (spaCy)':>15}: {sample_mb / t_spacy:7.1f} MB/s per core  on a {sample_mb:.1f} MB sample "
        f"(regex on the same sample: {sample_mb / t_regex:.1f} MB/s)"
    )
    for mode, snap in [("snapped", True), ("strict", False)]:
        scores = boundary_agreement(sample, spacy_reference, split_sentences, snap_to_word=snap)
        print(
            f"regex vs spaCy boundaries ({mode}): precision {scores['precision']:.4f}  recall "
            f"{scores['recall']:.4f}  F1 {scores['f1']:.4f}  ({scores['reference_boundaries']:,} spaCy "
            f"boundaries, {scores['candidate_boundaries']:,} regex)"
        )


if __name__ == "__main__":
    main()
