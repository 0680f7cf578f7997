"""Duplicate works and boilerplate chunks.

Two books are one *work* when the smaller one's sentence shingles are largely contained in the larger
(|A∩B| / min(|A|,|B|)): identical files under two folders, a volume inside its "Complete" edition, a tale
inside an anthology. Candidates come from an inverted index (shingle -> books, built by one sort), which
also yields the exact intersection sizes, so it scales to tens of thousands of books without quadratic
comparison; groups are the connected components (union-find).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from bookmatch.prepare.records import BookRecord


@dataclass
class WorkGrouping:
    work_of: list[int]  # book index -> work index (the smallest book index in its group)
    groups: list[list[int]]  # groups of >= 2 book indices, sorted
    containment: dict[tuple[int, int], float]  # evidence for each merged pair, for the manifest/inspection


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
    partial_containment_threshold: float = 1.0,
    partial_min_shared_shingles: int = 0,
) -> WorkGrouping:
    """Books are one work when the smaller is mostly inside the larger (`containment_threshold`, at least
    `min_shared_shingles` shared), or when a large overlap (`partial_min_shared_shingles`) is still a fair
    share of it (`partial_containment_threshold`)."""
    shingle_sets = [r.shingles() for r in records]
    counts = shared_shingle_counts(shingle_sets, max_books_per_shingle)
    union = _UnionFind(len(records))
    evidence: dict[tuple[int, int], float] = {}
    for (a, b), shared in sorted(counts.items()):
        if shared < min_shared_shingles:
            continue
        smaller = min(len(shingle_sets[a]), len(shingle_sets[b]))
        containment = shared / smaller
        mostly_inside = containment >= containment_threshold
        large_overlap = shared >= partial_min_shared_shingles and containment >= partial_containment_threshold
        if mostly_inside or large_overlap:
            union.union(a, b)
            evidence[(a, b)] = round(containment, 4)
    work_of = [union.find(i) for i in range(len(records))]
    members: dict[int, list[int]] = {}
    for book, work in enumerate(work_of):
        members.setdefault(work, []).append(book)
    groups = sorted(g for g in members.values() if len(g) > 1)
    return WorkGrouping(work_of=work_of, groups=groups, containment=evidence)


def common_shingles(records: list[BookRecord], work_of: list[int], min_works: int) -> np.ndarray:
    """Sorted shingles found in at least `min_works` distinct works: front matter, stock phrases, boilerplate."""
    work_sets: dict[int, list[np.ndarray]] = {}
    for index, record in enumerate(records):
        work_sets.setdefault(work_of[index], []).append(record.shingles())
    per_work = [np.unique(np.concatenate(sets)) for _, sets in sorted(work_sets.items())]
    if not per_work:
        return np.zeros(0, dtype=np.uint64)
    hashes, counts = np.unique(np.concatenate(per_work), return_counts=True)
    return hashes[counts >= min_works]


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
