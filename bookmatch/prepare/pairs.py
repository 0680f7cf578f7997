"""Step 6: positive and negative passage pairs within one split.

Positives: two chunks of one book that share no sentence. Negatives: a chunk of the book against a chunk of
a book of ANOTHER work, of four kinds: `hard` (a mined neighbour book), `same_author` (so the matcher learns
to tell one author's books apart), `same_topic` (same lexicon topic) and `random`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from bookmatch.prepare.records import BookRecord

COLUMNS = ("text1", "text2", "label", "book1", "book2", "pair_type", "neg_type", "topic1", "topic2", "same_topic")
NEG_TYPES = ("hard", "same_author", "same_topic", "random")
_TRIES = 20


@dataclass
class PairOptions:
    n_positive: int
    n_negative: int
    chunk_size: int
    neg_mix: dict[str, float]  # weight per NEG_TYPES entry
    seed: int


def _non_overlapping_pairs(starts: list[int], count: int, chunk_size: int, rng: random.Random) -> list[tuple[int, int]]:
    """Up to `count` distinct (i, j), i < j, whose sentence windows [start, start + chunk_size) are disjoint."""
    n = len(starts)
    found: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    if n < 2:
        return found
    for _ in range(count * _TRIES):
        if len(found) >= count:
            break
        i, j = sorted(rng.sample(range(n), 2))
        if (i, j) in seen or abs(starts[i] - starts[j]) < chunk_size:
            continue
        seen.add((i, j))
        found.append((i, j))
    return found


# (book1, chunk1, book2, chunk2, label, neg_type): indices into the records and their chunk lists.
PairRow = tuple[int, int, int, int, int, str]


def build_split_pairs(
    records: list[BookRecord],
    book_indices: list[int],
    work_of: list[int],
    author_of: list[str],
    neighbours: list[list[int]] | None,
    options: PairOptions,
) -> dict[str, list]:
    """Columns of the pairs for books whose chunk texts are in memory (`record.chunks`)."""
    rows = sample_split_pairs(records, book_indices, work_of, author_of, neighbours, options)
    return pair_columns(records, rows, lambda b, c: records[b].chunks[c])


def pair_columns(records: list[BookRecord], rows: list[PairRow], text_of: Callable[[int, int], str]) -> dict[str, list]:
    """The dataset columns for `rows`; `text_of(book, chunk)` supplies the passage texts."""
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    for b1, c1, b2, c2, label, neg_type in rows:
        r1, r2 = records[b1], records[b2]
        t1, t2 = r1.chunk_topics[c1], r2.chunk_topics[c2]
        values = (
            text_of(b1, c1),
            text_of(b2, c2),
            label,
            r1.book_id,
            r2.book_id,
            "positive" if label else "negative",
            neg_type,
            t1,
            t2,
            t1 == t2,
        )
        for name, value in zip(COLUMNS, values):
            columns[name].append(value)
    return columns


def sample_split_pairs(
    records: list[BookRecord],
    book_indices: list[int],
    work_of: list[int],
    author_of: list[str],
    neighbours: list[list[int]] | None,
    options: PairOptions,
) -> list[PairRow]:
    """The pairs for the books `book_indices` (indices into `records`), as indices, shuffled reproducibly."""
    in_split = set(book_indices)
    books = sorted(book_indices, key=lambda b: records[b].book_id)
    usable = [b for b in books if records[b].num_chunks]
    split_works = {work_of[b] for b in usable}
    by_author: dict[str, list[int]] = {}
    by_topic: dict[str, list[tuple[int, int]]] = {}
    for b in usable:
        by_author.setdefault(author_of[b], []).append(b)
        for c, topic in enumerate(records[b].chunk_topics):
            if topic != "general":
                by_topic.setdefault(topic, []).append((b, c))

    rows: list[PairRow] = []

    def add(b1: int, c1: int, b2: int, c2: int, label: int, neg_type: str) -> None:
        rows.append((b1, c1, b2, c2, label, neg_type))

    for b in usable:
        record = records[b]
        rng = random.Random(f"{options.seed}:{record.book_id}")
        for i, j in _non_overlapping_pairs(record.chunk_starts, options.n_positive, options.chunk_size, rng):
            add(b, i, b, j, 1, "")

        if len(split_works) < 2:
            continue
        candidates = {
            "hard": [o for o in (neighbours[b] if neighbours else []) if o in in_split and records[o].num_chunks],
            "same_author": [o for o in by_author.get(author_of[b], []) if work_of[o] != work_of[b]],
            "same_topic": [c for c, t in enumerate(record.chunk_topics) if t != "general"],
            "random": usable,
        }
        kinds = [k for k in NEG_TYPES if candidates[k] and options.neg_mix.get(k, 0) > 0] or ["random"]
        weights = [options.neg_mix.get(k, 0) or 1.0 for k in kinds]
        for _ in range(options.n_negative):
            kind = rng.choices(kinds, weights)[0]
            picked = None
            if kind == "same_topic":
                for _ in range(_TRIES):
                    c1 = rng.choice(candidates["same_topic"])
                    o, c2 = rng.choice(by_topic[record.chunk_topics[c1]])
                    if work_of[o] != work_of[b]:
                        picked = (c1, o, c2)
                        break
            elif kind in ("hard", "same_author"):
                o = rng.choice(candidates[kind])
                picked = (rng.randrange(record.num_chunks), o, rng.randrange(records[o].num_chunks))
            if picked is None:
                kind = "random"
                # Rejection sampling instead of listing every other-work book: O(1) per pair at 60k books.
                o = rng.choice(usable)
                while work_of[o] == work_of[b]:
                    o = rng.choice(usable)
                picked = (rng.randrange(record.num_chunks), o, rng.randrange(records[o].num_chunks))
            c1, o, c2 = picked
            add(b, c1, o, c2, 0, kind)

    random.Random(f"{options.seed}:shuffle").shuffle(rows)
    return rows
