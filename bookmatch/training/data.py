"""Pair datasets for training: load `bookmatch prepare` output, tokenize once, and collate padded batches."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bookmatch.errors import InputError

REQUIRED_COLUMNS = ("text1", "text2", "label", "book1", "book2")


@dataclass
class PairData:
    splits: Any  # datasets.DatasetDict
    book_work: dict[str, str]  # book id -> work id (copies of one work share it)
    data_dir: Path


def load_pair_data(data_dir: str | Path) -> PairData:
    """The DatasetDict written by `bookmatch prepare` plus its book -> work map (identity if absent)."""
    from datasets import DatasetDict, load_from_disk

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(
            f"training data folder {data_dir} does not exist: run `bookmatch prepare` first or pass --data"
        )
    try:
        splits = load_from_disk(str(data_dir))
    except (FileNotFoundError, ValueError) as err:
        raise InputError(
            f"{data_dir} is not a dataset saved by `bookmatch prepare` ({err}); pass its output folder to --data"
        ) from err
    if not isinstance(splits, DatasetDict) or "train" not in splits or "validation" not in splits:
        raise InputError(
            f"{data_dir} must hold a DatasetDict with 'train' and 'validation' splits (from `bookmatch prepare`)"
        )
    for name in ("train", "validation"):
        missing = [c for c in REQUIRED_COLUMNS if c not in splits[name].column_names]
        if missing:
            raise InputError(
                f"{data_dir} split {name!r} lacks column(s) {', '.join(missing)}: re-run `bookmatch prepare`"
            )
        if len(splits[name]) == 0:
            raise InputError(f"{data_dir} split {name!r} is empty: prepare more books")
    book_work: dict[str, str] = {}
    manifest = data_dir / "manifest.json"
    if manifest.exists():
        try:
            book_work = dict(json.loads(manifest.read_text(encoding="utf-8")).get("book_work") or {})
        except (json.JSONDecodeError, AttributeError) as err:
            raise InputError(f"{manifest} is not valid JSON ({err}): re-run `bookmatch prepare`") from err
    return PairData(splits=splits, book_work=book_work, data_dir=data_dir)


def subsample(split, count: int, seed: int):
    """A seeded subsample of `count` rows (all rows when count <= 0 or >= len)."""
    if count <= 0 or count >= len(split):
        return split
    rng = np.random.default_rng(seed)
    return split.select(sorted(rng.choice(len(split), size=count, replace=False).tolist()))


def label_index(values: Sequence[str]) -> dict[str, int]:
    """Stable integer ids for string labels (sorted, so every rank and every resume agrees)."""
    return {value: i for i, value in enumerate(sorted(set(values)))}


def work_ids(split, book_work: dict[str, str]) -> tuple[list[int], list[int]]:
    """Integer work id of each side: SupCon treats two copies of one work as the same class."""
    books1, books2 = list(split["book1"]), list(split["book2"])
    works1 = [book_work.get(b, b) for b in books1]
    works2 = [book_work.get(b, b) for b in books2]
    index = label_index(works1 + works2)
    return [index[w] for w in works1], [index[w] for w in works2]


def topic_ids(split, index: dict[str, int] | None) -> tuple[list[int], list[int]]:
    """Integer topic of each side, -1 where unknown (no column, empty value, or unseen in training)."""
    if index is None or "topic1" not in split.column_names:
        return [-1] * len(split), [-1] * len(split)
    return [index.get(str(t), -1) if t else -1 for t in list(split["topic1"])], [
        index.get(str(t), -1) if t else -1 for t in list(split["topic2"])
    ]


def topic_index(split) -> dict[str, int] | None:
    if "topic1" not in split.column_names:
        return None
    return label_index([str(t) for t in list(split["topic1"]) + list(split["topic2"]) if t])


def texts_fingerprint(split) -> str:
    """sha1 over the pair texts: keys caches (teacher logits) to exactly this data."""
    digest = hashlib.sha1()
    for a, b in zip(split["text1"], split["text2"]):
        digest.update(a.encode("utf-8"))
        digest.update(b"\x00")
        digest.update(b.encode("utf-8"))
        digest.update(b"\x01")
    return digest.hexdigest()


TRAINING_WINDOWS = ("first", "random")


def tokenize_bi_encoder_split(
    split,
    model,
    work: tuple[list[int], list[int]],
    topics: tuple[list[int], list[int]],
    batch_size: int = 1000,
    num_proc: int = 0,
    window: str = "first",
    seed: int = 0,
):
    """Token ids and side features of both sides, computed once and kept in memory (never in the data folder).

    `window`: "first" reads each text's first max_seq_length tokens; "random" a window at an offset drawn from
    (seed, row, side), the same on every rank and after a resume.
    """
    if window not in TRAINING_WINDOWS:
        raise ValueError(f"unknown training window {window!r}; choose one of {', '.join(TRAINING_WINDOWS)}")

    def token_ids(texts: list[str], rows: list[int], side: int) -> list[list[int]]:
        if window == "first":
            return model.tokenize(texts)["input_ids"]
        return model.sampled_window_inputs(texts, [(seed, row, side) for row in rows])

    def encode(rows: dict[str, list]) -> dict[str, list]:
        a = token_ids(rows["text1"], rows["row"], 0)
        b = token_ids(rows["text2"], rows["row"], 1)
        return {
            "input_ids_a": a,
            "attention_mask_a": [[1] * len(ids) for ids in a],
            "input_ids_b": b,
            "attention_mask_b": [[1] * len(ids) for ids in b],
            "style_a": model.side_feature_array(rows["text1"]).tolist(),
            "style_b": model.side_feature_array(rows["text2"]).tolist(),
            "length": [max(len(x), len(y)) for x, y in zip(a, b)],
        }

    split = split.select_columns(["text1", "text2", "label"])
    split = split.add_column("work_a", work[0]).add_column("work_b", work[1])
    split = split.add_column("topic_a", topics[0]).add_column("topic_b", topics[1])
    split = split.add_column("row", list(range(len(split))))
    return split.map(
        encode,
        batched=True,
        batch_size=batch_size,
        keep_in_memory=True,
        remove_columns=["text1", "text2"],
        num_proc=num_proc if num_proc > 1 else None,
        desc="tokenizing",
    )


def tokenize_cross_split(split, cross_encoder, batch_size: int = 1000, num_proc: int = 0):
    def encode(rows: dict[str, list]) -> dict[str, list]:
        tokens = cross_encoder.tokenize_pairs(rows["text1"], rows["text2"])
        tokens["length"] = [len(x) for x in tokens["input_ids"]]
        return tokens

    split = split.select_columns(["text1", "text2", "label"])
    split = split.add_column("row", list(range(len(split))))
    return split.map(
        encode,
        batched=True,
        batch_size=batch_size,
        keep_in_memory=True,
        remove_columns=["text1", "text2"],
        num_proc=num_proc if num_proc > 1 else None,
        desc="tokenizing",
    )


class BiEncoderCollator:
    """Rows of a tokenized bi-encoder split -> one padded tensor batch (each side padded to its own longest)."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of

    def _pad(self, rows: list[dict], side: str) -> dict[str, torch.Tensor]:
        return self.tokenizer.pad(
            {
                "input_ids": [r[f"input_ids_{side}"] for r in rows],
                "attention_mask": [r[f"attention_mask_{side}"] for r in rows],
            },
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_tensors="pt",
        )

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for side in ("a", "b"):
            padded = self._pad(rows, side)
            batch[f"input_ids_{side}"] = padded["input_ids"]
            batch[f"attention_mask_{side}"] = padded["attention_mask"]
            batch[f"style_{side}"] = torch.tensor(
                np.asarray([r[f"style_{side}"] for r in rows], dtype=np.float32).reshape(len(rows), -1)
            )
            batch[f"work_{side}"] = torch.tensor([r[f"work_{side}"] for r in rows], dtype=torch.long)
            batch[f"topic_{side}"] = torch.tensor([r[f"topic_{side}"] for r in rows], dtype=torch.long)
        batch["label"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
        batch["row"] = torch.tensor([r["row"] for r in rows], dtype=torch.long)
        if "teacher_logits" in rows[0]:
            batch["teacher_logits"] = torch.tensor([r["teacher_logits"] for r in rows], dtype=torch.float32)
        return batch


class CrossCollator:
    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in rows[0]]
        batch = dict(
            self.tokenizer.pad(
                {k: [r[k] for r in rows] for k in keys}, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
            )
        )
        batch["label"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
        batch["row"] = torch.tensor([r["row"] for r in rows], dtype=torch.long)
        return batch
