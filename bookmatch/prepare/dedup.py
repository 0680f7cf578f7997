"""Duplicate works and boilerplate chunks.

Two books are one *work* when they share text: the smaller one's word-gram shingles are largely contained in
the larger (|A∩B| / min(|A|,|B|): identical files under two folders, a volume inside its "Complete"
edition), or they share a large amount of text that few other books hold (two anthologies printing the
same stories). Whole works go to one split and never form a negative pair. Candidates come from an
inverted index (shingle -> books, built by one sort), which also yields the exact intersection sizes, so it
scales to tens of thousands of books without quadratic comparison; works are the connected components
(union-find).

Boilerplate is counted in sentences: a sentence in several works (front matter, advertisements) marks the
chunks made of it for removal.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from bookmatch.prepare.records import BookRecord


@dataclass
class WorkGrouping:
    work_of: list[int]  # book index -> work index (the smallest book index in its group)
    copy_of: list[int]  # the same by the copies rule alone (see group_works)
    groups: list[list[int]]  # groups of >= 2 book indices, sorted
    containment: dict[tuple[int, int], float]  # shingle containment of each merged pair, for the manifest


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The smaller root wins so a work's id is its first book in sorted order, whatever the merge order.
            self.parent[max(ra, rb)] = min(ra, rb)


def _inverted_index(shingle_sets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, books) sorted by hash: one row per (distinct shingle, book)."""
    sizes = [len(s) for s in shingle_sets]
    hashes = np.concatenate(shingle_sets) if shingle_sets else np.zeros(0, dtype=np.uint64)
    books = np.repeat(np.arange(len(shingle_sets), dtype=np.int64), sizes)
    order = np.argsort(hashes, kind="stable")
    return hashes[order], books[order]


def shared_shingle_counts(shingle_sets: list[np.ndarray], max_books_per_shingle: int) -> Counter:
    """{(a, b): number of shingles books a < b share}, ignoring shingles held by too many books.

    Vectorised per group size: the groups of s books sharing a shingle form an (n, s) array whose column
    pairs are the candidate book pairs, so the cost is numpy work proportional to the pairs emitted.
    """
    hashes, books = _inverted_index(shingle_sets)
    counts: Counter = Counter()
    if len(hashes) == 0:
        return counts
    boundaries = np.flatnonzero(np.diff(hashes)) + 1
    starts = np.concatenate([[0], boundaries])
    sizes = np.diff(np.concatenate([starts, [len(hashes)]]))
    num_books = len(shingle_sets)
    codes = []
    for size in np.unique(sizes[(sizes >= 2) & (sizes <= max_books_per_shingle)]).tolist():
        group_starts = starts[sizes == size]
        members = books[group_starts[:, None] + np.arange(size)[None, :]]  # sorted within a group (stable sort)
        for i in range(size):
            for j in range(i + 1, size):
                codes.append(members[:, i] * num_books + members[:, j])
    if codes:
        pair_codes, pair_counts = np.unique(np.concatenate(codes), return_counts=True)
        for code, count in zip(pair_codes.tolist(), pair_counts.tolist()):
            counts[divmod(code, num_books)] = count
    return counts


def group_works(
    records: list[BookRecord],
    containment_threshold: float = 0.5,
    min_shared_shingles: int = 20,
    max_books_per_shingle: int = 50,
    large_overlap_shingles: int = 125,
    common_min_works: int = 3,
) -> WorkGrouping:
    """Group books into works by their word-gram shingles (`BookRecord.gram_shingles`).

    Two rules, applied in order:
    1. *copies*: the smaller book is mostly inside the larger (`containment_threshold` of its shingles, at
       least `min_shared_shingles`): identical files, a volume inside its "Complete" edition;
    2. *shared text*: the two share at least `large_overlap_shingles` shingles that no more than these
       copy-groups hold, whatever share of the books that is: two anthologies printing the same stories, a
       poem inside a collected edition in another translation. Shingles held by `common_min_works` or more
       copy-groups (a publisher's front matter and advertisements) are not evidence of shared text.
    `copy_of` keeps the first grouping, which boilerplate detection counts works by.
    """
    shingle_sets = [r.gram_shingles for r in records]
    counts = shared_shingle_counts(shingle_sets, max_books_per_shingle)

    def containment(a: int, b: int) -> float:
        return counts[(a, b)] / max(1, min(len(shingle_sets[a]), len(shingle_sets[b])))

    union = _UnionFind(len(records))
    evidence: dict[tuple[int, int], float] = {}
    for (a, b), shared in sorted(counts.items()):
        if shared >= min_shared_shingles and containment(a, b) >= containment_threshold:
            union.union(a, b)
            evidence[(a, b)] = round(containment(a, b), 4)
    copy_of = [union.find(i) for i in range(len(records))]

    common = shingles_in_many_works(shingle_sets, copy_of, common_min_works)
    distinctive = [np.setdiff1d(s, common, assume_unique=True) for s in shingle_sets]
    for (a, b), shared in sorted(shared_shingle_counts(distinctive, max_books_per_shingle).items()):
        if shared >= large_overlap_shingles and union.find(a) != union.find(b):
            union.union(a, b)
            evidence[(a, b)] = round(containment(a, b), 4)
    work_of = [union.find(i) for i in range(len(records))]
    members: dict[int, list[int]] = {}
    for book, work in enumerate(work_of):
        members.setdefault(work, []).append(book)
    groups = sorted(g for g in members.values() if len(g) > 1)
    return WorkGrouping(work_of=work_of, copy_of=copy_of, groups=groups, containment=evidence)


def shingles_in_many_works(shingle_sets: list[np.ndarray], work_of: list[int], min_works: int) -> np.ndarray:
    """Sorted shingles found in at least `min_works` distinct works (copies of one work count once)."""
    work_sets: dict[int, list[np.ndarray]] = {}
    for index, shingles in enumerate(shingle_sets):
        work_sets.setdefault(work_of[index], []).append(shingles)
    per_work = [np.unique(np.concatenate(sets)) for _, sets in sorted(work_sets.items())]
    if not per_work:
        return np.zeros(0, dtype=np.uint64)
    hashes, counts = np.unique(np.concatenate(per_work), return_counts=True)
    return hashes[counts >= min_works]


def common_shingles(records: list[BookRecord], work_of: list[int], min_works: int) -> np.ndarray:
    """Sorted sentence hashes found in at least `min_works` distinct works: front matter, stock phrases,
    boilerplate."""
    return shingles_in_many_works([r.sentence_shingles() for r in records], work_of, min_works)


def drop_boilerplate_chunks(record: BookRecord, common: np.ndarray, chunk_size: int, max_fraction: float) -> int:
    """Remove, in place, chunks whose share of common sentences exceeds `max_fraction`; return how many."""
    if len(common) == 0 or not record.num_chunks:
        return 0
    is_common = np.isin(record.sentence_hashes, common)
    # Prefix sums give every chunk's count of common sentences without a pass per chunk.
    prefix = np.concatenate([[0], np.cumsum(is_common)])
    starts = np.asarray(record.chunk_starts)
    ends = np.minimum(starts + chunk_size, len(is_common))
    fraction = (prefix[ends] - prefix[starts]) / np.maximum(ends - starts, 1)
    keep = (fraction <= max_fraction).tolist()
    dropped = len(keep) - sum(keep)
    if dropped:
        if record.chunks is not None:
            record.chunks = [c for c, k in zip(record.chunks, keep) if k]
        record.chunk_ids = [c for c, k in zip(record.chunk_ids, keep) if k]
        record.chunk_starts = [c for c, k in zip(record.chunk_starts, keep) if k]
        record.chunk_topics = [c for c, k in zip(record.chunk_topics, keep) if k]
    return int(dropped)
