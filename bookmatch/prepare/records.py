"""What a worker sends back for one book: its chunks, its sentence hashes and its word-gram shingles.

The full text never leaves the worker; only the sampled chunks, one 64-bit hash per sentence (for
boilerplate) and a sample of the book's word n-gram hashes (for duplicate works) do.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np


@dataclass
class BookRecord:
    path: str  # relative to the books folder, posix separators: the stable key across machines and shards
    author: str  # header author (may be "Various"); the folder author is the first path part
    title: str
    # The chunk texts, or None once they are spilled to a ChunkStore (texts are fetched only for the pairs).
    chunks: list[str] | None
    chunk_starts: list[int]  # index of each chunk's first sentence, so overlapping chunks can be told apart
    chunk_topics: list[str]
    sentence_hashes: np.ndarray  # uint64 per sentence in order; 0 for sentences too short to be a shingle
    # Sorted distinct sampled word n-gram hashes (`word_gram_shingles`): what duplicate works are found by.
    gram_shingles: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    book_id: str = field(default="")  # author_slug/title_slug, assigned once over the whole sorted book list
    # Position of each chunk in the stored list; dropping boilerplate chunks keeps the others' positions.
    chunk_ids: list[int] = field(default_factory=list)
    # Characters of boilerplate standardization removed, by kind (text.gutenberg.Removed): summed in the manifest.
    removed: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.chunk_ids:
            self.chunk_ids = list(range(len(self.chunk_starts)))

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_starts)

    @property
    def folder_author(self) -> str:
        parts = self.path.split("/")
        return parts[-2] if len(parts) >= 2 else ""

    def sentence_shingles(self) -> np.ndarray:
        """Sorted distinct non-zero sentence hashes."""
        return np.unique(self.sentence_hashes[self.sentence_hashes != 0])

    def chunk_hashes(self, index: int, chunk_size: int) -> np.ndarray:
        start = self.chunk_starts[index]
        return self.sentence_hashes[start : start + chunk_size]


_SEPARATOR = "\x1e"
_NON_WORD = re.compile(r"[^a-z0-9\x1e]+")


def sentence_hashes(sentences: list[str], min_words: int) -> np.ndarray:
    """A stable 64-bit hash per sentence of its lower-cased words (punctuation and spacing ignored); 0 for a
    sentence of fewer than `min_words` words, since short ones ("Yes, sir.") recur across unrelated books.

    One lower() and one regex pass cover all the sentences joined, rather than one call per sentence.
    """
    cleaned = _NON_WORD.sub(" ", _SEPARATOR.join(s.replace(_SEPARATOR, " ") for s in sentences).lower())
    out = np.zeros(len(sentences), dtype=np.uint64)
    for index, words in enumerate(cleaned.split(_SEPARATOR)):
        words = words.strip()
        if words.count(" ") + 1 < min_words:
            continue
        digest = hashlib.blake2b(words.encode("utf-8"), digest_size=8).digest()
        out[index] = int.from_bytes(digest, "little") or 1
    return out


def sentence_hash(sentence: str, min_words: int) -> int:
    return int(sentence_hashes([sentence], min_words)[0])


_LETTERS = re.compile(r"[a-z]+")
_GRAM_BASE = np.uint64(0x100000001B3)  # odd: every word position changes every bit pattern
_MIX = np.uint64(0xFF51AFD7ED558CCD)


def word_gram_shingles(text: str, words_per_gram: int, keep_one_in: int) -> np.ndarray:
    """Sorted distinct hashes of the text's `words_per_gram`-word runs, keeping the ~1/`keep_one_in` whose
    hash is 0 modulo `keep_one_in` (the same runs in every book, so shared samples estimate shared text).

    Words are lower-cased letters only: verse line numbers, spelling apostrophes ("compell'd") and
    re-punctuation, which break whole-sentence hashes, do not break a run of words.
    """
    words = _LETTERS.findall(text.lower())
    if len(words) < words_per_gram:
        return np.zeros(0, dtype=np.uint64)
    vocabulary: dict[str, int] = {}
    ids = np.fromiter((vocabulary.setdefault(w, len(vocabulary)) for w in words), dtype=np.int64, count=len(words))
    word_hashes = np.fromiter(
        (int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little") for w in vocabulary),
        dtype=np.uint64,
        count=len(vocabulary),
    )[ids]
    count = len(words) - words_per_gram + 1
    grams = np.zeros(count, dtype=np.uint64)
    for offset in range(words_per_gram):  # polynomial hash, wrapping modulo 2**64
        grams = grams * _GRAM_BASE + word_hashes[offset : offset + count]
    grams ^= grams >> np.uint64(33)  # spread the high bits into the low ones the sample is taken on
    grams *= _MIX
    grams ^= grams >> np.uint64(33)
    return np.unique(grams[grams % np.uint64(keep_one_in) == 0])
