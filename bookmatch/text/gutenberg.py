"""Project Gutenberg files: the header's metadata, and the cut of header, licence, footer and credits.

Markers are matched anywhere, not only at line starts, because some files arrive with every newline lost
(a whole book on one line). Covered styles, all seen in the development corpus:
new `*** START OF THE/THIS PROJECT GUTENBERG EBOOK ... ***` / `*** END OF ...`; old
`***START**THE SMALL PRINT!...` ... `*END*THE SMALL PRINT!...*END*`; the World Library Shakespeare
`SMALL PRINT! FOR __ COMPLETE SHAKESPEARE` notice and its `<<THIS ELECTRONIC VERSION ...>>` blocks; footers
`End of (the) Project Gutenberg (EBook|Etext)...`, `End of Project Gutenberg's ...`, `End Project Gutenberg's`,
`End of this Etext ...`, `*** START: FULL LICENSE ***`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class BookMeta:
    title: str | None = None
    author: str | None = None
    language: str | None = None
    ebook_id: int | None = None


_I = re.IGNORECASE
_BOOK = r"(?:e-?book|e-?text|work)"
_START_NEW = re.compile(r"\*{3}\s*START\s+OF\s+(?:THE|THIS)\s+PROJECT\s+GUTENBERG\s+" + _BOOK + r"[^*]{0,300}\*{3}", _I)
_START_OLD = re.compile(
    r"\*\s*END\s*\*?\s*THE\s+SMALL\s+PRINT![^\n]{0,120}?\*\s*END\s*\*"
    r"|\*+\s*SMALL\s+PRINT!\s+FOR\s+_+\s*COMPLETE\s+SHAKESPEARE\s*\*+(?:\s*\[\"?Small\s+Print\"?\s+V[^\]]{0,20}\])?",
    _I,
)
_END = re.compile(
    r"\*{3}\s*END\s+OF\s+(?:THE|THIS)\s+PROJECT\s+GUTENBERG"
    r"|\*{3}\s*START:\s*FULL\s+LICENSE"
    r"|\*{3}\s*START\s*\*\*\s*THE\s+SMALL\s+PRINT"
    r"|\bEnd\s+(?:of\s+)?(?:the\s+|this\s+)?Project\s+Gutenberg"
    r"|\bEnd\s+of\s+(?:the\s+|this\s+)?(?:P\.\s*G\.\s+)?E-?text\b",
    _I,
)
# Footer markers all contain one of these words; plain `str.find` over them is ~30x faster than running
# the case-insensitive marker regex over a whole book, which then only checks the window around a hit.
_FOOTER_WORDS = ("utenberg", "UTENBERG", "Etext", "LICENSE", "SMALL PRINT")
# Old First Folio files open with a long note from Project Gutenberg's director before the play.
_DIRECTOR_NOTE = re.compile(
    r"Executive\s+Director'?s\s+Notes:.{0,20000}?Project\s+Gutenberg\s+Executive\s+Director\.?", re.DOTALL
)
_DIRECTOR_NOTE_SPAN = 30000
# World Library's copyright notice, repeated between the plays of its Shakespeare files.
_WORLD_LIBRARY = re.compile(r"<<THIS ELECTRONIC VERSION.{0,1500}?>>", re.DOTALL)
_ILLUSTRATION = re.compile(r"\[\s*Illustration[^\]]{0,2000}\]", _I)
_CREDIT = re.compile(
    r"^\s*(?:Produced\s+by|E-?text\s+(?:was\s+)?prepared\s+by|Etext\s+prepared|Prepared\s+by|Transcribed\s+(?:from|by)"
    r"|Scanned\s+by|This\s+(?:e-?text|e-?book|file)\s+was\s+(?:produced|prepared|created|scanned|transcribed)"
    r"|Proofread\s+by|Transcriber'?s?\s+Notes?|HTML\s+version|Updated\s+editions|Distributed\s+Proofread"
    r"|\[?Note:\s+There\s+is\s+an\s+improved\s+edition)"
    r"|https?://|www\.|\S+@\S+\.\w+|Online\s+Distributed\s+Proofreading|Project\s+Gutenberg|\be-?text\b",
    _I,
)
_CREDIT_PARAGRAPHS_CHECKED = 12
_CREDIT_MAX_CHARS = 1200

# Header fields. A field starts a line and its value runs to the next line that starts a field, a blank line
# or the end of the header; a title may hold a field name ("Stories By English Authors: London"). Headers
# re-flowed onto one line are read with the looser pattern: a field name anywhere, ending at the next one.
_FIELD_NAMES = r"(?:Title|Author|Authors|Translator|Translated\s+by|Editor|Illustrator|Release\s+Date|Posting\s+Date|Last\s+Updated|Language|Character\s+set\s+encoding|Other|Contributor|Credits|Produced\s+by|Edition|Most\s+recently\s+updated)"
_LINE_FIELD_END = r"(?=\n[ \t]*" + _FIELD_NAMES + r":|\n[ \t]*\n|\s*\*{3}|\Z)"
_INLINE_FIELD_END = r"(?=\s+" + _FIELD_NAMES + r":|\n[ \t]*\n|\s*\*{3}|\Z)"


class _Field:
    def __init__(self, name: str) -> None:
        flags = re.IGNORECASE | re.DOTALL
        self.line = re.compile(r"(?:^|\n)[ \t]*" + name + r":[ \t]*(.+?)" + _LINE_FIELD_END, flags)
        self.inline = re.compile(r"(?:^|\s)" + name + r":[ \t]*(.+?)" + _INLINE_FIELD_END, flags)

    def search(self, header: str) -> re.Match | None:
        return self.line.search(header) or self.inline.search(header)


_TITLE = _Field("Title")
_AUTHOR = _Field(r"(?:Author|Authors)")
_LANGUAGE = _Field("Language")
_SERIES_BY = re.compile(r"in\s+our\s+series\s+by\s+([^\n*]+)", _I)
_EBOOK_ID = re.compile(r"\[\s*(?:e-?book|e-?text)\s*#\s*(\d+)\s*\]|This\s+file\s+should\s+be\s+named\s+(\d+)", _I)
_FIRST_LINE = re.compile(
    r"Project\s+Gutenberg(?:'s)?\s+E-?(?:Book|text)\s+of\s+([^*\n]+?)(?:,?\s+by\s+([^*\n]+?))?(?=\s+This\s+e-?book|\s*\*|\s*\n|\Z)",
    _I | re.DOTALL,
)


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = " ".join(value.split()).strip(" ,;*")
    return value or None


def _header_end(text: str) -> int:
    """Offset where the body starts (0 when no header marker is found)."""
    match = _START_NEW.search(text)
    if match:
        return match.end()
    match = _START_OLD.search(text)
    if match and match.start() < len(text) // 2:
        return match.end()
    return 0


def parse_header(text: str) -> BookMeta:
    """Title, author, language and ebook number from a Gutenberg header (None for what is missing)."""
    end = _header_end(text)
    header = text[:end] if end else text[:8000]
    title = _clean(m.group(1)) if (m := _TITLE.search(header)) else None
    author = _clean(m.group(1)) if (m := _AUTHOR.search(header)) else None
    language = _clean(m.group(1)) if (m := _LANGUAGE.search(header)) else None
    if title is None or author is None:
        first = _FIRST_LINE.search(header[:2000])
        if first:
            title = title or _clean(first.group(1))
            author = author or _clean(first.group(2))
    if author is None and (m := _SERIES_BY.search(header[:3000])):
        author = _clean(m.group(1))
    ebook_id = None
    if m := _EBOOK_ID.search(header):
        ebook_id = int(m.group(1) or m.group(2))
    return BookMeta(title=title, author=author, language=language, ebook_id=ebook_id)


def _footer_start(text: str, start: int) -> int:
    """Offset of the first footer marker after `start` (len(text) when there is none)."""
    cursor = start
    while True:
        # each word is searched only up to the earliest hit so far: most books are scanned once, not per word
        first = len(text)
        for word in _FOOTER_WORDS:
            pos = text.find(word, cursor, first + len(word) - 1)
            if pos >= 0:
                first = pos
        if first == len(text):
            return len(text)
        match = _END.search(text, max(start, first - 60), first + 40)
        if match:
            return match.start()
        cursor = first + 1


def _drop_credits(body: str) -> str:
    """Remove production-credit paragraphs among the first few paragraphs of the body."""
    # Walk the leading paragraphs by offset: credits sit at the top, and the body proper must not be copied.
    dropped: list[tuple[int, int]] = []
    cursor = 0
    for _ in range(_CREDIT_PARAGRAPHS_CHECKED):
        while cursor < len(body) and body[cursor] == "\n":
            cursor += 1
        if cursor >= len(body):
            break
        end = body.find("\n\n", cursor)
        end = len(body) if end < 0 else end
        # A long paragraph is prose (or a book that lost its newlines), never a credit line.
        if end - cursor <= _CREDIT_MAX_CHARS and _CREDIT.search(body[cursor:end]):
            dropped.append((cursor, end))
        cursor = end + 2
    if not dropped:
        return body
    pieces, kept_from = [], 0
    for start, end in dropped:
        pieces.append(body[kept_from:start])
        kept_from = end
    pieces.append(body[kept_from:])
    return "".join(pieces)


@dataclass
class Removed:
    """Characters `strip_boilerplate` removed, by kind; `boundaries` counts end lines that were followed by more
    book text (two books in one file), which end a part, not the text."""

    header: int = 0
    footer: int = 0
    between_books: int = 0
    notes: int = 0
    illustrations: int = 0
    credits: int = 0
    boundaries: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


# Words of the Project Gutenberg licence and small print. Across the development corpus's 406 footers no run of
# more than ~1,000 characters lacks all of them, while book text runs far longer without any: text after an end
# line holding a longer free run is more book, not the footer.
_LICENCE_WORDS = re.compile(
    r"gutenberg|\be-?texts?\b|\be-?books?\b|licen[cs]e|copyright|trademark|donat|foundation|warrant|refund|royalt"
    r"|distribut|https?:|www\.|e-?mail|archive|\btax|volunteer|public\s+domain|electronic\s+works?|small\s+print"
    r"|disclaim|damages",
    _I,
)
_MIN_BOOK_RUN = 2500


def _first_book_run(text: str, start: int, end: int) -> int | None:
    """Offset of the paragraph that opens the first run of >= _MIN_BOOK_RUN characters free of licence words in
    text[start:end], or None when there is none (the span is footer, licence or a short note)."""
    if end - start < _MIN_BOOK_RUN:
        return None
    previous = start
    for match in _LICENCE_WORDS.finditer(text, start, end):
        if match.start() - previous >= _MIN_BOOK_RUN:
            break
        previous = match.end()
    else:
        if end - previous < _MIN_BOOK_RUN:
            return None
    if previous == start:
        return start
    paragraph = text.find("\n\n", previous, end)  # the book resumes with the paragraph after the last licence word
    return end if paragraph < 0 else paragraph + 2


def _resume_after(text: str, footer: int) -> int | None:
    """Where book text resumes after the end line at `footer` (another book's start marker, or more book text
    without one), or None when everything after it is footer and licence."""
    marker = _START_NEW.search(text, footer) or _START_OLD.search(text, footer)
    if marker is not None:
        after = marker.end()
        if _first_book_run(text, after, _footer_start(text, after)) is not None:
            return after
    line_end = text.find("\n", footer)
    after = len(text) if line_end < 0 else line_end + 1
    return _first_book_run(text, after, _footer_start(text, after))


def book_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each stretch of book text: after the header, up to an end line; an end line followed by
    more book text is a boundary between two books (an anthology assembled by hand), and only the final
    footer/licence block ends the text."""
    spans = []
    start = _header_end(text)
    while True:
        end = _footer_start(text, start)
        spans.append((start, end))
        if end >= len(text):
            return spans
        resume = _resume_after(text, end)
        if resume is None or resume <= end:
            return spans
        start = resume


def strip_boilerplate(text: str) -> str:
    """The body of a Gutenberg book: header, licence, footer, production credits and illustrations removed.

    A file holding only a licence comes back empty (or whitespace), so callers can skip it.
    """
    return strip_boilerplate_counted(text)[0]


def strip_boilerplate_counted(text: str) -> tuple[str, Removed]:
    """`strip_boilerplate`, and how many characters of each kind it removed."""
    removed = Removed()
    spans = book_spans(text)
    removed.header = spans[0][0]
    removed.footer = len(text) - spans[-1][1]
    removed.boundaries = len(spans) - 1
    removed.between_books = sum(b[0] - a[1] for a, b in itertools.pairwise(spans))
    # Each book in the file is cleaned as if alone: its credits open its own text, its notes close it.
    parts = [_clean_part(text[a:b], removed) for a, b in spans]
    body = "\n\n".join(part for part in parts if part)
    return body.strip(), removed


def _clean_part(body: str, removed: Removed) -> str:
    """One book's text without director's notes, World Library notices, illustrations, a closing transcriber's
    note and opening credits; what goes is added to `removed`."""
    size = len(body)
    if "Executive Director" in body[:_DIRECTOR_NOTE_SPAN]:
        head = _DIRECTOR_NOTE.sub("", body[:_DIRECTOR_NOTE_SPAN], count=1)
        body = head + body[_DIRECTOR_NOTE_SPAN:]
    if "<<THIS ELECTRONIC VERSION" in body:
        body = _WORLD_LIBRARY.sub("", body)
    removed.notes, size = removed.notes + size - len(body), len(body)
    if "llustration" in body:
        body = _ILLUSTRATION.sub("", body)
    removed.illustrations, size = removed.illustrations + size - len(body), len(body)
    body = _drop_trailing_note(body)
    removed.notes, size = removed.notes + size - len(body), len(body)
    body = _drop_credits(body)
    removed.credits += size - len(body)
    return body.strip()


def _drop_trailing_note(body: str) -> str:
    """Cut a transcriber's note that closes the book (it describes the e-text, not the book)."""
    tail_start = len(body) - max(len(body) // 10, 3000)
    cut = body.rfind("Transcriber", max(tail_start, 0))
    if (
        cut > 0
        and body[:cut].rstrip(" \t")[-1:] in ("\n", "")
        and re.match(r"Transcriber'?s?\s+Notes?", body[cut : cut + 30], _I)
    ):
        return body[:cut]
    return body
