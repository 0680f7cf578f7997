"""Passages for training and matching: windows of consecutive sentences, overlapping, English prose only.

Windows hold `chunk_size` sentences and start every `chunk_size - overlap` sentences, so consecutive chunks
share `overlap` sentences (`Chunk.start_sentence` lets callers tell which chunks overlap). A chunk is dropped
when it is shorter than `min_chars` or longer than `max_chars` (a run-on list or a table flattened into one
"sentence"), or when it fails a light English-prose test: enough common English function words among its
tokens, few digits and markup symbols, and no Project Gutenberg remnants. That drops tables of contents,
indexes, glossaries, catalogues, non-English passages and leftover licence text without a language model.

The test runs once per book on whole-book arrays (prefix sums over tokens and characters), not once per
chunk: chunks overlap, and per-chunk regexes made chunking the slowest step of text preparation.
`looks_like_english_prose` is the same test on one text, and the reference the fast path is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

DEFAULT_CHUNK_SIZE = 14
DEFAULT_OVERLAP = 4
DEFAULT_MIN_CHARS = 200
DEFAULT_MAX_CHARS = 6000
# Measured on the development corpus (whitespace tokens, lowercased): English prose chunks sit at a median
# 0.45 stop-word share (1st percentile 0.25); indexes, glossaries and foreign text at a median 0.12.
DEFAULT_MIN_STOPWORD_SHARE = 0.25
# Digits and markup symbols per character: ~0 in prose, 0.07-0.3 in indexes, tables and catalogues.
DEFAULT_MAX_SYMBOL_SHARE = 0.05
MIN_TOKENS = 5

ENGLISH_STOP_WORDS = frozenset(
    """a about after all an and are as at be been but by can could did do for from had has have he her him his
    how i if in into is it its me my no not now of on one or our out said she so some than that the their them
    then there they this to up upon was we were what when which who will with would you your""".split()
)
SYMBOLS = "0123456789#=/[]|*<>_+@$%&{}~^\\"
# Lowercased remnants of Gutenberg boilerplate ("pretext" must not match, hence the leading space).
REMNANT_MARKERS = ("gutenberg", "small print!", " etext", "e-text", "electronic work")

_SYMBOL_TABLE = np.zeros(128, dtype=bool)
_SYMBOL_TABLE[[ord(c) for c in SYMBOLS]] = True


@dataclass(frozen=True)
class Chunk:
    text: str
    start_sentence: int


@dataclass(frozen=True)
class ProseFilter:
    min_stopword_share: float = DEFAULT_MIN_STOPWORD_SHARE
    max_symbol_share: float = DEFAULT_MAX_SYMBOL_SHARE


def looks_like_english_prose(
    text: str,
    min_stopword_share: float = DEFAULT_MIN_STOPWORD_SHARE,
    max_symbol_share: float = DEFAULT_MAX_SYMBOL_SHARE,
) -> bool:
    """True for running English text; False for indexes, contents pages, foreign text, licence remnants."""
    lowered = text.lower()
    tokens = lowered.split()
    if len(tokens) < MIN_TOKENS:
        return False
    if sum(map(ENGLISH_STOP_WORDS.__contains__, tokens)) < min_stopword_share * len(tokens):
        return False
    if sum(map(lowered.count, SYMBOLS)) > max_symbol_share * len(lowered):
        return False
    return not any(marker in lowered for marker in REMNANT_MARKERS)


def _window_starts(num_sentences: int, chunk_size: int, overlap: int) -> np.ndarray:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not 0 <= overlap < chunk_size:
        raise ValueError(f"overlap must be in [0, chunk_size), got {overlap} with chunk_size {chunk_size}")
    if num_sentences == 0:
        return np.zeros(0, dtype=np.int64)
    # A book shorter than one window still yields one (shorter) window.
    return np.arange(0, max(num_sentences - chunk_size, 0) + 1, chunk_size - overlap, dtype=np.int64)


def _prefix(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=out[1:])
    return out


_STOP_WORD_MAX_LEN = max(map(len, ENGLISH_STOP_WORDS))


def _pack(codes: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """One uint64 per token: its first characters, 8 bits each (codes above 255 become 255, never a stop word)."""
    keys = np.zeros(len(starts), dtype=np.uint64)
    last = len(codes) - 1
    for k in range(_STOP_WORD_MAX_LEN):
        chars = np.minimum(codes[np.minimum(starts + k, last)], 255).astype(np.uint64)
        keys |= np.where(k < lengths, chars << np.uint64(8 * k), np.uint64(0))
    return keys


_STOP_KEYS = np.sort(
    _pack(
        np.frombuffer(" ".join(sorted(ENGLISH_STOP_WORDS)).encode("utf-32-le"), dtype=np.uint32),
        np.cumsum([0] + [len(w) + 1 for w in sorted(ENGLISH_STOP_WORDS)][:-1]),
        np.array([len(w) for w in sorted(ENGLISH_STOP_WORDS)]),
    )
)


def _count_between(positions: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How many of the sorted `positions` fall in [lo, hi) for each pair."""
    return np.searchsorted(positions, hi) - np.searchsorted(positions, lo)


def _prose_mask(sentences: Sequence[str], starts: np.ndarray, ends: np.ndarray, rules: ProseFilter) -> np.ndarray:
    """`looks_like_english_prose(" ".join(sentences[s:e]))` for every window, from whole-book position arrays.

    Tokens are runs of characters above U+0020 (what `str.split()` gives on standardized text); a token is a
    stop word when its packed characters match a packed stop word. Per window, counts come from binary
    searches of token, stop-word and symbol positions between the window's character bounds.
    """
    lowered = " ".join(sentences).lower()
    lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
    if len(lowered) != int(lengths.sum()) + len(sentences) - 1 or not lowered.isprintable():
        # str.lower() changed a length, or unusual whitespace: use the per-chunk reference.
        return np.array([looks_like_english_prose(" ".join(sentences[s:e]), rules.min_stopword_share,
                                                  rules.max_symbol_share) for s, e in zip(starts, ends)], dtype=bool)
    char_start = np.zeros(len(sentences) + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=char_start[1:])  # sentence i spans lowered[char_start[i] : char_start[i+1] - 1]
    lo, hi = char_start[starts], char_start[ends] - 1

    codes = np.frombuffer(lowered.encode("utf-32-le"), dtype=np.uint32)
    is_space = codes <= 32
    before_is_space = np.concatenate(([True], is_space[:-1]))
    after_is_space = np.concatenate((is_space[1:], [True]))
    token_starts = np.flatnonzero(~is_space & before_is_space)
    token_lengths = np.flatnonzero(~is_space & after_is_space) + 1 - token_starts
    short = token_lengths <= _STOP_WORD_MAX_LEN
    keys = _pack(codes, token_starts[short], token_lengths[short])
    found = np.minimum(np.searchsorted(_STOP_KEYS, keys), len(_STOP_KEYS) - 1)
    stop_positions = token_starts[short][_STOP_KEYS[found] == keys]
    symbol_positions = np.flatnonzero(_SYMBOL_TABLE[np.minimum(codes, 127)] & (codes < 128))

    tokens = _count_between(token_starts, lo, hi)
    stops = _count_between(stop_positions, lo, hi)
    symbols = _count_between(symbol_positions, lo, hi)
    remnants = np.zeros(len(lo), dtype=np.int64)
    for marker in REMNANT_MARKERS:
        if marker in lowered:
            # Only markers that fit wholly inside the window count, as in the per-chunk check.
            positions = np.array(_find_all(lowered, marker), dtype=np.int64)
            remnants += _count_between(positions, lo, hi - len(marker) + 1)
    return (
        (tokens >= MIN_TOKENS)
        & (stops >= rules.min_stopword_share * tokens)
        & (symbols <= rules.max_symbol_share * (hi - lo))
        & (remnants == 0)
    )


def _find_all(text: str, needle: str) -> list[int]:
    found = []
    pos = text.find(needle)
    while pos >= 0:
        found.append(pos)
        pos = text.find(needle, pos + 1)
    return found


def make_chunk_records(
    sentences: Sequence[str],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    min_chars: int = DEFAULT_MIN_CHARS,
    max_chars: int = DEFAULT_MAX_CHARS,
    english_filter: bool = True,
    rules: ProseFilter = ProseFilter(),
) -> list[Chunk]:
    """Chunks with the index of their first sentence (sentences are joined with one space)."""
    sentences = list(sentences)
    starts = _window_starts(len(sentences), chunk_size, overlap)
    if len(starts) == 0:
        return []
    ends = np.minimum(starts + chunk_size, len(sentences))
    lengths = _prefix(np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences)) + 1)
    chars = lengths[ends] - lengths[starts] - 1
    keep = (chars >= min_chars) & (chars <= max_chars)
    if english_filter and keep.any():
        keep &= _prose_mask(sentences, starts, ends, rules)
    return [
        Chunk(text=" ".join(sentences[s:e]), start_sentence=int(s))
        for s, e in zip(starts[keep].tolist(), ends[keep].tolist())
    ]


def make_chunks(
    sentences: Sequence[str],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    min_chars: int = DEFAULT_MIN_CHARS,
    max_chars: int = DEFAULT_MAX_CHARS,
    english_filter: bool = True,
) -> list[str]:
    """Chunk texts: `chunk_size` sentences each, consecutive chunks sharing `overlap` sentences."""
    return [c.text for c in make_chunk_records(sentences, chunk_size, overlap, min_chars, max_chars, english_filter)]


def chunk_book(
    text: str,
    splitter: Callable[[str], list[str]] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    min_chars: int = DEFAULT_MIN_CHARS,
    max_chars: int = DEFAULT_MAX_CHARS,
    english_filter: bool = True,
) -> list[Chunk]:
    """Split standardized book text into sentences (regex splitter by default) and chunk them."""
    if splitter is None:
        from bookmatch.text.sentences import split_sentences as splitter
    return make_chunk_records(splitter(text), chunk_size, overlap, min_chars, max_chars, english_filter)
