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
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def faiss_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def resolve_knn_backend(method: str) -> str:
    """ "faiss" or "torch" for a configured backend; "auto" is faiss where a faiss package is installed."""
    if method == "auto":
        return "faiss" if faiss_available() else "torch"
    if method == "faiss" and not faiss_available():
        from bookmatch.errors import InputError

        raise InputError(
            "knn_backend 'faiss' needs faiss: pip install 'bookmatch[faiss]' (CPU) or 'bookmatch[gpu]', "
            "or use --knn-backend torch (exact, same neighbours)"
        )
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


def knn_torch(
    vectors: np.ndarray, k: int, block_size: int = 4096, device: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
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
    block_texts: int = 2048,
    precision: str = "no",
    total_texts: int | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """One L2-normalised mean embedding per book (rows of zeros for books without chunks).

    Books are read and embedded in blocks of about `block_texts` texts, so neither the texts nor their
    embeddings are ever all in memory (`chunk_lists` may load each book's texts on access). `precision`:
    no | bf16 | fp16, or auto (bf16 where the device computes it natively; on CUDA the weights are cast, on a
    CPU it is autocast). Under torch.distributed (a launcher's process group) each rank embeds a contiguous
    share of the books and every rank returns all centroids.

    The encoder runs through transformers directly (`SentenceEncoder`): texts of a whole block, across books,
    in length-sorted batches of about `batch_size` x max length tokens. Books are read on a background thread and
    blocks tokenized on `threads` more (default `batching.tokenize_threads()`), several blocks ahead of the model.
    A sentence-transformers folder with modules other than Transformer, Pooling (mean, cls or max) and
    Normalize runs through sentence-transformers' own `encode` instead (`embed_centroids_plain`).
    `total_texts` (all ranks' texts, when the caller knows it) gives rank 0's progress lines a percentage.
    """
    from bookmatch.models.batching import distributed_rank, gather_rows, rank_slice
    from bookmatch.progress import progress_bar

    encoder = SentenceEncoder.load(model_name, device=device, precision=precision)
    if encoder is None:
        return embed_centroids_plain(chunk_lists, model_name, batch_size, device, block_texts, precision)
    rank, world_size = distributed_rank()
    books = rank_slice(len(chunk_lists), rank, world_size)
    sums = np.zeros((len(books), encoder.dimension), dtype=np.float32)
    # rank 0 reports its own share, scaled to the whole: ranks get equal shares of books
    counter = progress_bar(
        total_texts and -(-total_texts // world_size), "mining: embedding", "chunk", disable=rank != 0
    )
    for owners, tokens in _tokenized_blocks(chunk_lists, books, block_texts, encoder, threads):
        if owners.size:
            embeddings = encoder.embed_tokens(tokens, batch_size, counter)
            # a block's texts are in book order: sum each book's run of rows
            starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
            sums[owners[starts] - books.start] = np.add.reduceat(embeddings, starts, axis=0)
    counter.close()
    centroids = gather_rows(sums, world_size)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    return centroids / np.maximum(norms, 1e-12)


def _tokenized_blocks(chunk_lists, books: range, block_texts: int, encoder: SentenceEncoder, threads: int | None):
    """(owner book of each text, token ids) per block of books, in book order: read on one thread, tokenized on
    `threads` (each with its own tokenizer), up to `threads` blocks ahead of a GPU; on a CPU, whose forward pass
    takes every core, tokenizing and the forward take turns."""
    from bookmatch.models.batching import grouped_map, ordered_map, prefetch, thread_local_copy, tokenize_threads

    threads = threads or tokenize_threads()
    tokenizer = thread_local_copy(encoder.tokenizer)

    def tokenize(block: tuple[np.ndarray, list[str]]) -> tuple[np.ndarray, list[list[int]]]:
        owners, texts = block
        return owners, encoder.tokenize(texts, tokenizer=tokenizer())

    def blocks():
        book = books.start
        while book < books.stop:
            texts: list[str] = []
            owners: list[int] = []
            first = book
            while book < books.stop and (book == first or len(texts) < block_texts):
                chunks = list(chunk_lists[book])
                texts += chunks
                owners += [book] * len(chunks)
                book += 1
            yield np.asarray(owners, dtype=np.int64), texts

    if encoder.device.type == "cuda":
        return ordered_map(tokenize, prefetch(blocks(), depth=1), threads, depth=threads)
    return grouped_map(tokenize, blocks(), threads)


class SentenceEncoder:
    """A sentence-transformers-style encoder (transformer, pooling, L2 normalisation) run without that library:
    the same token ids and the same pooled vectors, batched for throughput."""

    def __init__(self, model, tokenizer, pooling: str, max_length: int, precision: str) -> None:
        self.model, self.tokenizer, self.pooling, self.max_length = model, tokenizer, pooling, max_length
        self.device = next(model.parameters()).device
        self.precision = precision
        self.dimension = int(model.config.hidden_size)

    @classmethod
    def load(cls, model_name: str, device: str | None = None, precision: str = "no") -> SentenceEncoder | None:
        """The encoder, or None when the folder's sentence-transformers modules are beyond what this class does."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        from bookmatch.errors import ModelLoadError, first_line
        from bookmatch.models.resolve import resolve_model_path
        from bookmatch.precision import resolve_mixed_precision

        path = Path(resolve_model_path(model_name))
        pooling = _sentence_transformers_pooling(path)
        if pooling is None:
            return None
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path, dtype=torch.float32)
        except Exception as err:  # transformers raises many types for a damaged folder; all mean the same here
            raise ModelLoadError(
                f"cannot load miner model {model_name!r}: {first_line(err)}; pass --miner-model with a sentence-transformers folder"
            ) from err
        precision = resolve_mixed_precision(precision, use_cuda=str(device).startswith("cuda"))
        if str(device).startswith("cuda") and precision in ("bf16", "fp16"):
            # whole-model half precision on a GPU: autocast would re-cast every weight in every batch
            model = model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
            precision = "no"
        model.to(device).eval()
        max_length = _sentence_transformers_max_length(path, tokenizer, model.config)
        return cls(model, tokenizer, pooling, max_length, precision)

    def tokenize(self, texts: list[str], tokenizer=None) -> list[list[int]]:
        """Token ids as sentence-transformers makes them (special tokens, truncated to the max length).
        `tokenizer`: a copy of this encoder's, for a thread of its own."""
        if not texts:
            return []
        tokenizer = tokenizer or self.tokenizer
        return tokenizer(texts, truncation=True, max_length=self.max_length, verbose=False)["input_ids"]

    def embed_tokens(self, tokens: list[list[int]], batch_size: int = 64, counter=None) -> np.ndarray:
        """(N, dim) float32 L2-normalised embeddings of tokenized texts, in their order (`counter`: progress)."""
        import torch

        from bookmatch.models.batching import (
            length_sorted_batches,
            model_attention_mask,
            pad_ids,
            run_batches,
        )
        from bookmatch.models.pooling import pool
        from bookmatch.precision import autocast

        pad_id = self.tokenizer.pad_token_id or 0
        cuda = self.device.type == "cuda"
        batches = length_sorted_batches([len(t) for t in tokens], batch_size * self.max_length, batch_size * 4)

        def make_inputs(index: np.ndarray) -> dict:
            ids, mask = pad_ids([tokens[i] for i in index], pad_id, multiple_of=8 if cuda else 1)
            ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
            return {
                "input_ids": ids.pin_memory() if cuda else ids,
                "attention_mask": mask.pin_memory() if cuda else mask,
            }

        def forward(inputs: dict) -> np.ndarray:
            inputs = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
            with torch.inference_mode(), autocast(self.precision, self.device.type):
                mask = model_attention_mask(self.model, inputs["attention_mask"])
                hidden = self.model(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
                pooled = pool(hidden, inputs["attention_mask"], self.pooling).float()
                return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()

        out = np.zeros((len(tokens), self.dimension), dtype=np.float32)
        return run_batches(batches, make_inputs, forward, out, counter=counter)


_ST_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
}
_ST_OTHER_POOLING = ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def _sentence_transformers_pooling(path: Path) -> str | None:
    """mean | cls | max for a folder of Transformer (at the root) + one Pooling mode (+ Normalize); a plain
    Hugging Face encoder pools by mean, as sentence-transformers does for it; None for anything else."""
    import json

    modules_file = path / "modules.json"
    if not modules_file.exists():
        return "mean"
    pooling = None
    for module in json.loads(modules_file.read_text(encoding="utf-8")):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Transformer" and module.get("path", "") in ("", "."):
            continue
        if kind == "Normalize":
            continue
        if kind != "Pooling" or pooling is not None:
            return None
        config = json.loads((path / module["path"] / "config.json").read_text(encoding="utf-8"))
        modes = [mode for key, mode in _ST_POOLING_KEYS.items() if config.get(key)]
        if len(modes) != 1 or any(config.get(key) for key in _ST_OTHER_POOLING):
            return None
        pooling = modes[0]
    return pooling or "mean"


def _sentence_transformers_max_length(path: Path, tokenizer, model_config) -> int:
    """sentence_bert_config.json's max_seq_length, else the tokenizer's and the position table's limit."""
    import json

    config_file = path / "sentence_bert_config.json"
    if config_file.exists():
        value = json.loads(config_file.read_text(encoding="utf-8")).get("max_seq_length")
        if value:
            return int(value)
    limits = [int(tokenizer.model_max_length), int(getattr(model_config, "max_position_embeddings", 0) or 0)]
    return min(limit for limit in limits if 0 < limit < 10**6)


def embed_centroids_plain(
    chunk_lists: Sequence[Sequence[str]],
    model_name: str,
    batch_size: int = 64,
    device: str | None = None,
    block_texts: int = 16384,
    precision: str = "no",
) -> np.ndarray:
    """`embed_centroids` through sentence-transformers' `encode`: the reference the fast path is tested
    against, and the path for sentence-transformers folders with modules `SentenceEncoder` does not run."""
    from sentence_transformers import SentenceTransformer

    from bookmatch.errors import ModelLoadError
    from bookmatch.models.resolve import resolve_model_path
    from bookmatch.precision import autocast, resolve_mixed_precision

    try:
        model = SentenceTransformer(resolve_model_path(model_name), device=device)
    except ModelLoadError:
        raise
    except Exception as err:
        raise ModelLoadError(
            f"cannot load miner model {model_name!r}: {err}; pass --miner-model with a sentence-transformers folder"
        ) from err
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
                embeddings = model.encode(
                    flat,
                    batch_size=batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
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


def hard_negative_books(
    centroids: np.ndarray, work_of: list[int], k: int, method: str = "auto", block_size: int = 4096
) -> list[list[int]]:
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
