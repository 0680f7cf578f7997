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
from collections.abc import Iterable, Sequence

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


# Capitalised words that are titles or calendar words rather than names of people and places.
NAME_STOP_WORDS = frozenset(
    """mrs miss sir lady lord madam madame monsieur mme mlle dear god heaven sunday monday tuesday wednesday
    thursday friday saturday january february march april june july august september october november
    december english french german christian chapter""".split()
)

_CAPITALISED = re.compile(r"\b([A-Z][a-z]{2,})\b")
# a capitalised word right after these (and optional quotes/brackets) may only be a sentence start
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]['\"”’)]*)\s*['\"“‘(]*\s*$")
_TITLE_BEFORE = re.compile(r"\b(?:Mr|Mrs|Dr|St|Mme|Mlle|Messrs|Capt|Col|Gen|Rev|Prof)\.\s*$")


def proper_names(text: str) -> list[str]:
    """Lower-cased capitalised words not at a sentence start: mostly names of characters and places.

    Same-book passages share their characters' names; two books by one author rarely do, and a name seen
    in no training book still matches itself through its hash bucket.
    """
    names = []
    for match in _CAPITALISED.finditer(text):
        start = match.start(1)
        if _SENTENCE_START.search(text, max(0, start - 6), start) and not _TITLE_BEFORE.search(
            text, max(0, start - 9), start
        ):
            continue
        name = match.group(1).lower()
        if name not in NAME_STOP_WORDS and name not in STOP_WORDS:
            names.append(name)
    return names


VOCABULARIES = {"content_words": content_words, "names": proper_names}


class LexicalFingerprint:
    """Hashing-trick TF-IDF over one vocabulary (content words or names), L2-normalised, one vector per text."""

    def __init__(self, num_buckets: int = 4096, idf: Sequence[float] | None = None, vocabulary: str = "content_words"):
        if vocabulary not in VOCABULARIES:
            raise ValueError(f"unknown vocabulary {vocabulary!r}; choose one of {', '.join(VOCABULARIES)}")
        self.words = VOCABULARIES[vocabulary]
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
        for word in self.words(text):
            bucket = self._bucket(word)
            counts[bucket] = counts.get(bucket, 0) + 1
        return counts

    def fit(self, texts: Iterable[str]) -> LexicalFingerprint:
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

    def signatures(self, texts: Sequence[str], top_k: int = 64) -> np.ndarray:
        """(N, 2*top_k) float32: the `top_k` heaviest buckets of each text, then their weights.

        Weights are the TF-IDF values divided by the norm of the text's whole vector, so the cosine of two
        signatures (`signature_cosine`) is the full cosine restricted to the heaviest terms. Unused slots hold
        bucket -1 with weight 0. Compact enough to store beside every text of a large dataset.
        """
        out = np.zeros((len(texts), 2 * top_k), dtype=np.float32)
        out[:, :top_k] = -1.0
        for row, text in enumerate(texts):
            counts = self._counts(text)
            if not counts:
                continue
            buckets = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = 1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
            weights = tf * self.idf[buckets]
            norm = float(np.linalg.norm(weights))
            if norm == 0.0:
                continue
            keep = np.argsort(-weights, kind="stable")[:top_k]
            out[row, : len(keep)] = buckets[keep]
            out[row, top_k : top_k + len(keep)] = weights[keep] / norm
        return out


def signature_cosine(sig_a, sig_b):
    """Cosine of two batches of signatures (torch tensors (N, 2K)): sum of weight products of shared buckets."""
    top_k = sig_a.shape[-1] // 2
    idx_a, w_a = sig_a[..., :top_k], sig_a[..., top_k:]
    idx_b, w_b = sig_b[..., :top_k], sig_b[..., top_k:]
    same = (idx_a.unsqueeze(-1) == idx_b.unsqueeze(-2)) & (idx_a.unsqueeze(-1) >= 0)
    return (same * w_a.unsqueeze(-1) * w_b.unsqueeze(-2)).sum(dim=(-1, -2))
