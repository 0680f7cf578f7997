"""The stock sentence-transformers recipe, the baseline a bookmatch bi-encoder must beat, and cosine scoring.

The recipe: a SentenceTransformer (default all-MiniLM-L6-v2) fine-tuned with MultipleNegativesRankingLoss on the
positive pairs of a `bookmatch prepare` train split, with sentence-transformers' own trainer and no-duplicates
batches. A pair is scored by the cosine of its two normalised embeddings, what a user of the recipe thresholds.
Used by `bookmatch baselines` and `scripts/baseline_st.py`.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bookmatch.errors import InputError, ModelLoadError, first_line

log = logging.getLogger(__name__)

DEFAULT_ST_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def load_sentence_transformer(name: str = DEFAULT_ST_MODEL, device: str = "cpu"):
    """A SentenceTransformer from a folder, the HF cache or an installed package (offline)."""
    from sentence_transformers import SentenceTransformer

    from bookmatch.models.resolve import resolve_model_path

    path = resolve_model_path(name)
    try:
        return SentenceTransformer(path, device=device)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the sentence-transformers model {name!r} ({first_line(err)})") from err


def cosine_scores(
    model, text1: Sequence[str], text2: Sequence[str], seq_length: int | None = None, batch_size: int = 32
) -> np.ndarray:
    """Cosine of the normalised embeddings of each pair, each distinct text encoded once, reading its first
    `seq_length` tokens (None: the model's own max_seq_length)."""
    if seq_length is not None:
        model.max_seq_length = seq_length
    texts = sorted(set(text1) | set(text2))
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    vectors = np.asarray(vectors, dtype=np.float64)
    index = {t: i for i, t in enumerate(texts)}
    a = vectors[[index[t] for t in text1]]
    b = vectors[[index[t] for t in text2]]
    return np.einsum("ij,ij->i", a, b)


@dataclass(frozen=True)
class RecipeSettings:
    """The stock recipe's budget; the defaults match the cpu-small preset (300 steps of 16 pairs, 128 tokens)."""

    steps: int = 300
    batch_size: int = 16  # pairs per step (MNRL reads 2x texts)
    lr: float = 5e-5  # the trainer's own default
    warmup_ratio: float = 0.1
    train_seq_length: int = 128
    seed: int = 42


def positive_training_pairs(data_dir: str | os.PathLike, settings: RecipeSettings):
    """The train split's positive pairs as an (anchor, positive) Dataset, shuffled with the seed; and the epochs
    that `steps` x `batch_size` pairs take."""
    from datasets import Dataset, load_from_disk

    try:
        data = load_from_disk(str(data_dir))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise InputError(
            f"{data_dir} is not a saved dataset ({err}); pass the folder written by `bookmatch prepare`"
        ) from err
    if "train" not in data:
        raise InputError(f"dataset {data_dir} has no train split to train the stock recipe on")
    positives = data["train"].filter(lambda row: row["label"] == 1)
    if len(positives) < settings.batch_size:
        raise InputError(f"dataset {data_dir} has {len(positives)} positive training pairs, fewer than one batch")
    order = list(range(len(positives)))
    random.Random(settings.seed).shuffle(order)
    epochs = -(-(settings.steps * settings.batch_size) // len(order))
    pairs = Dataset.from_dict(
        {"anchor": [positives[i]["text1"] for i in order], "positive": [positives[i]["text2"] for i in order]}
    )
    return pairs, epochs


def train_stock_recipe(
    model, data_dir: str | os.PathLike, settings: RecipeSettings, precision: str = "no", out_dir: str | None = None
) -> float:
    """Fine-tune `model` (a SentenceTransformer, in place) with the stock recipe on `data_dir`'s train positives;
    return the training seconds. `precision`: resolved autocast ("bf16" or "no")."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    train, epochs = positive_training_pairs(data_dir, settings)
    log.info(
        "stock recipe: %d positive training pairs; %d steps x %d pairs (%d epoch(s)); precision %s",
        len(train),
        settings.steps,
        settings.batch_size,
        epochs,
        precision,
    )
    model.max_seq_length = settings.train_seq_length
    training_args = SentenceTransformerTrainingArguments(
        output_dir=out_dir or tempfile.mkdtemp(prefix="st_recipe_"),
        max_steps=settings.steps,
        num_train_epochs=epochs,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.lr,
        warmup_steps=int(settings.warmup_ratio * settings.steps),
        bf16=precision == "bf16",
        use_cpu=model.device.type == "cpu",
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no",
        logging_steps=50,
        seed=settings.seed,
        report_to=[],
        dataloader_drop_last=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=train, loss=MultipleNegativesRankingLoss(model)
    )
    start = time.perf_counter()
    trainer.train()
    model.eval()
    return time.perf_counter() - start
