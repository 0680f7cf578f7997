"""Model inputs of a pair split as plain arrays: computed once per dataset, cached on disk, batched by slicing.

`tokenize_bi_encoder_split` / `tokenize_cross_split` (data.py) are the plain path: a `datasets` table of Python
lists, padded per batch by the tokenizer. Here the same tokens and side features become numpy arrays:

* each distinct text is tokenized and featurised once (a chunk sits in many pairs);
* token ids sit in one (rows, longest) matrix pre-filled with the pad id, so a batch is a slice of it
  (`PairArrays.batch`), with no per-row Python work at each step;
* the arrays are written to `<cache>/features-<key>.npz` (atomically), the key covering the pair texts, the
  tokenizer, the settings and the fitted lexical IDFs; a resume, a second run on the same data and the next
  stage load them instead of recomputing.

The tests check both paths give the same batches.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from bookmatch.storage import atomic_write_bytes

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Bump when the arrays' meaning changes, so older cache files are never read as current ones.
FEATURES_VERSION = 1
CACHE_FOLDER = "cache"
# What reading a cut, emptied or overwritten cache file raises: such a file is rebuilt, never trusted.
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


@dataclass
class Sequences:
    """Token sequences of one side: ids (rows, width) right-padded with `pad_id`, and each row's length."""

    ids: np.ndarray
    lengths: np.ndarray
    pad_id: int
    token_types: np.ndarray | None = None  # cross-encoder segment ids, padded with 0

    @classmethod
    def from_lists(
        cls, ids: Sequence[Sequence[int]], pad_id: int, token_types: Sequence[Sequence[int]] | None = None
    ) -> Sequences:
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        width = int(lengths.max()) if len(ids) else 0
        matrix = np.full((len(ids), width), pad_id, dtype=np.int64)
        types = None if token_types is None else np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            matrix[i, : len(row)] = row
            if types is not None:
                types[i, : len(row)] = token_types[i]
        return cls(matrix, lengths, pad_id, types)

    def padded(self, rows: np.ndarray, pad_to_multiple_of: int | None) -> dict[str, torch.Tensor]:
        """The rows padded to their longest (rounded up to the multiple), as the tokenizer's `pad` would."""
        width = int(self.lengths[rows].max()) if len(rows) else 0
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        ids = self.ids[rows, : min(width, self.ids.shape[1])]
        if ids.shape[1] < width:  # rounding up past the longest row of the whole split
            ids = np.pad(ids, ((0, 0), (0, width - ids.shape[1])), constant_values=self.pad_id)
        out = {
            "input_ids": torch.from_numpy(np.ascontiguousarray(ids)),
            "attention_mask": torch.from_numpy(
                (np.arange(width)[None, :] < self.lengths[rows][:, None]).astype(np.int64)
            ),
        }
        if self.token_types is not None:
            types = self.token_types[rows, : min(width, self.token_types.shape[1])]
            out["token_type_ids"] = torch.from_numpy(np.pad(types, ((0, 0), (0, width - types.shape[1]))))
        return out


@dataclass
class PairArrays:
    """A tokenized pair split: per-row `columns` (label, row, work/topic ids, style, teacher logits...) and token
    `sequences` per side ("a", "b" for the bi-encoder; "" for the cross-encoder's one sequence per pair)."""

    columns: dict[str, np.ndarray]
    sequences: dict[str, Sequences]
    pad_to_multiple_of: int | None = None
    lengths: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.lengths = np.max(np.stack([s.lengths for s in self.sequences.values()]), axis=0)

    def __len__(self) -> int:
        return len(self.lengths)

    def add_column(self, name: str, values: np.ndarray) -> None:
        if len(values) != len(self):
            raise ValueError(f"column {name!r} has {len(values)} rows, the split {len(self)}")
        self.columns[name] = np.asarray(values)

    def batch(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """One padded tensor batch: the collators' output for these rows."""
        rows = np.asarray(rows, dtype=np.int64)
        batch: dict[str, torch.Tensor] = {}
        for side, sequences in self.sequences.items():
            suffix = f"_{side}" if side else ""
            for name, tensor in sequences.padded(rows, self.pad_to_multiple_of).items():
                batch[name + suffix] = tensor
        for name, values in self.columns.items():
            batch[name] = torch.from_numpy(np.ascontiguousarray(values[rows]))
        return batch

    # a DataLoader over batches: `batch_sampler=None, batch_size=None, sampler=<lists of rows>`
    def __getitem__(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.batch(rows)

    def to_npz(self) -> bytes:
        arrays = {f"column.{k}": v for k, v in self.columns.items()}
        for side, s in self.sequences.items():
            arrays[f"ids.{side}"], arrays[f"lengths.{side}"] = s.ids.astype(np.int32), s.lengths
            arrays[f"pad.{side}"] = np.asarray(s.pad_id)
            if s.token_types is not None:
                arrays[f"types.{side}"] = s.token_types.astype(np.int8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_npz(cls, path: Path) -> PairArrays:
        with np.load(path) as stored:
            columns = {k.split(".", 1)[1]: stored[k] for k in stored.files if k.startswith("column.")}
            sides = [k.split(".", 1)[1] for k in stored.files if k.startswith("ids.")]
            sequences = {
                side: Sequences(
                    stored[f"ids.{side}"].astype(np.int64),
                    stored[f"lengths.{side}"],
                    int(stored[f"pad.{side}"]),
                    stored[f"types.{side}"].astype(np.int64) if f"types.{side}" in stored.files else None,
                )
                for side in sides
            }
        return cls(columns, sequences)


# ---------------------------------------------------------------------------------------------------------------
# building: the bi-encoder's and the cross-encoder's inputs
# ---------------------------------------------------------------------------------------------------------------


def _unique(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct texts (first-seen order) and, per input text, its index among them."""
    index: dict[str, int] = {}
    positions = np.fromiter((index.setdefault(t, len(index)) for t in texts), dtype=np.int64, count=len(texts))
    return list(index), positions


def _in_chunks(function: Callable[[list[str]], list], items: list, workers: int, chunk: int = 512) -> list:
    """function over chunks of items, concatenated in order; `workers` > 1 forks that many processes."""
    parts = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    if workers > 1 and len(parts) > 1:
        import multiprocessing

        # fork: the model travels to the workers without pickling
        with multiprocessing.get_context("fork").Pool(
            workers, initializer=_set_worker_function, initargs=(function,)
        ) as pool:
            results = pool.map(_call_worker_function, parts)
    else:
        results = [function(part) for part in parts]
    return [x for part in results for x in part]


_WORKER_FUNCTION: Callable | None = None  # set in forked feature workers only


def _set_worker_function(function: Callable) -> None:
    global _WORKER_FUNCTION
    _WORKER_FUNCTION = function


def _call_worker_function(part: list) -> list:
    return _WORKER_FUNCTION(part)


def bi_encoder_arrays(
    texts_a: Sequence[str], texts_b: Sequence[str], model, window: str = "first", seed: int = 0, workers: int = 0
) -> PairArrays:
    """Token ids and side features ("style": style features, then lexical signatures) of both sides, as
    `tokenize_bi_encoder_split` computes them; each distinct text once ("random" windows are drawn per row)."""
    from bookmatch.training.data import TRAINING_WINDOWS

    if window not in TRAINING_WINDOWS:
        raise ValueError(f"unknown training window {window!r}; choose one of {', '.join(TRAINING_WINDOWS)}")
    unique, positions = _unique(list(texts_a) + list(texts_b))
    positions_a, positions_b = positions[: len(texts_a)], positions[len(texts_a) :]
    style = np.concatenate(
        _in_chunks(lambda part: list(model.side_feature_array(part).astype(np.float32)), unique, workers)
    )
    style = style.reshape(len(unique), -1)
    pad_id = model.tokenizer.pad_token_id or 0
    if window == "first":
        ids = _in_chunks(lambda part: model.tokenize(part)["input_ids"], unique, workers)
        side_ids = ([ids[p] for p in positions_a], [ids[p] for p in positions_b])
    else:
        side_ids = tuple(
            _in_chunks(
                lambda part: model.sampled_window_inputs([t for t, _ in part], [s for _, s in part]),
                [(t, (seed, row, side)) for row, t in enumerate(texts)],
                workers,
            )
            for side, texts in enumerate((texts_a, texts_b))
        )
    return PairArrays(
        columns={"style_a": style[positions_a], "style_b": style[positions_b]},
        sequences={"a": Sequences.from_lists(side_ids[0], pad_id), "b": Sequences.from_lists(side_ids[1], pad_id)},
    )


def cross_arrays(texts_a: Sequence[str], texts_b: Sequence[str], cross_encoder, workers: int = 0) -> PairArrays:
    """Token ids (and segment ids) of each pair in one sequence, as `tokenize_cross_split` computes them."""
    pairs = list(zip(texts_a, texts_b))
    encoded = _in_chunks(lambda part: _cross_rows(cross_encoder, part), pairs, workers)
    ids = [e[0] for e in encoded]
    types = [e[1] for e in encoded] if encoded and encoded[0][1] is not None else None
    return PairArrays(
        columns={}, sequences={"": Sequences.from_lists(ids, cross_encoder.tokenizer.pad_token_id or 0, types)}
    )


def _cross_rows(cross_encoder, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int] | None]]:
    tokens = cross_encoder.tokenize_pairs([a for a, _ in pairs], [b for _, b in pairs])
    types = tokens.get("token_type_ids")
    return [(ids, None if types is None else types[i]) for i, ids in enumerate(tokens["input_ids"])]


# ---------------------------------------------------------------------------------------------------------------
# the cache
# ---------------------------------------------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer) -> str:
    """sha1 over what decides a tokenizer's output (its full definition for fast tokenizers)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # without the truncation/padding state, which a call with truncation=True leaves on the backend
        definition = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        text = json.dumps(definition, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    settings = json.dumps(
        [
            type(tokenizer).__name__,
            tokenizer.padding_side,
            tokenizer.truncation_side,
            tokenizer.pad_token_id,
            getattr(tokenizer, "do_lower_case", None),
        ]
    )
    return hashlib.sha1((text + settings).encode("utf-8")).hexdigest()


def arrays_key(texts_fingerprint: str, **settings) -> str:
    """The cache key of a split's arrays: its texts, the features version and every setting they depend on."""
    described = json.dumps(
        {"version": FEATURES_VERSION, "texts": texts_fingerprint, **settings}, sort_keys=True, default=str
    )
    return hashlib.sha1(described.encode("utf-8")).hexdigest()[:20]


def cross_arrays_key(texts_fingerprint: str, cross_encoder) -> str:
    """The cache key of a split's cross-encoder arrays: the training stage writes them, and the teacher-logits
    stage of the next run reads them (the same pairs, tokenizer and length) instead of tokenizing again."""
    return arrays_key(
        texts_fingerprint,
        task="cross",
        tokenizer=tokenizer_fingerprint(cross_encoder.tokenizer),
        max_seq_length=cross_encoder.config.max_seq_length,
    )


def arrays_path(cache: Path, key: str) -> Path:
    return Path(cache) / f"features-{key}.npz"


def cache_folder(data_dir: Path, out_dir: Path) -> Path:
    """`<data>/cache`, beside the dataset its files describe (shared by every run on it); `<out>/cache` when the
    data folder cannot be written (e.g. a read-only bucket mount)."""
    folder = Path(data_dir) / CACHE_FOLDER
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    return Path(out_dir) / CACHE_FOLDER


def cached_file(
    path: Path,
    load: Callable[[Path], T],
    build: Callable[[], T],
    dump: Callable[[T], bytes],
    what: str,
    write: bool = True,
    log: logging.Logger = logger,
) -> T:
    """`load(path)` where an earlier run left the file, else `build()`, then `dump` of it written to `path`
    (atomically; only where `write`, i.e. one rank). A damaged file is rebuilt, never trusted; a file that cannot
    be written costs time, not the run. `what` names the cache in the lines written to `log`."""
    if path.exists():
        try:
            value = load(path)
            log.info("%s: reusing %s", what, path)
            return value
        except UNREADABLE as err:
            log.warning("%s: %s is unreadable (%s): rebuilding it", what, path, err)
    value = build()
    if write:
        try:
            atomic_write_bytes(path, dump(value))
        except OSError as err:
            log.warning("%s: cannot write %s (%s); continuing without the cache", what, path, err)
    return value


def fit_lexical_cached(
    model, texts_fingerprint: str, texts: Callable[[], Iterable[str]], cache: Path, write: bool = True
) -> None:
    """Fit `model`'s lexical IDFs on the training `texts()`, or read them from `cache` where an earlier run on the
    same texts and settings left them: the fit reads every text in Python (~7,000 texts/s on one core), minutes
    at full scale on every start and every rank. Stored only where `write` (one rank)."""
    fingerprints = list(model.lexical_fingerprints())
    if not fingerprints:
        return
    settings = [(fingerprint.words.__name__, fingerprint.num_buckets) for fingerprint, _ in fingerprints]
    path = Path(cache) / f"lexical_idf-{arrays_key(texts_fingerprint, task='lexical_idf', settings=settings)}.npz"

    def load(path: Path) -> list[np.ndarray]:
        with np.load(path) as stored:
            idfs = [stored[f"idf{i}"] for i in range(len(fingerprints))]
        if [idf.shape for idf in idfs] != [tuple(buffer.shape) for _, buffer in fingerprints]:
            raise ValueError("IDF shapes differ from the model's")
        return idfs

    def fit() -> list[np.ndarray]:
        model.fit_lexical(texts())
        return [buffer.detach().cpu().numpy() for _, buffer in fingerprints]

    def dump(idfs: list[np.ndarray]) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, **{f"idf{i}": idf for i, idf in enumerate(idfs)})
        return buffer.getvalue()

    idfs = cached_file(path, load, fit, dump, "lexical IDF", write)
    for (_, buffer), idf in zip(fingerprints, idfs):
        buffer.copy_(torch.from_numpy(idf))
    model.sync_lexical()


def cached_arrays(cache: Path, key: str, build: Callable[[], PairArrays], write: bool = True) -> PairArrays:
    """The arrays stored under `key`, or `build()` then stored (atomically; only where `write`, i.e. one rank)."""
    return cached_file(arrays_path(cache, key), PairArrays.from_npz, build, PairArrays.to_npz, "features", write)
