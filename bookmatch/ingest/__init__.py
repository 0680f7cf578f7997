"""Bring books into a books folder laid out as `<author>/<title>.txt` (from each book's own header).

`ingest.gutenberg.fetch_books` downloads by Gutenberg ID; `ingest.folder.import_folder` copies local files.
Both keep the text as found (decoded to UTF-8 with LF line endings); cleaning happens later, in prepare.
This module holds the layout rules they share.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bookmatch.leftovers import sweep_dead, temp_name
from bookmatch.storage import read_json
from bookmatch.text.names import unicode_name

INDEX_NAME = ".ingest_index.json"
_MAX_NAME_BYTES = 150
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]+")


def safe_name(text: str, fallback: str) -> str:
    """A file or folder name from free text: no slashes or control characters, at most 150 UTF-8 bytes."""
    name = " ".join(_UNSAFE.sub(" ", unicode_name(text)).split()).strip(" .")
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


def free_destination(out_dir: Path, author: str | None, title: str | None, taken: set[Path], own: Path | None) -> Path:
    """Like `book_destination`, and also off every file already on disk except `own` (the file the index
    records for this same source): a file ingest did not write is never overwritten."""
    folder = out_dir / safe_name(author or "", "Unknown author")
    stem = safe_name(title or "", "Untitled")
    path, number = folder / f"{stem}.txt", 2
    while path in taken or (path != own and (path.exists() or path.is_symlink())):
        path = folder / f"{stem} ({number}).txt"
        number += 1
    return path


_TEMP_KIND = "ingest"
# `.<name>.ingest-<pid>.tmp`: what `write_atomically` leaves when a kill falls between its write and its rename.
_LEFTOVER = r"\..+\." + _TEMP_KIND + r"-(?P<pid>\d+)\.tmp"


def write_atomically(path: Path, data: bytes) -> None:
    """Write through a temp file beside `path` and a rename; the temp name carries this process's ID so the
    next ingest can remove it if this one is killed (`sweep_ingest_leftovers`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / temp_name(path.name, _TEMP_KIND)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sweep_ingest_leftovers(out_dir: Path) -> int:
    """Remove the temp files killed ingest runs left in `out_dir` and its author folders; how many."""
    removed = len(sweep_dead(out_dir, _LEFTOVER))
    try:
        folders = [entry.path for entry in os.scandir(out_dir) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return removed
    for folder in folders:
        removed += len(sweep_dead(folder, _LEFTOVER))
    return removed


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
        text = json.dumps(self.entries, indent=2, ensure_ascii=False) + "\n"
        write_atomically(self.path, text.encode("utf-8"))
