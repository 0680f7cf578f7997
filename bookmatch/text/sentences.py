"""Sentence splitting: one fast regex splitter, and spaCy's rule-based sentencizer as the reference.

The regex splitter models what `spacy.blank("en")` + `sentencizer` does, so the two agree (see
`scripts/bench_text.py` for the measured agreement), at a fraction of the cost:
- `!` and `?` always end a sentence, with any closing quotes or brackets after them.
- `.` ends a sentence unless the word is one of spaCy's tokenizer exceptions (Mr., Mrs., Dr., St., Gen.,
  Jan., e.g., a single lowercase letter, but not the t of "didn't."), or a single capital letter (initials "J. R. R.", "A.D.", "U.S."),
  because spaCy's tokenizer does not split the period off those words.
- An ellipsis ("..." or more) does not end a sentence; a spaced one (". . .") does, after its last dot.
- Paragraph breaks always end a sentence.
Deliberate difference: when a sentence is followed by an opening quote (`said. "Now`), spaCy leaves the
quote at the end of the previous sentence; this splitter starts the next sentence with it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Literal

# spaCy's English tokenizer exceptions that end in a period (case-sensitive, as in spaCy), grouped by length
# because Python look-behinds must have a fixed width.
_EXCEPTIONS = (
    "Adm Ak Ala Apr Ariz Ark Aug Bros Calif Co Colo Conn Corp Dec Del Dr Feb Fla Ga Gen Gov Ia Id Ill Inc Ind "
    "Jan Jr Jul Jun Kan Kans Ky La Ltd Mar Mass Md Messrs Mich Minn Miss Mo Mont Mr Mrs Ms Mt Neb Nebr Nev Nov "
    "Oct Okla Ore Pa Prof Rep Rev Sen Sep Sept St Tenn Va Wash Wis co vs E.g I.e e.g i.e a.m p.m v.s"
).split()


def _exceptions_by_length() -> list[list[str]]:
    by_length: dict[int, list[str]] = {}
    for word in _EXCEPTIONS:
        by_length.setdefault(len(word), []).append(re.escape(word))
    return [words for _, words in sorted(by_length.items())]


def _exception_lookbehinds() -> str:
    return "".join(rf"(?<!\b(?:{'|'.join(words)})\.)" for words in _exceptions_by_length())


_CLOSERS = r"[\"')\]}-]*"
_BOUNDARY = re.compile(
    # Every alternative starts with one of `.!?`, so the regex engine scans for those characters quickly and
    # only then runs the look-behinds.
    r"("
    r"[.!?](?:"
    r"(?<=[!?])[!?.]*"
    # A lone period: not part of an ellipsis, not after a single capital or lowercase letter, not an exception.
    r"|(?<!\.\.)(?<!\b[A-Z]\.)(?<![^\w'][a-z\u00e4\u00f6\u00fc]\.)(?<!^[a-z\u00e4\u00f6\u00fc]\.)"
    + _exception_lookbehinds()
    + r"(?!\.)"
    r")"
    + _CLOSERS
    + r"(?:[ ]\.(?=[ \"')\]}-]|$)"
    + _CLOSERS
    + r")*"  # a spaced ellipsis ". . ." ends after its last dot
    r")[ \t]+"
)


def _as_paragraph_lines(text: str, standardized: bool = False) -> str:
    """Standardized text has one paragraph per line; anything else (hard-wrapped lines) is re-flowed first."""
    if standardized:  # the caller vouches for it (`standardize`'s output): skip four scans of the book
        return text
    if text.count("\n") == 2 * text.count("\n\n") and "\n " not in text and " \n" not in text:
        return text.strip(" ")
    from bookmatch.text.standardize import reflow

    return reflow(text)


def split_sentences(text: str, standardized: bool = False) -> list[str]:
    """Sentences of `text`, in order, whitespace-trimmed (no sentence spans a paragraph break).

    `standardized=True` promises the text is `standardize`'s output (one paragraph per line, single spaces).
    """
    # split() with one capturing group gives [text, terminal, text, terminal, ..., text]; gluing each text to
    # its terminal rebuilds the sentences without a Python call per sentence (re.sub with a "\\1" template
    # expands it in Python for every match, which made splitting 2x slower).
    parts = _BOUNDARY.split(_as_paragraph_lines(text, standardized))
    sentences = list(map(str.__add__, parts[0:-1:2], parts[1::2]))
    sentences.append(parts[-1])
    return list(filter(None, "\n".join(sentences).split("\n")))


@functools.lru_cache(maxsize=1)
def _spacy_pipeline():
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.max_length = 50_000_000  # paragraphs are fed one by one; this only guards a book that has none
    return nlp


def spacy_split_sentences(text: str, standardized: bool = False) -> list[str]:
    """spaCy's rule-based sentencizer, fed paragraph by paragraph (slow: the reference, not the default)."""
    nlp = _spacy_pipeline()
    paragraphs = [p for p in _as_paragraph_lines(text, standardized).split("\n\n") if p.strip()]
    sentences: list[str] = []
    for doc in nlp.pipe(paragraphs, batch_size=256):
        sentences.extend(s for s in (span.text.strip() for span in doc.sents) if s)
    return sentences


def get_splitter(name: Literal["regex", "spacy"] = "regex", standardized: bool = False) -> Callable[[str], list[str]]:
    """The sentence splitter called `name` (for `standardize`'s output when `standardized`)."""
    if name == "regex":
        return functools.partial(split_sentences, standardized=standardized)
    if name == "spacy":
        return functools.partial(spacy_split_sentences, standardized=standardized)
    from bookmatch.errors import InputError

    raise InputError(f"unknown sentence splitter {name!r}: use 'regex' or 'spacy'")


def boundary_offsets(sentences: list[str], snap_to_word: bool = True) -> set[int]:
    """Sentence boundaries as offsets into the whitespace-free concatenation of `sentences`.

    With `snap_to_word`, a boundary moves forward to the next letter or digit, so splitters that only differ
    on which side of a boundary a quote or bracket lands (see the module docstring) count as agreeing.
    """
    pieces = ["".join(s.split()) for s in sentences]
    joined = "".join(pieces)
    offsets: set[int] = set()
    position = 0
    for piece in pieces[:-1]:
        position += len(piece)
        boundary = position
        if snap_to_word:
            while boundary < len(joined) and not joined[boundary].isalnum():
                boundary += 1
        offsets.add(boundary)
    return offsets


def boundary_agreement(
    text: str, reference: Callable[[str], list[str]], candidate: Callable[[str], list[str]], snap_to_word: bool = True
) -> dict[str, float]:
    """Precision, recall and F1 of `candidate`'s sentence boundaries against `reference`'s on `text`.

    Paragraph breaks are left out: every splitter ends a sentence there, and counting them would flatter both.
    """
    text = _as_paragraph_lines(text)
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    paragraph_breaks = boundary_offsets(paragraphs, snap_to_word)
    expected = boundary_offsets(reference(text), snap_to_word) - paragraph_breaks
    found = boundary_offsets(candidate(text), snap_to_word) - paragraph_breaks
    hits = len(expected & found)
    precision = hits / len(found) if found else 1.0
    recall = hits / len(expected) if expected else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "reference_boundaries": len(expected),
        "candidate_boundaries": len(found),
    }
