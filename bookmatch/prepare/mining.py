"""Step 5: hard-negative books, the nearest books by the mean embedding of a sample of their chunks.

Two exact k-NN paths over L2-normalised centroids (inner product = cosine): FAISS `IndexFlatIP` (on GPU when
FAISS sees one) and a blocked torch matmul with top-k per block (bf16 on CUDA, fp32 on CPU). They must
agree; a test checks it. FAISS is an optional extra (faiss-cpu or faiss-gpu-cu12 provide the same module, so
one install holds one): "auto" uses it where it is installed and the torch path elsewhere. Copies of one work
are removed from each other's neighbour lists.
"""

from __future__ import annotations

import logging

from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)


def faiss_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def resolve_knn_backend(method: str) -> str:
    """"faiss" or "torch" for a configured backend; "auto" is faiss where a faiss package is installed."""
    if method == "auto":
        return "faiss" if faiss_available() else "torch"
    if method == "faiss" and not faiss_available():
        from bookmatch.errors import InputError

        raise InputError("knn_backend 'faiss' needs faiss: pip install 'bookmatch[faiss]' (CPU) or 'bookmatch[gpu]', "
                         "or use --knn-backend torch (exact, same neighbours)")
    return method


def knn_faiss(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, indices), each (n, k'), k' = min(k, n-1): the nearest other rows by inner product."""
    import faiss

    data = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(data)
    k = int(min(k, n - 1))
    if k <= 0:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    index = faiss.IndexFlatIP(data.shape[1])
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(data)
    scores, indices = index.search(data, k + 1)
    return _drop_self(scores, indices, k)


def knn_torch(vectors: np.ndarray, k: int, block_size: int = 4096, device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Same contract as `knn_faiss`, by a blocked matmul so memory stays block_size x n."""
    import torch

    n = len(vectors)
    k = int(min(k, n - 1))
    if k <= 0:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    data = torch.as_tensor(np.asarray(vectors, dtype=np.float32), device=device).to(dtype)
    all_scores, all_indices = [], []
    with torch.no_grad():
        for start in range(0, n, block_size):
            block = data[start : start + block_size]
            scores = (block @ data.T).float()
            scores, indices = scores.topk(k + 1, dim=1)
            all_scores.append(scores.cpu().numpy())
            all_indices.append(indices.cpu().numpy())
    return _drop_self(np.concatenate(all_scores), np.concatenate(all_indices).astype(np.int64), k)


def _drop_self(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index (usually first, but ties may move it) and keep k neighbours."""
    out_scores = np.empty((len(indices), k), dtype=np.float32)
    out_indices = np.empty((len(indices), k), dtype=np.int64)
    for row in range(len(indices)):
        mask = indices[row] != row
        out_scores[row] = scores[row][mask][:k]
        out_indices[row] = indices[row][mask][:k]
    return out_scores, out_indices


def embed_centroids(
    chunk_lists: Sequence[Sequence[str]],
    model_name: str,
    batch_size: int = 64,
    device: str | None = None,
    block_texts: int = 16384,
    precision: str = "no",
) -> np.ndarray:
    """One L2-normalised mean embedding per book (rows of zeros for books without chunks).

    Books are read and embedded in blocks of about `block_texts` texts, so neither the texts nor their
    embeddings are ever all in memory (`chunk_lists` may load each book's texts on access). `precision`:
    no | bf16 | fp16 autocast, or auto (bf16 where the device computes it natively).
    """
    from bookmatch.precision import autocast, resolve_mixed_precision

    from sentence_transformers import SentenceTransformer

    from bookmatch.errors import ModelLoadError
    from bookmatch.models.resolve import resolve_model_path

    try:
        model = SentenceTransformer(resolve_model_path(model_name), device=device)
    except ModelLoadError:
        raise
    except Exception as err:
        raise ModelLoadError(f"cannot load miner model {model_name!r}: {err}; pass --miner-model with a sentence-transformers folder") from err
    # sentence-transformers 6 renamed get_sentence_embedding_dimension
    dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    device_type = model.device.type
    precision = resolve_mixed_precision(precision, use_cuda=device_type == "cuda")
    centroids = np.zeros((len(chunk_lists), dimension()), dtype=np.float32)
    book = 0
    while book < len(chunk_lists):
        block: list[Sequence[str]] = []
        while book + len(block) < len(chunk_lists) and (not block or sum(map(len, block)) < block_texts):
            block.append(chunk_lists[book + len(block)])
        flat = [text for chunks in block for text in chunks]
        if flat:
            with autocast(precision, device_type):
                embeddings = model.encode(flat, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
            embeddings = embeddings.astype(np.float32, copy=False)
            offset = 0
            for index, chunks in enumerate(block):
                if chunks:
                    centroids[book + index] = embeddings[offset : offset + len(chunks)].mean(axis=0)
                    offset += len(chunks)
        book += len(block)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    return centroids / np.maximum(norms, 1e-12)


def embed_positions(num_chunks: int, limit: int) -> list[int]:
    """Up to `limit` chunk positions spread evenly through the book (deterministic)."""
    if num_chunks <= limit:
        return list(range(num_chunks))
    return np.linspace(0, num_chunks - 1, limit).round().astype(int).tolist()


def hard_negative_books(centroids: np.ndarray, work_of: list[int], k: int, method: str = "auto", block_size: int = 4096) -> list[list[int]]:
    """For each book, up to k nearest books of OTHER works, nearest first (method: auto | faiss | torch)."""
    n = len(centroids)
    if n < 2 or k <= 0:
        return [[] for _ in range(n)]
    largest_work = int(np.bincount(np.asarray(work_of)).max())
    # Ask for extra neighbours so that dropping copies of the book's own work still leaves k.
    search_k = min(k + largest_work, n - 1)
    method = resolve_knn_backend(method)
    log.info("hard negatives: exact k-NN by %s over %d books", method, n)
    if method == "faiss":
        _, indices = knn_faiss(centroids, search_k)
    else:
        _, indices = knn_torch(centroids, search_k, block_size=block_size)
    neighbours = []
    for book in range(n):
        row = [int(j) for j in indices[book] if work_of[int(j)] != work_of[book]]
        neighbours.append(row[:k])
    return neighbours
