"""Source-book search: which book of a collection is a passage from?

`build_index(books_dir, model_dir, out)` embeds each book's passages with a trained bi-encoder into a
`BookIndex` folder; `BookIndex.load(out)` and `search_texts(index, scorer, texts, k)` answer queries with the
top books, their scores and their best-matching passages.
"""

from bookmatch.search.build import IndexConfig, build_index
from bookmatch.search.index import (
    BookIndex,
    embed_queries,
    exact_top_m,
    faiss_available,
    model_fingerprint,
    search_texts,
)

__all__ = [
    "BookIndex",
    "IndexConfig",
    "build_index",
    "embed_queries",
    "exact_top_m",
    "faiss_available",
    "model_fingerprint",
    "search_texts",
]
