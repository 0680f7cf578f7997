"""Import local `.txt` books into the `<author>/<title>.txt` layout, reporting the files that were skipped."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bookmatch.errors import InputError
from bookmatch.ingest import IngestIndex, book_destination
from bookmatch.storage import atomic_write_text


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
    from bookmatch.text.decode import decode_bytes
    from bookmatch.text.standardize import SkipBook, load_book

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(f"source folder {src} does not exist: pass --src DIR holding .txt books")
    files = sorted((p for p in src.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(src).as_posix())
    if not files:
        raise InputError(f"source folder {src} holds no .txt files")
    out.mkdir(parents=True, exist_ok=True)
    index = IngestIndex(out)
    taken = index.taken_paths()
    report = ImportReport()
    start = time.perf_counter()
    for path in progress(files, desc="import", total=len(files), unit="book"):
        key = path.relative_to(src).as_posix()
        if skip_existing and (existing := index.existing(key)) is not None:
            report.unchanged[key] = existing
            continue
        try:
            book = load_book(path)
        except SkipBook as err:
            report.skipped[key] = str(err)
            continue
        text = decode_bytes(path.read_bytes(), source=key)
        previous = index.existing(key)
        if previous is not None:
            taken.discard(previous)
        destination = book_destination(out, book.author, book.title, taken)
        taken.add(destination)
        atomic_write_text(destination, text)
        index.record(key, destination)
        report.imported[key] = destination
        report.bytes += len(text.encode("utf-8"))
    report.seconds = time.perf_counter() - start
    return report
