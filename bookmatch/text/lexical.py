"""Per-side lexical fingerprints: hashed, IDF-weighted content words of one passage.

Two passages of one book share names, places and rare vocabulary far more often than two books of one author
do, and a mean-pooled transformer embedding of a truncated passage dilutes exactly that signal. Each side is
fingerprinted on its own (so the bi-encoder stays Siamese: fingerprints can be stored with the embeddings); the
pair classifier compares the two with a cosine. IDF weights are fitted on the training texts and saved with the
model.
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Iterable, Sequence

import numpy as np

# Common English function words plus high-frequency verbs of narration: they carry style, not book identity.
STOP_WORDS = frozenset(
    """about above after again against also among another because been before being below between both
    came come could did does doing down during each even ever every from further gave give have having
    here hers herself himself into itself just know like made make many might more most much must myself
    never only other ought ours ourselves over said same shall should some such than that their theirs them
    themselves then there these they this those though through thus together under until upon very want
    were what when where which while whom whose will with within without would your yours yourself
    yourselves away back good great little long well still once again went took tell told think thought
    look looked asked answered replied cried says seen seemed seem shall went come came first last next
    nothing something anything everything always often perhaps quite rather indeed however yet""".split()
)

_WORD = re.compile(r"[A-Za-z][A-Za-z']{3,}")


def content_words(text: str) -> list[str]:
    """Lower-cased words of four or more letters that are not stop-words (possessive 's dropped)."""
    words = []
    for match in _WORD.finditer(text):
        word = match.group(0).lower()
        if word.endswith("'s"):
            word = word[:-2]
        word = word.strip("'")
        if len(word) >= 4 and word not in STOP_WORDS:
            words.append(word)
    return words


class LexicalFingerprint:
    """Hashing-trick TF-IDF over content words, L2-normalised, as a dense float32 vector per text."""

    def __init__(self, num_buckets: int = 4096, idf: Sequence[float] | None = None):
        self.num_buckets = num_buckets
        self.idf = np.ones(num_buckets, dtype=np.float32) if idf is None else np.asarray(idf, dtype=np.float32)
        if self.idf.shape != (num_buckets,):
            raise ValueError(f"idf has shape {self.idf.shape}, expected ({num_buckets},)")
        self._bucket_cache: dict[str, int] = {}

    def _bucket(self, word: str) -> int:
        bucket = self._bucket_cache.get(word)
        if bucket is None:
            # crc32 is stable across processes and machines, unlike hash().
            bucket = zlib.crc32(word.encode("utf-8")) % self.num_buckets
            if len(self._bucket_cache) < 500_000:
                self._bucket_cache[word] = bucket
        return bucket

    def _counts(self, text: str) -> dict[int, int]:
        counts: dict[int, int] = {}
        for word in content_words(text):
            bucket = self._bucket(word)
            counts[bucket] = counts.get(bucket, 0) + 1
        return counts

    def fit(self, texts: Iterable[str]) -> "LexicalFingerprint":
        """Smoothed IDF per bucket from document frequencies over `texts`."""
        doc_freq = np.zeros(self.num_buckets, dtype=np.float64)
        n_docs = 0
        for text in texts:
            n_docs += 1
            for bucket in self._counts(text):
                doc_freq[bucket] += 1
        self.idf = (np.log((1 + n_docs) / (1 + doc_freq)) + 1.0).astype(np.float32)
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.num_buckets), dtype=np.float32)
        for row, text in enumerate(texts):
            for bucket, count in self._counts(text).items():
                out[row, bucket] = (1.0 + math.log(count)) * self.idf[bucket]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    def to_dict(self) -> dict:
        return {"num_buckets": self.num_buckets}
