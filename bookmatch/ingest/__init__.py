"""Bring books into a books folder laid out as `<author>/<title>.txt` (from each book's own header).

`ingest.gutenberg.fetch_books` downloads by Gutenberg ID; `ingest.folder.import_folder` copies local files.
Both keep the text as found (decoded to UTF-8 with LF line endings); cleaning happens later, in prepare.
This module holds the layout rules they share.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bookmatch.storage import atomic_write_json, read_json

INDEX_NAME = ".ingest_index.json"
_MAX_NAME_BYTES = 150
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]+")


def safe_name(text: str, fallback: str) -> str:
    """A file or folder name from free text: no slashes or control characters, at most 150 UTF-8 bytes."""
    name = " ".join(_UNSAFE.sub(" ", text).split()).strip(" .")
    encoded = name.encode("utf-8")[:_MAX_NAME_BYTES]
    name = encoded.decode("utf-8", errors="ignore").strip(" .")
    return name or fallback


def book_destination(out_dir: Path, author: str | None, title: str | None, taken: set[Path] | None = None) -> Path:
    """`out_dir/<author>/<title>.txt`; a name already taken (another book) gets ` (2)`, ` (3)`..."""
    folder = out_dir / safe_name(author or "", "Unknown author")
    stem = safe_name(title or "", "Untitled")
    path = folder / f"{stem}.txt"
    number = 2
    while (taken is not None and path in taken) or (taken is None and path.exists()):
        path = folder / f"{stem} ({number}).txt"
        number += 1
    return path


class IngestIndex:
    """`out_dir/.ingest_index.json`: source key (Gutenberg ID or source path) -> path relative to out_dir."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / INDEX_NAME
        self.entries: dict[str, str] = {}
        if self.path.exists():
            try:
                loaded = read_json(self.path)
            except (OSError, ValueError):
                loaded = {}  # a damaged index only costs a refetch
            if isinstance(loaded, dict):
                self.entries = {str(k): str(v) for k, v in loaded.items()}

    def existing(self, key: str) -> Path | None:
        """The file recorded for `key`, if it is still there."""
        relative = self.entries.get(str(key))
        if relative is None:
            return None
        path = self.out_dir / relative
        return path if path.is_file() else None

    def taken_paths(self) -> set[Path]:
        return {self.out_dir / rel for rel in self.entries.values()}

    def record(self, key: str, path: Path) -> None:
        self.entries[str(key)] = os.fspath(Path(path).relative_to(self.out_dir))
        atomic_write_json(self.path, self.entries)
