"""Import local `.txt` books into the `<author>/<title>.txt` layout, reporting the files that were skipped."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bookmatch.errors import InputError
from bookmatch.ingest import (
    IngestIndex,
    free_destination,
    sweep_ingest_leftovers,
    write_atomically,
)
from bookmatch.ingest.gutenberg import looks_like_html
from bookmatch.storage import os_reason
from bookmatch.text.names import unicode_name


@dataclass
class ImportReport:
    imported: dict[str, Path] = field(default_factory=dict)
    unchanged: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0


def import_folder(src: str | Path, out: str | Path, skip_existing: bool = True) -> ImportReport:
    """Copy every usable `.txt` under `src` to `out/<author>/<title>.txt` (author and title from the header).

    A file is usable when `load_book` accepts it (text, not empty, not a licence without a book); it is
    written as decoded text (UTF-8, LF), not cleaned, like a fetched book.
    """
    from bookmatch.progress import progress
    from bookmatch.text.standardize import SkipBook

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(f"source folder {src} does not exist: pass --src DIR holding .txt books")
    files = sorted((p for p in src.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(src).as_posix())
    if not files:
        raise InputError(f"source folder {src} holds no .txt files")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the books folder {out}: {os_reason(err, out)}") from err
    sweep_ingest_leftovers(out)
    index = IngestIndex(out)
    taken = index.taken_paths()
    report = ImportReport()
    start = time.perf_counter()
    for path in progress(files, desc="import", total=len(files), unit="book"):
        # A name that is not UTF-8 is kept with its bytes spelled \xNN, so the index and messages can hold it.
        key = unicode_name(path.relative_to(src).as_posix())
        if skip_existing and (existing := index.existing(key)) is not None:
            report.unchanged[key] = existing
            continue
        try:
            _import_one(path, key, out, index, taken, report)
        except SkipBook as err:
            report.skipped[key] = str(err)
        except OSError as err:
            report.skipped[key] = f"cannot read or write it: {err.strerror or err}"
    report.seconds = time.perf_counter() - start
    return report


def _import_one(path: Path, key: str, out: Path, index: IngestIndex, taken: set[Path], report: ImportReport) -> None:
    from bookmatch.text.decode import decode_bytes
    from bookmatch.text.standardize import SkipBook, load_book

    book = load_book(path)
    text = decode_bytes(path.read_bytes(), source=key)
    if looks_like_html(text[:1024].encode("utf-8")):
        # Like a downloaded error page; prepare itself still reads such files (the corpus holds one XHTML book).
        raise SkipBook(f"{key}: an HTML page, not a plain-text book (save the book as .txt)")
    previous = index.existing(key)
    if previous is not None:
        taken.discard(previous)
    destination = free_destination(out, book.author, book.title, taken, own=previous)
    taken.add(destination)
    data = text.encode("utf-8")
    write_atomically(destination, data)
    index.record(key, destination)
    report.imported[key] = destination
    report.bytes += len(data)
