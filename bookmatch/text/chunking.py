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

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

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

# The characters for which the byte-wide test (a byte <= 32 is a space, bytes.lower, "?" beyond Latin-1)
# and the reference (str.lower().split()) disagree: C0 controls that are not whitespace, whitespace above
# U+0020, and the two characters whose lowercase is or holds ASCII (U+0130, U+212A). The test suite derives
# this set from every code point.
_SPLIT_MISMATCH_RANGES = (
    (0x00, 0x08),
    (0x0E, 0x1B),
    (0x85, 0x85),
    (0xA0, 0xA0),
    (0x130, 0x130),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x2028, 0x2029),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x212A, 0x212A),
    (0x3000, 0x3000),
)
_SPLIT_MISMATCH = re.compile("[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in _SPLIT_MISMATCH_RANGES) + "]")
_SPLIT_CONSISTENT_LATIN1 = bytes(b for b in range(256) if not _SPLIT_MISMATCH.match(chr(b)))
_SYMBOL_TABLE = np.zeros(256, dtype=bool)
_SYMBOL_TABLE[[ord(c) for c in SYMBOLS]] = True


class Chunk(NamedTuple):  # a tuple, not a frozen dataclass: books make ~1,000 of these each, and it builds 2x faster
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
_WORD_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(_STOP_WORD_MAX_LEN + 1)], dtype=np.uint64)


def _pack(codes: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """One uint64 per token (length <= 8): its bytes, little-endian, the rest zero.

    `codes` is read through an unaligned 8-byte view (element i = bytes i..i+7), so each token costs one
    gather instead of one per character.
    """
    padded = np.concatenate((codes, np.zeros(8, dtype=np.uint8)))
    words = np.ndarray(shape=(len(codes),), dtype="<u8", buffer=padded, strides=(1,))
    return words[starts] & _WORD_MASKS[lengths]


def _perfect_hash(keys: np.ndarray, bits: int = 14) -> tuple[np.uint64, np.ndarray]:
    """A multiplier whose top `bits` bits of key * multiplier give every key its own slot, and the slot table."""
    for seed in range(1, 10_000):
        multiplier = np.uint64((0x9E3779B97F4A7C15 * seed) % (1 << 64) | 1)
        slots = (keys * multiplier) >> np.uint64(64 - bits)
        if len(np.unique(slots)) == len(keys):
            table = np.zeros(1 << bits, dtype=np.uint64)  # 0 is never a key: every stop word has a letter
            table[slots] = keys
            return multiplier, table
    raise RuntimeError("no perfect hash found for the stop words")


_sorted_stop_words = sorted(ENGLISH_STOP_WORDS)
_STOP_KEYS = _pack(
    np.frombuffer(" ".join(_sorted_stop_words).encode("ascii"), dtype=np.uint8),
    np.cumsum([0] + [len(w) + 1 for w in _sorted_stop_words][:-1]),
    np.array([len(w) for w in _sorted_stop_words]),
)
_STOP_MULTIPLIER, _STOP_TABLE = _perfect_hash(_STOP_KEYS)


def _is_stop_key(keys: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        slots = (keys * _STOP_MULTIPLIER) >> np.uint64(64 - 14)
    return _STOP_TABLE[slots] == keys


def _count_between(positions: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How many of the sorted `positions` fall in [lo, hi) for each pair."""
    return np.searchsorted(positions, hi) - np.searchsorted(positions, lo)


def _token_bounds(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of every token: runs of bytes above U+0020, as `str.split()` finds them."""
    is_space = np.ones(len(codes) + 2, dtype=bool)
    np.less_equal(codes, 32, out=is_space[1:-1])
    edges = np.flatnonzero(is_space[1:] != is_space[:-1])  # alternate: start, end, start, end, ...
    return edges[0::2], edges[1::2]


def _prose_mask(
    joined: str,
    sentences: Sequence[str],
    lo: np.ndarray,
    hi: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    rules: ProseFilter,
) -> np.ndarray:
    """`looks_like_english_prose(joined[lo:hi])` for every window (sentences `starts..ends`), from whole-book
    position arrays.

    Tokens are runs of characters above U+0020 (what `str.split()` gives on standardized text); a token is a
    stop word when its packed characters match a packed stop word. Per window, counts come from binary
    searches of token, stop-word and symbol positions between the window's character bounds.
    """
    # One byte per character, characters beyond Latin-1 read as "?" (never a space, stop-word letter or symbol),
    # ASCII letters lowered. That agrees with the reference's str.lower().split() unless the text holds one of
    # the few characters in _SPLIT_MISMATCH; then the per-chunk reference decides.
    try:
        raw = joined.encode("latin-1")
        usable = not raw.translate(None, _SPLIT_CONSISTENT_LATIN1)  # what is left is a mismatching byte
    except UnicodeEncodeError:
        usable = _SPLIT_MISMATCH.search(joined) is None
        raw = joined.encode("latin-1", "replace")  # one "?" per character beyond Latin-1
    if not usable:
        return np.array(
            [
                looks_like_english_prose(" ".join(sentences[s:e]), rules.min_stopword_share, rules.max_symbol_share)
                for s, e in zip(starts, ends)
            ],
            dtype=bool,
        )
    lowered_bytes = raw.lower()  # ASCII letters only: stop words, symbols and markers are ASCII
    codes = np.frombuffer(lowered_bytes, dtype=np.uint8)  # byte i is character i, so positions carry over
    token_starts, token_ends = _token_bounds(codes)
    token_lengths = token_ends - token_starts
    short = token_lengths <= _STOP_WORD_MAX_LEN
    short_starts = token_starts[short]
    stop_positions = short_starts[_is_stop_key(_pack(codes, short_starts, token_lengths[short]))]
    symbol_positions = np.flatnonzero(_SYMBOL_TABLE[codes])

    tokens = _count_between(token_starts, lo, hi)
    stops = _count_between(stop_positions, lo, hi)
    symbols = _count_between(symbol_positions, lo, hi)
    remnants = np.zeros(len(lo), dtype=np.int64)
    for marker in _REMNANT_MARKER_BYTES:
        if marker in lowered_bytes:
            # Only markers that fit wholly inside the window count, as in the per-chunk check.
            positions = np.array(_find_all(lowered_bytes, marker), dtype=np.int64)
            remnants += _count_between(positions, lo, hi - len(marker) + 1)
    return (
        (tokens >= MIN_TOKENS)
        & (stops >= rules.min_stopword_share * tokens)
        & (symbols <= rules.max_symbol_share * (hi - lo))
        & (remnants == 0)
    )


_REMNANT_MARKER_BYTES = tuple(marker.encode("ascii") for marker in REMNANT_MARKERS)


def _find_all(text: bytes, needle: bytes) -> list[int]:
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
    lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
    offsets = _prefix(lengths + 1)  # sentence i spans joined[offsets[i] : offsets[i + 1] - 1]
    lo, hi = offsets[starts], offsets[ends] - 1
    keep = (hi - lo >= min_chars) & (hi - lo <= max_chars)
    if not keep.any():
        return []
    # one string for the book: windows are slices of it (a slice copies once; a join of 14 sentences
    # measures and copies each)
    joined = " ".join(sentences)
    if english_filter:
        keep &= _prose_mask(joined, sentences, lo, hi, starts, ends, rules)
    return [Chunk(joined[a:b], s) for a, b, s in zip(lo[keep].tolist(), hi[keep].tolist(), starts[keep].tolist())]


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
