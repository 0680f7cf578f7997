"""`PrepareConfig`: every knob of the pair-dataset stage, with the defaults we tuned on the dev corpus.

Each field is declared once with `setting(default, help, allowed values)`; `bookmatch prepare` generates its
options from these declarations, and every value is checked when the config is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from bookmatch.config import ConfigError, check_settings, setting
from bookmatch.precision import PRECISIONS


@dataclass
class ChunkingSettings:
    """How each book becomes passages and shingles (the scan, per book: `prepare.scan.ChunkingOptions`)."""

    # Chunking: 14 sentences with 4 shared between neighbours, the passage length the matcher is judged on.
    chunk_size: int = setting(14, "Sentences per passage.", ge=2)
    overlap: int = setting(4, "Sentences shared by consecutive passages (< chunk_size).", ge=0)
    max_chunks_per_book: int = setting(800, "Passages kept per book, sampled with the seed.", ge=2)
    splitter: str = setting("regex", "Sentence splitter.", choices=("regex", "spacy"))
    # Shingles for duplicate detection (prepare/dedup.py), computed while a book is scanned.
    gram_words: int = setting(8, "Words per dedup shingle.", ge=1)
    gram_keep_one_in: int = setting(16, "One dedup shingle in this many kept (by hash).", ge=1)
    shingle_min_words: int = setting(6, "Sentences of at least this many words are hashed for boilerplate.", ge=1)


@dataclass
class MiningSettings:
    """Hard negatives: nearest books by mean MiniLM embedding of a sample of their chunks (prepare/mining.py)."""

    hard_negatives: bool = setting(True, "Mine nearest books as hard negatives.")
    miner_model: str = setting("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers model for mining.")
    num_chunks_for_embed: int = setting(80, "Passages embedded per book for mining.", ge=1)
    num_hard_negative_books: int = setting(50, "Nearest books kept per book.", ge=0)
    embed_batch_size: int = setting(64, "Passages per forward pass of the miner.", ge=1)
    # "auto": 1.6x the chunks/s of fp32 on the 2-core EPYC; centroids agree to cosine 0.99997.
    miner_precision: str = setting(
        "auto", "Miner autocast: auto = bf16 where the device computes it natively, else fp32.", choices=PRECISIONS
    )
    # All exact and in agreement. faiss is an extra (`bookmatch[faiss]` or `[gpu]`), never a base dependency.
    knn_backend: str = setting(
        "auto", "Exact k-NN backend: auto = faiss where installed, else torch.", choices=("auto", "faiss", "torch")
    )
    knn_block_size: int = setting(4096, "Rows per block of the torch k-NN backend.", ge=1)


@dataclass
class DedupSettings:
    """Duplicate works and shared text between books (prepare/dedup.py)."""

    # Duplicate works (prepare/dedup.py): shingles are runs of `gram_words` words (letters only), one run in
    # `gram_keep_one_in` kept, by hash, so every book keeps the same runs. Copies: the smaller book shares
    # >= `containment_threshold` of its shingles (and >= `min_shared_shingles`) with the larger. Shared text:
    # >= `large_overlap_shingles` shingles in common (about 125 x 16 = 2,000 words: a story, a long poem),
    # not counting shingles held by `boilerplate_min_works` or more copy-groups (publishers' advertisements).
    containment_threshold: float = setting(
        0.5, "Share of the smaller book's shingles in the larger that makes a copy.", ge=0, le=1
    )
    min_shared_shingles: int = setting(20, "Shingles two copies share at least.", ge=1)
    large_overlap_shingles: int = setting(125, "Shingles in common that make shared text (a story, a long poem).", ge=1)
    # Above this a shingle says nothing about duplication (and costs quadratic candidate pairs).
    max_books_per_shingle: int = setting(50, "A shingle in more books than this is skipped by the index.", ge=1)
    boilerplate_min_works: int = setting(3, "A sentence in this many distinct works is boilerplate.", ge=1)
    boilerplate_max_fraction: float = setting(
        0.3, "A passage with more than this share of boilerplate is dropped.", ge=0, le=1
    )


@dataclass
class SplitSettings:
    """Works to train / validation / test (prepare/splits.py)."""

    holdout_authors: str = setting("", 'Authors whose works all go to test, e.g. "Alcott;Baum".')
    train_ratio: float = setting(0.8, "Share of works in train.", gt=0, le=1)
    val_ratio: float = setting(0.1, "Share of works in validation.", ge=0, le=1)


@dataclass
class PairSettings:
    """Pairs per book and the mix of negative kinds (prepare/pairs.py)."""

    # None keeps classes balanced.
    n_positive_per_book: int | None = setting(None, "Positive pairs per book (null: as many as negatives).", ge=0)
    n_negative_per_book: int = setting(40, "Negative pairs per book.", ge=0)
    # A kind a book cannot have (no other work by its author, mining off) falls back to random.
    neg_mix_hard: float = setting(0.3, "Share of hard (mined) negatives.", ge=0, le=1)
    neg_mix_same_author: float = setting(0.3, "Share of same-author negatives.", ge=0, le=1)
    neg_mix_same_topic: float = setting(0.2, "Share of same-topic negatives.", ge=0, le=1)
    neg_mix_random: float = setting(0.2, "Share of random negatives.", ge=0, le=1)


@dataclass
class PrepareConfig(PairSettings, SplitSettings, DedupSettings, MiningSettings, ChunkingSettings):
    """Every setting of the pair-dataset stage: its sections (each the settings one module reads), the folders,
    the workers and the seed. YAML, `--set` and the CLI name the fields flat, as before."""

    books: str = setting("", "Folder of <author>/<title>.txt books.", cli=False)
    out: str = setting("", "Output folder for the DatasetDict and manifest.json.", cli=False)
    workers: int = setting(2, "Processes loading and chunking books.", ge=1)
    seed: int = setting(13, "Seed for sampling, pairs and splits.", ge=0)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.overlap >= self.chunk_size:
            raise ConfigError(f"overlap must be < chunk_size ({self.chunk_size}), got {self.overlap}")
        if self.train_ratio + self.val_ratio > 1:
            raise ConfigError(f"train_ratio + val_ratio must be <= 1, got {self.train_ratio} + {self.val_ratio}")

    @property
    def positives_per_book(self) -> int:
        return self.n_negative_per_book if self.n_positive_per_book is None else self.n_positive_per_book

    @property
    def holdout_author_list(self) -> list[str]:
        return [part.strip().lower() for part in self.holdout_authors.split(";") if part.strip()]
