"""Cohort score normalisation: a pair's margin, less how alike its two texts are to passages in general.

Some passages resemble every passage to the model (plain narration, common words) and draw high margins with
anything; others resemble none. Speaker verification meets the same problem with score normalisation against a
cohort (Z-norm, adaptive S-norm). Here a text's *affinity* is its mean margin against a fixed cohort of training
passages, one or two per book over many books, and a pair's normalised margin is its margin less the mean of its
two texts' affinities. On run15's model (BENCHMARKS.md) it raised ROC AUC by 0.010 on our validation split, 0.014
on test and 0.021 on the validation authors' pairs, and by 0.023-0.027 on same-author negatives; cohorts of 64 to
546 texts did about equally well.

`bookmatch calibrate` builds the cohort from the training split and writes it beside calibration.json, which
records its SHA-256: the temperature, offset and threshold are fitted on normalised margins, so the two files
are only ever used together.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bookmatch.errors import InputError, first_line
from bookmatch.storage import atomic_write_bytes

log = logging.getLogger(__name__)

COHORT_FILE = "score_cohort.safetensors"


@dataclass(frozen=True)
class ScoreCohort:
    """The cohort's embeddings, as `BiEncoder.encode_texts` returns them (pooled, projected, style)."""

    pooled: torch.Tensor  # noqa: F821  (torch is imported lazily: the CLI starts without it)
    projected: torch.Tensor  # noqa: F821
    style: torch.Tensor  # noqa: F821
    tokens: torch.Tensor | None = None  # noqa: F821  (scoring: maxsim: (C, L, d) token vectors, zero-padded)
    source: str = "the score cohort"  # for messages: the file it was read from

    def __len__(self) -> int:
        return int(self.pooled.shape[0])

    def embeddings(self):
        from bookmatch.models.bi_encoder import TextEmbeddings

        return TextEmbeddings(self.pooled, self.projected, self.style, self.tokens)

    def check_fits(self, model) -> None:
        """InputError unless this cohort was encoded by a model of `model`'s shape (a file from another run)."""
        widths = (int(self.pooled.shape[1]), int(self.projected.shape[1]), int(self.style.shape[1]))
        expected = (model.config.hidden_size, model.config.projection_dim, model.style_width)
        if widths != expected:
            raise InputError(
                f"{self.source} was built for another model (widths {widths}, this model {expected}); re-run `bookmatch calibrate`"
            )
        if getattr(model, "late_interaction", False) != (self.tokens is not None):
            raise InputError(
                f"{self.source} was built for another model (token vectors {'present' if self.tokens is not None else 'absent'}, "
                f"this model's scoring is {model.config.scoring}); re-run `bookmatch calibrate`"
            )

    def affinities(self, model, texts) -> np.ndarray:
        """Each text's mean margin against the cohort, the text on the classifier's first side.

        One side suffices: the cohort's mean over both orders moved AUC by at most 0.003 (up or down) for twice
        the work.
        """
        return model.margins_against(texts, self.embeddings()).double().mean(dim=1).numpy()

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        tensors = {"pooled": self.pooled, "projected": self.projected, "style": self.style}
        if self.tokens is not None:
            tensors["tokens"] = self.tokens
        return save({name: tensor.contiguous() for name, tensor in tensors.items()})


def normalized_margin(margin: np.ndarray, affinity1: np.ndarray, affinity2: np.ndarray) -> np.ndarray:
    return np.asarray(margin, dtype=np.float64) - 0.5 * (np.asarray(affinity1) + np.asarray(affinity2))


def select_cohort_texts(data_dir: str | os.PathLike, size: int, split: str = "train", seed: int = 0) -> list[str]:
    """Up to `size` distinct texts of a prepared dataset's split, spread over its books: one text of each book
    in a shuffled order, then a second of each, and so on. Empty when the dataset has no such split."""
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(os.fspath(data_dir))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise InputError(
            f"cannot read the dataset {data_dir} for the score cohort ({first_line(err)}); pass the folder written by `bookmatch prepare`"
        ) from err
    if size <= 0 or split not in dataset:
        return []
    part = dataset[split]
    rng = random.Random(seed)
    # (row, side) of each book's texts from the short book columns only: the text columns of a large split
    # are read for the chosen rows alone
    places: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for side, column in (("text1", "book1"), ("text2", "book2")):
        books = part[column] if column in part.column_names else [f"row{i}" for i in range(len(part))]
        for row, book in enumerate(books):
            places[str(book)].append((row, side))
    order = sorted(places)
    rng.shuffle(order)
    for book in order:
        rng.shuffle(places[book])
    chosen: list[tuple[int, str]] = []
    for depth in range(max((len(v) for v in places.values()), default=0)):
        for book in order:
            if len(places[book]) > depth:
                chosen.append(places[book][depth])
        if len(chosen) >= 2 * size:  # spare places: the same passage can sit in several pairs
            break
    rows = sorted({row for row, _ in chosen})
    selected = part.select(rows)
    text_of = {(row, side): selected[side][i] for side in ("text1", "text2") for i, row in enumerate(rows)}
    texts: list[str] = []
    seen: set[str] = set()
    for place in chosen:
        text = text_of[place]
        if text not in seen:
            seen.add(text)
            texts.append(text)
            if len(texts) == size:
                break
    return texts


def write_cohort(cohort: ScoreCohort, path: str | os.PathLike) -> str:
    """Write the cohort atomically; return its SHA-256 (calibration.json keeps it to pair the two files)."""
    data = cohort.to_bytes()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def read_cohort(path: str | os.PathLike, sha256: str) -> ScoreCohort:
    path = Path(path)
    fix = "re-run `bookmatch calibrate` (it writes both files)"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(
            f"calibration.json names the score cohort {path}, which cannot be read ({err.strerror or err}); {fix}"
        ) from err
    if hashlib.sha256(data).hexdigest() != sha256:
        raise InputError(
            f"score cohort {path} is not the one calibration.json was fitted with (SHA-256 differs); {fix}"
        )
    from safetensors.torch import load

    tensors = load(data)
    tokens = tensors["tokens"].float() if "tokens" in tensors else None
    return ScoreCohort(
        tensors["pooled"].float(),
        tensors["projected"].float(),
        tensors["style"].float(),
        tokens,
        source=f"score cohort {path}",
    )
