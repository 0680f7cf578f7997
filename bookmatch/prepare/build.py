"""Steps 4-8, shared by the single-machine run and the shard merge: dedup, mining, splits, pairs, save.

Both paths hand this module the same list of BookRecords (sorted by path), so the same seed and the same
books give the same dataset whichever way they were scanned.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bookmatch.artifacts import write_commit
from bookmatch.config import config_to_dict, save_config
from bookmatch.errors import InputError
from bookmatch.leftovers import sweep_dead
from bookmatch.prepare.config import PrepareConfig
from bookmatch.prepare.dedup import WorkGrouping, common_shingles, drop_boilerplate_chunks, group_works
from bookmatch.prepare.pairs import COLUMNS, NEG_TYPES, PairOptions, pair_columns, sample_split_pairs
from bookmatch.prepare.records import BookRecord
from bookmatch.prepare.scan import assign_book_ids
from bookmatch.prepare.splits import SPLITS, assign_splits
from bookmatch.prepare.store import ChunkStore, TextTable, text_key
from bookmatch.progress import Timer, summary_line
from bookmatch.storage import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

_SHARD_BYTES = 500 * 1024 * 1024
_NO_HASHES = np.zeros(0, dtype=np.uint64)


def pair_features():
    from datasets import Features, Value

    types = {"label": Value("int64"), "same_topic": Value("bool")}
    return Features({name: types.get(name, Value("string")) for name in COLUMNS})


def split_counts(columns: dict[str, list]) -> dict[str, int]:
    counts = {"total": len(columns["label"]), "positive": sum(columns["label"])}
    counts["negative"] = counts["total"] - counts["positive"]
    for kind in NEG_TYPES:
        counts[kind] = sum(1 for t in columns["neg_type"] if t == kind)
    return counts


def write_dataset(
    columns: dict[str, dict[str, list]], target: Path, texts: TextTable | None = None, batch_rows: int = 2000
) -> None:
    """Save the splits as a DatasetDict at `target`, streaming rows through Arrow files in batches.

    With `texts`, the `text1`/`text2` columns hold `text_key`s and each batch takes its texts from the
    memory-mapped table, so no split's texts are ever all in memory."""
    from datasets import Dataset, DatasetDict
    from datasets.arrow_writer import ArrowWriter

    features = pair_features()
    staging = target / ".staging"
    staging.mkdir()
    splits = {}
    for name, cols in columns.items():
        path = staging / f"{name}.arrow"
        with ArrowWriter(features=features, path=str(path)) as writer:
            total = len(cols["label"])
            for start in range(0, total, batch_rows):
                batch = {k: v[start : start + batch_rows] for k, v in cols.items()}
                if texts is not None:
                    batch["text1"], batch["text2"] = texts.take(batch["text1"]), texts.take(batch["text2"])
                writer.write_batch(batch)
            writer.finalize()
        splits[name] = Dataset.from_file(str(path))
    dataset = DatasetDict(splits)
    # An explicit shard count per split: datasets writes an empty split as 0 shards, which it cannot load.
    shards = {name: max(1, math.ceil(split.data.nbytes / _SHARD_BYTES)) for name, split in dataset.items()}
    dataset.save_to_disk(str(target), num_shards=shards)
    del dataset, splits
    shutil.rmtree(staging)


def mine_neighbours(
    kept: list[BookRecord],
    work_of: list[int],
    config: PrepareConfig,
    spill: Callable[[dict[int, set[int]], str], TextTable],
) -> tuple[list[list[int]], int]:
    """(hard-negative books per book, number of chunks embedded)."""
    from bookmatch.prepare.mining import embed_centroids, embed_positions, hard_negative_books

    positions = [embed_positions(r.num_chunks, config.num_chunks_for_embed) for r in kept]
    table = spill(dict(enumerate(map(set, positions))), "mining")
    samples = _BookSamples(table, positions)
    started = time.perf_counter()
    embedded = sum(map(len, positions))
    centroids = embed_centroids(
        samples, config.miner_model, config.embed_batch_size, precision=config.miner_precision, total_texts=embedded
    )
    log.info(summary_line("embedded chunks", embedded, time.perf_counter() - started, "chunks"))
    neighbours = hard_negative_books(
        centroids, work_of, config.num_hard_negative_books, config.knn_backend, config.knn_block_size
    )
    return neighbours, embedded


class _BookSamples(Sequence):
    """Each book's mining sample, read from the text table only when the embedder reaches that book."""

    def __init__(self, table: TextTable, positions: list[list[int]]) -> None:
        self.table, self.positions = table, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, book: int) -> list[str]:
        return self.table.book_texts(book, self.positions[book])


def build_dataset(
    records: list[BookRecord],
    skipped: list[dict[str, str]],
    books_found: int,
    config: PrepareConfig,
    out: str | Path,
    timer: Timer,
    store: ChunkStore,
) -> Path:
    """Group works, drop boilerplate, mine, split, pair and save a DatasetDict with its manifest at `out`.

    Chunk texts come from `store` (spilled there while scanning). The records are consumed: boilerplate chunks
    are dropped from them and their sentence hashes released.
    """
    started = time.perf_counter()
    records = sorted(records, key=lambda r: r.path)
    assign_book_ids(records)
    with timer.stage("dedup"):
        grouping = group_works(
            records,
            config.containment_threshold,
            config.min_shared_shingles,
            config.max_books_per_shingle,
            config.large_overlap_shingles,
            config.boilerplate_min_works,
        )
    with timer.stage("boilerplate"):
        dropped_chunks = _drop_boilerplate(records, grouping, config)
    books = _used_books(records, grouping, skipped, books_found, dropped_chunks)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Chosen texts go to memory-mapped Arrow files beside the output (same disk), removed when done.
    # The folder name carries this process's ID: the next run removes what a killed one left, not a live run's.
    sweep_dead(out.parent, re.escape(f".{out.name}.texts-") + r"(?:(?P<pid>\d+)-)?[^/]+")
    spill_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.texts-{os.getpid()}-", dir=out.parent))
    try:
        return _pairs_and_save(books, config, out, timer, started, _Spill(books.kept, store, spill_dir))
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)


def _drop_boilerplate(records: list[BookRecord], grouping: WorkGrouping, config: PrepareConfig) -> int:
    """Drop chunks made of text shared across works (licences, editors' notes); the number dropped."""
    common = common_shingles(records, grouping.copy_of, config.boilerplate_min_works)
    dropped_chunks = sum(
        drop_boilerplate_chunks(r, common, config.chunk_size, config.boilerplate_max_fraction) for r in records
    )
    for record in records:
        # No later stage reads the per-sentence hashes, and they are half of what a book holds in memory.
        record.sentence_hashes = record.gram_shingles = _NO_HASHES
    return dropped_chunks


@dataclass
class _UsedBooks:
    """The books left after dedup and boilerplate, numbered 0..n-1, with their works and authors."""

    records: list[BookRecord]  # every scanned book, for the manifest's duplicate lists
    grouping: WorkGrouping  # dedup over `records`
    skipped: list[dict[str, str]]
    books_found: int
    dropped_chunks: int
    kept: list[BookRecord]
    work_of: list[int]  # kept book -> work number
    work_ids: list[str]  # work number -> work id (the smallest book id among its used copies)
    author_of: list[str]


def _used_books(
    records: list[BookRecord],
    grouping: WorkGrouping,
    skipped: list[dict[str, str]],
    books_found: int,
    dropped_chunks: int,
) -> _UsedBooks:
    skipped = list(skipped)
    used = []
    for index, record in enumerate(records):
        if record.num_chunks:
            used.append(index)
        else:
            skipped.append({"path": record.path, "reason": "every chunk was boilerplate shared with other books"})
    skipped.sort(key=lambda s: s["path"])
    if not used:
        examples = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
        raise InputError(
            f"no usable book among the {books_found} files found ({examples}{'; ...' if len(skipped) > 3 else ''}): "
            "put plain-text books under the books folder as <author>/<title>.txt"
        )
    # Re-index on the used books only; a work is named by the smallest book id among its used copies.
    kept = [records[i] for i in used]
    root_of = [grouping.work_of[i] for i in used]
    work_id_of_root: dict[int, str] = {}
    for record, root in zip(kept, root_of):
        work_id_of_root[root] = min(work_id_of_root.get(root, record.book_id), record.book_id)
    work_ids = sorted(set(work_id_of_root.values()))
    work_number = {w: n for n, w in enumerate(work_ids)}
    work_of = [work_number[work_id_of_root[root]] for root in root_of]
    author_of = [r.folder_author.lower() or r.author.lower() for r in kept]
    return _UsedBooks(records, grouping, skipped, books_found, dropped_chunks, kept, work_of, work_ids, author_of)


class _Spill:
    """Writes the wanted chunk texts of kept books, streamed from the chunk store, to an Arrow table."""

    def __init__(self, kept: list[BookRecord], store: ChunkStore, folder: Path) -> None:
        self.kept, self.store, self.folder = kept, store, folder

    def __call__(self, wanted: dict[int, set[int]], name: str) -> TextTable:
        table = TextTable(self._texts(wanted), self.folder / f"{name}.arrow")
        expected = sum(map(len, wanted.values()))
        if len(table) != expected:
            raise RuntimeError(f"{expected - len(table)} wanted chunk texts are missing from the chunk store")
        return table

    def _texts(self, wanted: dict[int, set[int]]) -> Iterator[tuple[int, int, str]]:
        """(kept book, chunk, text) for the wanted chunk positions of kept books."""
        kept = self.kept
        by_path = {kept[b].path: {kept[b].chunk_ids[c] for c in cs} for b, cs in wanted.items()}
        book_of_path = {kept[b].path: b for b in wanted}
        chunk_of = {b: {kept[b].chunk_ids[c]: c for c in cs} for b, cs in wanted.items()}
        for path, stored, text in self.store.iter_texts(by_path):
            b = book_of_path[path]
            yield b, chunk_of[b][stored], text


def _pairs_and_save(
    books: _UsedBooks,
    config: PrepareConfig,
    out: Path,
    timer: Timer,
    started: float,
    spill: Callable[[dict[int, set[int]], str], TextTable],
) -> Path:
    """Mining, splits, pairs and the atomic save (build_dataset's second half, inside its spill folder)."""
    kept, work_of, author_of = books.kept, books.work_of, books.author_of
    neighbours, embedded = None, 0
    if config.hard_negatives and len(kept) > 1:
        with timer.stage("mining"):
            neighbours, embedded = mine_neighbours(kept, work_of, config, spill)

    with timer.stage("splits"):
        split_members = _split_members(books, config)

    with timer.stage("pairs"):
        options = PairOptions(
            n_positive=config.positives_per_book,
            n_negative=config.n_negative_per_book,
            chunk_size=config.chunk_size,
            neg_mix={
                "hard": config.neg_mix_hard,
                "same_author": config.neg_mix_same_author,
                "same_topic": config.neg_mix_same_topic,
                "random": config.neg_mix_random,
            },
            seed=config.seed,
        )
        rows = {
            name: sample_split_pairs(kept, members, work_of, author_of, neighbours, options)
            for name, members in split_members.items()
        }
        wanted: dict[int, set[int]] = {}
        for split_rows in rows.values():
            for b1, c1, b2, c2, _, _ in split_rows:
                wanted.setdefault(b1, set()).add(c1)
                wanted.setdefault(b2, set()).add(c2)
    with timer.stage("fetch_texts"):
        texts = spill(wanted, "pairs")
    with timer.stage("pairs"):
        columns = {name: pair_columns(kept, split_rows, text_key) for name, split_rows in rows.items()}
        counts = {name: split_counts(cols) for name, cols in columns.items()}

    with timer.stage("save"):
        with atomic_directory(out) as tmp:
            write_dataset(columns, tmp, texts)
            del columns, texts
            manifest = _manifest(books, config, split_members, counts, embedded, timer)
            save_config(config, tmp / "config.yaml")
            manifest["timings"] = dict(timer.timings)
            atomic_write_json(tmp / "manifest.json", manifest)
    total_pairs = sum(c["total"] for c in manifest["counts"].values())
    log.info(summary_line("prepared pairs", total_pairs, time.perf_counter() - started, "pairs"))
    # The save time is only known now; rewrite the manifest so its timings include it.
    manifest["timings"] = dict(timer.timings)
    atomic_write_json(out / "manifest.json", manifest)
    write_commit(out, meta={"kind": "prepare"})  # last: readers (the pipeline) trust the folder once it verifies
    return out


def _split_members(books: _UsedBooks, config: PrepareConfig) -> dict[str, list[int]]:
    """Kept books of each split: whole works go to one split, held-out authors' works to test."""
    work_authors: dict[int, list[str]] = {}
    for record, work in zip(books.kept, books.work_of):
        work_authors.setdefault(work, []).extend([record.folder_author, record.author])
    split_of_work = assign_splits(
        dict(enumerate(books.work_ids)),
        work_authors,
        config.holdout_author_list,
        config.train_ratio,
        config.val_ratio,
        config.seed,
    )
    return {name: [b for b in range(len(books.kept)) if split_of_work[books.work_of[b]] == name] for name in SPLITS}


def _manifest(books: _UsedBooks, config: PrepareConfig, split_members, counts, embedded: int, timer: Timer) -> dict:
    kept, records, grouping = books.kept, books.records, books.grouping
    return {
        "books_found": books.books_found,
        "books_used": len(kept),
        "skipped": books.skipped,
        "duplicate_groups": [[records[i].path for i in group] for group in grouping.groups],
        "duplicate_evidence": [
            {"a": records[a].path, "b": records[b].path, "containment": value}
            for (a, b), value in sorted(grouping.containment.items())
        ],
        "book_work": {r.book_id: books.work_ids[w] for r, w in zip(kept, books.work_of)},
        "split_books": {name: sorted(kept[b].book_id for b in members) for name, members in split_members.items()},
        "counts": counts,
        "boilerplate_chunks_dropped": books.dropped_chunks,
        "text_removed": removed_totals(kept),
        "chunks_embedded": embedded,
        "config": config_to_dict(config),
        "timings": timer.timings,
        "complete": True,
    }


def removed_totals(records: Sequence[BookRecord]) -> dict:
    """Characters of Gutenberg boilerplate standardization removed from the books used, by kind, and the files
    found to hold more than one book (an end line followed by more book text: a boundary, not the end)."""
    totals: dict[str, int] = {}
    for record in records:
        for kind, count in record.removed.items():
            totals[kind] = totals.get(kind, 0) + int(count)
    several = sorted(r.path for r in records if r.removed.get("boundaries"))
    return {"chars": totals, "books_holding_several": several}
