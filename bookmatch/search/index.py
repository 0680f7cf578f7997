"""A search index of book passages: the bi-encoder's contrastive vectors of each book's passages, with the book
each passage came from; a query passage's nearest passages vote for their books.

On disk (one folder, written whole or not at all): `vectors.npy` (N x d float32, unit length), `passage_book.npy`
(N int32: row in books.json), `books.json`, `passages.jsonl` (the passage texts, shown as evidence) and
`manifest.json` (written last: format, model, counts, config). Search is exact inner product: FAISS `IndexFlatIP`
when faiss is installed, else one numpy matrix product; both return the same neighbours (tested). Exact search
stays cheap at this project's sizes (BENCHMARKS.md measures where an approximate index would start to pay).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bookmatch.errors import InputError
from bookmatch.storage import atomic_directory, atomic_write_json, read_json

INDEX_FORMAT = 1
BEST_PASSAGES = 3  # passages shown per book found


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def model_fingerprint(model) -> str:
    """SHA-256 of the bi-encoder's weights: an index only answers queries embedded by the model that built it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode("utf-8"))
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class BookIndex:
    vectors: np.ndarray  # (N, d) float32, unit rows
    passage_book: np.ndarray  # (N,) int32: row of `books`
    books: list[dict[str, Any]]  # {"id", "author", "title"}
    passages: list[str]
    manifest: dict[str, Any]
    backend: str = "auto"  # auto | faiss | numpy

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        self.passage_book = np.asarray(self.passage_book, dtype=np.int32)
        if (
            self.vectors.ndim != 2
            or len(self.vectors) != len(self.passage_book)
            or len(self.passages) != len(self.vectors)
        ):
            raise InputError("index parts disagree: vectors, passage_book and passages must have one row per passage")
        if self.backend == "auto":
            self.backend = "faiss" if faiss_available() else "numpy"
        self._faiss = None

    # storage ----------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index folder atomically (a temp folder renamed into place, manifest.json written last)."""
        path = Path(path)
        with atomic_directory(path) as tmp:
            np.save(tmp / "vectors.npy", self.vectors)
            np.save(tmp / "passage_book.npy", self.passage_book)
            (tmp / "books.json").write_text(json.dumps(self.books, ensure_ascii=False), encoding="utf-8")
            with open(tmp / "passages.jsonl", "w", encoding="utf-8") as handle:
                for text in self.passages:
                    handle.write(json.dumps(text, ensure_ascii=False) + "\n")
            atomic_write_json(tmp / "manifest.json", self.manifest)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "auto") -> BookIndex:
        path = Path(path)
        if not (path / "manifest.json").is_file():
            raise InputError(f"{path} is not a search index (no manifest.json): build one with `bookmatch index`")
        try:
            manifest = read_json(path / "manifest.json")
            if manifest.get("format") != INDEX_FORMAT:
                raise InputError(
                    f"{path}: index format {manifest.get('format')!r}, this bookmatch reads {INDEX_FORMAT}; rebuild it"
                )
            vectors = np.load(path / "vectors.npy", allow_pickle=False)
            passage_book = np.load(path / "passage_book.npy", allow_pickle=False)
            books = json.loads((path / "books.json").read_text(encoding="utf-8"))
            with open(path / "passages.jsonl", encoding="utf-8") as handle:
                passages = [json.loads(line) for line in handle]
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read the index {path}: {err}; rebuild it with `bookmatch index`") from err
        return cls(vectors, passage_book, books, passages, manifest, backend=backend)

    def check_model(self, model) -> None:
        expected = self.manifest.get("model_sha256")
        if expected and model_fingerprint(model) != expected:
            raise InputError(
                f"the index was built with another model ({self.manifest.get('model')}): query it with that "
                "model, or rebuild the index with this one"
            )

    # search -----------------------------------------------------------------------------------------------
    def nearest_passages(self, queries: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of each query's `m` most similar passages (inner product of unit vectors), best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        m = min(m, len(self.vectors))
        if self.backend == "faiss":
            if self._faiss is None:
                import faiss

                self._faiss = faiss.IndexFlatIP(self.vectors.shape[1])
                self._faiss.add(self.vectors)
            scores, rows = self._faiss.search(queries, m)
            return scores, rows.astype(np.int64)
        return exact_top_m(self.vectors, queries, m)

    def search_vectors(self, queries: np.ndarray, k: int = 10) -> list[list[dict[str, Any]]]:
        """Per query, the k books whose passages come nearest: score = the best passage's cosine, with up to
        BEST_PASSAGES of that book's best passages."""
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        k = min(k, len(self.books))
        out = []
        for query in np.atleast_2d(queries):
            m = max(8 * k, 64)
            while True:  # widen until k books are among the nearest passages (or every passage is)
                scores, rows = self.nearest_passages(query[None], m)
                found = _books_of(scores[0], rows[0], self.passage_book)
                if len(found) >= k or m >= len(self.vectors):
                    break
                m *= 4
            out.append([self._describe(book, hits) for book, hits in list(found.items())[:k]])
        return out

    def _describe(self, book: int, hits: list[tuple[float, int]]) -> dict[str, Any]:
        info = self.books[book]
        return {
            "book": info["id"],
            "author": info.get("author"),
            "title": info.get("title"),
            "score": round(hits[0][0], 6),
            "passages": [{"score": round(score, 6), "text": self.passages[row]} for score, row in hits[:BEST_PASSAGES]],
        }


def exact_top_m(vectors: np.ndarray, queries: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The plain reference: every inner product, then the m largest per query (ties by row)."""
    scores = queries @ vectors.T
    part = (
        np.argpartition(-scores, m - 1, axis=1)[:, :m]
        if m < scores.shape[1]
        else np.tile(np.arange(scores.shape[1]), (len(queries), 1))
    )
    top = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -top), axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1).astype(np.int64)


def _books_of(scores: np.ndarray, rows: np.ndarray, passage_book: np.ndarray) -> dict[int, list[tuple[float, int]]]:
    """{book: [(score, row), ...]} in order of each book's best passage (rows < 0, faiss' padding, dropped)."""
    found: dict[int, list[tuple[float, int]]] = {}
    for score, row in zip(scores.tolist(), rows.tolist()):
        if row >= 0:
            found.setdefault(int(passage_book[row]), []).append((float(score), int(row)))
    return found


VECTORS = ("projected", "pooled")


def embed_queries(scorer, texts: Sequence[str], batch_size: int = 64, vector: str = "projected") -> np.ndarray:
    """Unit vectors through the scorer (its cache and autocast): "projected", the contrastive space a trained
    bi-encoder learns for same-book retrieval, or "pooled", the encoder's mean-pooled vector (what a pretrained
    sentence encoder offers before any training)."""
    if vector not in VECTORS:
        raise InputError(f"vector must be one of {', '.join(VECTORS)}, got {vector!r}")
    emb = scorer.embed(list(texts), batch_size=batch_size)
    if vector == "projected":
        return emb.projected.float().numpy()
    pooled = emb.pooled.double().numpy()
    return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def search_texts(
    index: BookIndex, scorer, texts: Sequence[str], k: int = 10, batch_size: int = 64
) -> list[list[dict[str, Any]]]:
    """The k likeliest source books of each text (see `BookIndex.search_vectors`), embedded as the index was."""
    vector = index.manifest.get("config", {}).get("vector", "projected")
    return index.search_vectors(embed_queries(scorer, texts, batch_size, vector), k)
