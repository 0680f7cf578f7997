"""Recall@1 / @10 of source-book search on the development corpus, beside a TF-IDF search baseline.

The index holds the training split's books (one book per work, so a duplicate copy is never a "miss"), each as
`--passages-per-book` passages spread through it. Queries are other passages of those books that training never
saw: chunks cut without overlap, none of the index's passages, and (with --data) none sharing a sentence with any
training text of the prepared dataset. A query's answer is right at k when its book is among the k books returned.
The TF-IDF baseline indexes the same passages (word unigrams+bigrams, sublinear tf, cosine) and ranks books the
same way (best passage).

    python scripts/eval_search.py --books ../shared/corpus/books --data RUN/data/processed --model RUN/models/.../final
    python scripts/eval_search.py --books ../shared/corpus/books --backbone sentence-transformers/all-MiniLM-L6-v2
    python scripts/eval_search.py --bench-ann   # exact vs HNSW search time on random vectors

Also `--bench-ann`: query time of FAISS flat (exact) against HNSW at growing index sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np


def slug_of(path: Path) -> str:
    from bookmatch.text.standardize import slugify

    return f"{slugify(path.parent.name) or 'unknown'}/{slugify(path.stem) or 'untitled'}"


def choose_books(books_dir: Path, data: Path | None, max_books: int, seed: int) -> tuple[list[Path], set[str]]:
    """(book files, sentences of the training texts): train-split books, one per work, when `data` is given."""
    files = sorted(p for p in books_dir.rglob("*.txt") if p.is_file())
    training_sentences: set[str] = set()
    if data is not None:
        manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
        work_of = manifest["book_work"]
        first_of_work: dict = {}
        for book_id in manifest["split_books"]["train"]:
            first_of_work.setdefault(work_of.get(book_id, book_id), book_id)
        wanted = set(first_of_work.values())
        files = [p for p in files if slug_of(p) in wanted]
        training_sentences = training_sentence_set(data)
    random.Random(seed).shuffle(files)
    return sorted(files[:max_books]), training_sentences


def training_sentence_set(data: Path) -> set[str]:
    from datasets import load_from_disk

    from bookmatch.text.sentences import split_sentences

    train = load_from_disk(str(data / "train"))
    sentences: set[str] = set()
    for column in ("text1", "text2"):
        for text in set(train[column]):
            sentences.update(s.strip() for s in split_sentences(text))
    return sentences


def passages_and_queries(files: list[Path], per_book: int, queries_per_book: int, training: set[str], seed: int):
    from bookmatch.prepare.mining import embed_positions
    from bookmatch.text.chunking import chunk_book
    from bookmatch.text.sentences import split_sentences
    from bookmatch.text.standardize import SkipBook, load_book

    rng = random.Random(seed)
    books, passages, passage_book, queries, query_book, dropped = [], [], [], [], [], 0
    for path in files:
        try:
            book = load_book(path)
        except SkipBook:
            continue
        chunks = [c.text for c in chunk_book(book.text, overlap=0)]
        if len(chunks) < 4:
            continue
        indexed = set(embed_positions(len(chunks), per_book))
        candidates = [
            c
            for i, c in enumerate(chunks)
            if i not in indexed and not any(s.strip() in training for s in split_sentences(c))
        ]
        dropped += len(chunks) - len(indexed) - len(candidates)
        if not candidates:
            continue
        number = len(books)
        books.append({"id": slug_of(path), "author": book.author, "title": book.title})
        for i in sorted(indexed):
            passages.append(chunks[i])
            passage_book.append(number)
        for text in rng.sample(candidates, min(queries_per_book, len(candidates))):
            queries.append(text)
            query_book.append(number)
    return books, passages, np.asarray(passage_book), queries, np.asarray(query_book), dropped


def ranks_from_scores(scores: np.ndarray, passage_book: np.ndarray, query_book: np.ndarray, n_books: int) -> np.ndarray:
    """Rank (0 = first) of each query's true book when books are ordered by their best passage's score."""
    best = np.full((len(scores), n_books), -np.inf)
    for book in range(n_books):
        best[:, book] = scores[:, passage_book == book].max(axis=1)
    true = best[np.arange(len(scores)), query_book]
    return (best > true[:, None]).sum(axis=1)


def recall(ranks: np.ndarray) -> dict[str, float]:
    return {f"recall@{k}": round(float((ranks < k).mean()), 4) for k in (1, 10)}


def model_ranks(args, books, passages, passage_book, queries, query_book) -> tuple[np.ndarray, dict]:
    """Ranks through the real index: BookIndex over the passages, search_vectors for the queries."""
    from bookmatch.inference import BiEncoderScorer, load_bi_encoder
    from bookmatch.models.bi_encoder import BiEncoder
    from bookmatch.search import BookIndex, embed_queries

    if args.model is not None:
        model, vector, name = load_bi_encoder(args.model), args.vector or "projected", str(args.model)
    else:
        model, vector, name = (
            BiEncoder.from_backbone(args.backbone, max_seq_length=128),
            "pooled",
            f"{args.backbone} (zero-shot)",
        )
    scorer = BiEncoderScorer(model, cache_size=0, precision=args.precision)
    start = time.perf_counter()
    vectors = embed_queries(scorer, passages, 64, vector)
    query_vectors = embed_queries(scorer, queries, 64, vector)
    seconds = time.perf_counter() - start
    index = BookIndex(vectors, passage_book, books, passages, {"format": 1})
    found = index.search_vectors(query_vectors, k=len(books))
    ids = [b["id"] for b in books]
    ranks = np.asarray([[hit["book"] for hit in hits].index(ids[q]) for hits, q in zip(found, query_book)])
    return ranks, {"model": name, "vector": vector, "embed_seconds": round(seconds, 1)}


def tfidf_ranks(passages, passage_book, queries, query_book, n_books) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1, lowercase=True)
    index = vectorizer.fit_transform(passages)
    scores = (vectorizer.transform(queries) @ index.T).toarray()
    return ranks_from_scores(scores, passage_book, query_book, n_books)


def bench_ann(sizes: list[int], dim: int = 256, n_queries: int = 200) -> list[dict]:
    import faiss

    rng = np.random.default_rng(0)
    out = []
    for n in sizes:
        vectors = rng.normal(size=(n, dim)).astype(np.float32)
        faiss.normalize_L2(vectors)
        queries = vectors[rng.choice(n, n_queries, replace=False)] + 0.05 * rng.normal(size=(n_queries, dim)).astype(
            np.float32
        )
        faiss.normalize_L2(queries)
        flat = faiss.IndexFlatIP(dim)
        flat.add(vectors)
        start = time.perf_counter()
        _, exact = flat.search(queries, 10)
        flat_ms = (time.perf_counter() - start) / n_queries * 1000
        start = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = 64
        hnsw.add(vectors)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        _, approx = hnsw.search(queries, 10)
        hnsw_ms = (time.perf_counter() - start) / n_queries * 1000
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx)])
        out.append(
            {
                "vectors": n,
                "flat_ms_per_query": round(flat_ms, 3),
                "hnsw_ms_per_query": round(hnsw_ms, 3),
                "hnsw_build_s": round(build_s, 1),
                "hnsw_recall@10_vs_exact": round(float(overlap), 3),
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--books", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpus" / "books"
    )
    parser.add_argument("--data", type=Path, default=None, help="prepared dataset: its train split's books and texts")
    parser.add_argument("--model", type=Path, default=None, help="a trained bi-encoder's final/ folder")
    parser.add_argument(
        "--backbone", default="sentence-transformers/all-MiniLM-L6-v2", help="zero-shot encoder without --model"
    )
    parser.add_argument("--vector", choices=["projected", "pooled"], default=None)
    parser.add_argument("--max-books", type=int, default=100)
    parser.add_argument("--passages-per-book", type=int, default=8)
    parser.add_argument("--queries-per-book", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bench-ann", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.bench_ann:
        report = {"ann": bench_ann([25_000, 100_000, 200_000]), "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    else:
        files, training = choose_books(args.books, args.data, args.max_books, args.seed)
        books, passages, passage_book, queries, query_book, dropped = passages_and_queries(
            files, args.passages_per_book, args.queries_per_book, training, args.seed
        )
        ranks, info = model_ranks(args, books, passages, passage_book, queries, query_book)
        report = {
            "books": len(books),
            "passages": len(passages),
            "queries": len(queries),
            "chunks_seen_in_training": dropped,
            **info,
            "model_search": recall(ranks),
            "tfidf_search": recall(tfidf_ranks(passages, passage_book, queries, query_book, len(books))),
            "load_average": os.getloadavg(),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
