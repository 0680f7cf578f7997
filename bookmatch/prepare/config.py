"""`PrepareConfig`: every knob of the pair-dataset stage, with the defaults we tuned on the dev corpus."""

from __future__ import annotations

from dataclasses import dataclass

from bookmatch.config import ConfigError


@dataclass
class PrepareConfig:
    books: str = ""
    out: str = ""
    # Chunking: 14 sentences with 4 shared between neighbours, the passage length the matcher is judged on.
    chunk_size: int = 14
    overlap: int = 4
    max_chunks_per_book: int = 800
    splitter: str = "regex"
    # Hard negatives: nearest books by mean MiniLM embedding of a sample of their chunks.
    hard_negatives: bool = True
    miner_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    num_chunks_for_embed: int = 80
    num_hard_negative_books: int = 50
    embed_batch_size: int = 64
    # The miner's precision: "auto" embeds under bf16 autocast where the device computes bf16 natively (1.6x the
    # chunks/s of fp32 on the 2-core EPYC; centroids agree to cosine 0.99997), fp32 elsewhere; or no | bf16 | fp16.
    miner_precision: str = "auto"
    # "auto" (faiss where a faiss package is installed, else torch), "faiss" or "torch" (blocked matmul); all exact
    # and in agreement. faiss is an extra (`bookmatch[faiss]` or `[gpu]`), never a base dependency.
    knn_backend: str = "auto"
    knn_block_size: int = 4096
    # Pairs per book; None means "as many positives as negatives" so classes stay balanced.
    n_positive_per_book: int | None = None
    n_negative_per_book: int = 40
    # Share of each negative kind; a kind a book cannot have (no other work by its author, mining off) falls
    # back to random.
    neg_mix_hard: float = 0.3
    neg_mix_same_author: float = 0.3
    neg_mix_same_topic: float = 0.2
    neg_mix_random: float = 0.2
    holdout_authors: str = ""
    train_ratio: float = 0.8
    val_ratio: float = 0.1
    # Duplicate works (prepare/dedup.py): shingles are runs of `gram_words` words (letters only), one run in
    # `gram_keep_one_in` kept, by hash, so every book keeps the same runs. Copies: the smaller book shares
    # >= `containment_threshold` of its shingles (and >= `min_shared_shingles`) with the larger. Shared text:
    # >= `large_overlap_shingles` shingles in common (about 125 x 16 = 2,000 words: a story, a long poem),
    # not counting shingles held by `boilerplate_min_works` or more copy-groups (publishers' advertisements).
    gram_words: int = 8
    gram_keep_one_in: int = 16
    containment_threshold: float = 0.5
    min_shared_shingles: int = 20
    large_overlap_shingles: int = 125
    # A shingle in more books than this is too common to say anything about duplication (and costs
    # quadratic candidate pairs), so the inverted index skips it.
    max_books_per_shingle: int = 50
    # Sentences of at least `shingle_min_words` words are hashed for boilerplate detection.
    shingle_min_words: int = 6
    # Boilerplate: a sentence found in at least this many distinct works is boilerplate; a chunk made of
    # more than `boilerplate_max_fraction` such sentences is dropped.
    boilerplate_min_works: int = 3
    boilerplate_max_fraction: float = 0.3
    workers: int = 2
    seed: int = 13

    def __post_init__(self) -> None:
        if self.chunk_size < 2 or not 0 <= self.overlap < self.chunk_size:
            raise ConfigError(f"chunk_size must be >= 2 and 0 <= overlap < chunk_size (got {self.chunk_size}, {self.overlap})")
        if self.splitter not in ("regex", "spacy"):
            raise ConfigError(f"splitter must be 'regex' or 'spacy', not {self.splitter!r}")
        if not (0 < self.train_ratio and 0 <= self.val_ratio and self.train_ratio + self.val_ratio <= 1):
            raise ConfigError(f"need 0 < train_ratio, 0 <= val_ratio, train_ratio + val_ratio <= 1 (got {self.train_ratio}, {self.val_ratio})")
        if self.miner_precision not in ("no", "bf16", "fp16", "auto"):
            raise ConfigError(f"miner_precision must be one of no, bf16, fp16, auto, not {self.miner_precision!r}")
        if self.knn_backend not in ("auto", "faiss", "torch"):
            raise ConfigError(f"knn_backend must be 'auto', 'faiss' or 'torch', not {self.knn_backend!r}")
        if self.gram_words < 1 or self.gram_keep_one_in < 1:
            raise ConfigError(f"gram_words and gram_keep_one_in must be >= 1 (got {self.gram_words}, {self.gram_keep_one_in})")
        if self.max_chunks_per_book < 2 or self.n_negative_per_book < 0 or self.workers < 1:
            raise ConfigError("max_chunks_per_book must be >= 2, n_negative_per_book >= 0, workers >= 1")

    @property
    def positives_per_book(self) -> int:
        return self.n_negative_per_book if self.n_positive_per_book is None else self.n_positive_per_book

    @property
    def holdout_author_list(self) -> list[str]:
        return [part.strip().lower() for part in self.holdout_authors.split(";") if part.strip()]
