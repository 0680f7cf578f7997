"""Clean book text: one normal form for every file, whatever its encoding, edition or line wrapping.

Choices (documented because every later stage sees their result):
- Unicode NFKC, then typographic quotes and dashes mapped to their ASCII spellings (' " - --), the soft
  hyphen dropped. Gutenberg's ASCII and UTF-8 editions of one text then read the same, so a model cannot tell
  two copies apart by their punctuation encoding, and the sentence splitter sees one set of characters.
- `_underscores_` (Gutenberg's italics) removed: a markup habit of some transcribers, not the author's style.
- Hard-wrapped lines re-flowed: paragraphs separated by exactly one blank line, each paragraph on one line,
  runs of spaces collapsed. Verse and plays end up with short lines joined inside a stanza; that is fine for
  sentence splitting and chunking.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from bookmatch.errors import InputError
from bookmatch.text.decode import UnreadableText, decode_bytes
from bookmatch.text.gutenberg import (
    BookMeta,
    Removed,
    parse_header,
    strip_boilerplate_counted,
)
from bookmatch.text.names import one_line_name, unicode_name

MIN_BOOK_CHARS = 2000
# Largest book file read (bytes); a larger one is skipped with a reason rather than read whole into memory. The
# largest Gutenberg texts are ~ 30 MB; ingest's download cap is 128 MiB, so whatever ingest fetched fits.
MAX_BOOK_FILE_BYTES = 256 * 1024 * 1024

_TYPOGRAPHY = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201a": "'",
    "\u201b": "'",
    "\u2032": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u201f": '"',
    "\u2033": '"',
    "\u00ab": '"',
    "\u00bb": '"',
    "\u2010": "-",
    "\u2011": "-",
    "\u2012": "-",
    "\u2013": "-",
    "\u2212": "-",
    "\u2014": "--",
    "\u2015": "--",
    "\u00ad": "",
    "\u200b": "",
    "\ufeff": "",
}
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\f\v]*\n")


class SkipBook(InputError):
    """A file that is not a usable book; the message is one line: where and why."""


@dataclass
class Book:
    path: Path
    author: str
    title: str
    text: str
    meta: BookMeta = field(default_factory=BookMeta)
    # `<folder>/<file stem>` as found on disk, the form the validation pairs use for `book1`/`book2`.
    source_id: str = ""
    # Characters of Gutenberg boilerplate removed, by kind (`Removed.as_dict`), and the books-in-one-file boundaries.
    removed: dict[str, int] = field(default_factory=dict)


def normalize_unicode(text: str) -> str:
    """NFKC plus ASCII quotes and dashes (see the module docstring)."""
    if text.isascii():
        return text
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    # str.replace per character runs at memory speed; str.translate over a whole book is ~10x slower.
    for char, ascii_form in _TYPOGRAPHY.items():
        if char in text:
            text = text.replace(char, ascii_form)
    return text


def reflow_reference(text: str) -> str:
    """What `reflow` computes, written plainly (the fast path is tested against it)."""
    paragraphs = (" ".join(piece.split()) for piece in _PARAGRAPH_BREAK.split(text))
    return "\n\n".join(p for p in paragraphs if p)


def _flatten(piece: str) -> str:
    # Most paragraphs are hard-wrapped lines with single spaces: joining the lines is then enough, and three
    # C-level scans cost less than splitting the paragraph into word objects and joining them back. A printable
    # string holds no whitespace but " ", so the shortcut is exact whenever its test passes.
    flat = piece.replace("\n", " ")
    if flat.isprintable() and "  " not in flat and not flat.startswith(" ") and not flat.endswith(" "):
        return flat
    # str.split() with no argument collapses every whitespace run in C; a regex sub over each space is 6x slower.
    return " ".join(piece.split())


def reflow(text: str) -> str:
    """Paragraphs separated by one blank line, each on one line, whitespace runs collapsed to one space."""
    return "\n\n".join(filter(None, map(_flatten, _PARAGRAPH_BREAK.split(text))))


def standardize(text: str) -> str:
    """Decoded book text -> clean body text (boilerplate removed, normalized, re-flowed)."""
    return standardize_counted(text)[0]


def standardize_counted(text: str) -> tuple[str, Removed]:
    """`standardize`, and the characters of Gutenberg boilerplate it removed, by kind (for the manifest)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = normalize_unicode(text)
    text, removed = strip_boilerplate_counted(text)
    if "_" in text:
        text = text.replace("_", "")
    return reflow(text), removed


def slugify(text: str) -> str:
    """Lowercase ASCII words joined by `_` ("Doré, Gustave" -> "dore_gustave"); "" when nothing is left."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    ascii_text = ascii_text.replace("'", "")
    return "_".join(re.findall(r"[a-z0-9]+", ascii_text))


def _display(path: Path) -> str:
    # A carriage return inside a file name would break the one-line message; bytes that are not UTF-8 could
    # not be written to a manifest or a terminal.
    return one_line_name(os.fspath(path))


def load_book(path: str | os.PathLike, min_chars: int = MIN_BOOK_CHARS) -> Book:
    """Read, decode and standardize one book file; raise SkipBook (one line: where, why) if unusable."""
    path = Path(path)
    where = _display(path)
    try:
        size = path.stat().st_size
        if size > MAX_BOOK_FILE_BYTES:
            raise SkipBook(f"{where}: {size:,} bytes, over the {MAX_BOOK_FILE_BYTES:,}-byte limit for one book")
        data = path.read_bytes()
    except OSError as err:
        raise SkipBook(f"{where}: cannot read ({err.strerror or err})") from err
    try:
        raw = decode_bytes(data, source=where)
    except UnreadableText as err:
        raise SkipBook(str(err)) from err
    raw = normalize_unicode(raw)
    meta = parse_header(raw)
    body, removed = standardize_counted(raw)
    if not body:
        raise SkipBook(f"{where}: no book text after removing the Gutenberg header, licence and footer")
    if len(body) < min_chars:
        raise SkipBook(f"{where}: only {len(body)} characters of text after cleaning (need {min_chars}); not a book")
    folder = unicode_name(path.parent.name)
    stem = unicode_name(path.stem)
    return Book(
        path=path,
        author=meta.author or " ".join(folder.split()) or "unknown",
        title=meta.title or " ".join(stem.split()) or "untitled",
        text=body,
        meta=meta,
        source_id=f"{folder}/{stem}",
        removed=removed.as_dict(),
    )
