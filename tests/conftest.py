"""Shared fixtures: a tiny random encoder built in code, and the shared development corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"

SAMPLE_TEXTS = [
    "It was a dark and stormy night; the rain fell in torrents, except at occasional intervals.",
    "Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about.",
    "Happy families are all alike; every unhappy family is unhappy in its own way.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune must be in want of a wife.",
    'The sun shone, having no alternative, on the nothing new. Mr. Smith said, "Well, Dr. Jones?"',
] * 20


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not (CORPUS / "books").is_dir():
        pytest.skip(f"development corpus not found at {CORPUS} (it sits beside the checkout as shared/corpus)")
    return CORPUS


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random BERT with a WordPiece tokenizer trained on the spot."""
    from bookmatch.models.tiny import build_tiny_encoder

    texts = list(SAMPLE_TEXTS)
    if (CORPUS / "validation_pairs.jsonl").exists():
        import json

        with open(CORPUS / "validation_pairs.jsonl", encoding="utf-8") as handle:
            for i, line in enumerate(handle):
                if i >= 200:
                    break
                row = json.loads(line)
                texts += [row["text1"], row["text2"]]
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"), texts)


@pytest.fixture(scope="session")
def models(tiny_encoder_dir, tmp_path_factory) -> dict[str, Path]:
    """A tiny random bi-encoder (with a lexical signature) and cross-encoder saved as `<run>/final/` folders."""
    import torch

    from bookmatch.models.bi_encoder import BiEncoder
    from bookmatch.models.cross_encoder import CrossEncoder

    root = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(0)
    bi = BiEncoder.from_backbone(
        str(tiny_encoder_dir),
        projection_dim=16,
        classifier_hidden_dim=32,
        max_seq_length=64,
        lexical_buckets=256,
        lexical_top_k=8,
        name_top_k=0,
        pooled_cosine=False,
    )
    bi.fit_lexical(SAMPLE_TEXTS)
    bi.save_pretrained(root / "bi" / "final")
    torch.manual_seed(1)
    CrossEncoder.from_backbone(str(tiny_encoder_dir), max_seq_length=128).save_pretrained(root / "cross" / "final")
    return {"bi": root / "bi" / "final", "cross": root / "cross" / "final"}
