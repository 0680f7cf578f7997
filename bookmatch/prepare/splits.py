"""Step 7: assign whole works to train/validation/test, so no text sits on both sides of a split."""

from __future__ import annotations

import hashlib
import re

SPLITS = ("train", "validation", "test")


def _order_key(seed: int, work_key: str) -> str:
    return hashlib.sha1(f"{seed}:{work_key}".encode()).hexdigest()


# Who edited, translated or illustrated a book is not its author: "Edited by Julian Hawthorne" is no Hawthorne book.
_CONTRIBUTOR = re.compile(
    r"\b(?:edited|translated|illustrated|compiled|selected|introduced|arranged)\s+by\b.*", re.IGNORECASE
)


def is_holdout_author(author: str, holdout: list[str]) -> bool:
    """Whether a holdout name is a whole word (or words) of `author`, contributors' names left out."""
    author = _CONTRIBUTOR.sub("", author).lower()
    return any(re.search(rf"(?<!\w){re.escape(name)}(?!\w)", author) for name in holdout)


def assign_splits(
    work_keys: dict[int, str],
    work_authors: dict[int, list[str]],
    holdout_authors: list[str],
    train_ratio: float,
    val_ratio: float,
    seed: int,
) -> dict[int, str]:
    """{work: split}. `work_keys` gives each work a stable name (its first book id) to hash; a work with any
    book by a holdout author (`is_holdout_author`, case-insensitive: a surname matches every author of that
    surname) goes to test."""
    holdout = [name.lower() for name in holdout_authors if name]
    split_of: dict[int, str] = {}
    free = []
    for work in work_keys:
        if any(is_holdout_author(author, holdout) for author in work_authors.get(work, [])):
            split_of[work] = "test"
        else:
            free.append(work)
    # A seeded hash order, cut by counts: reproducible, and every split gets a share even on tiny corpora.
    free.sort(key=lambda w: _order_key(seed, work_keys[w]))
    n = len(free)
    n_train = int(round(n * train_ratio))
    n_val = int(round(n * val_ratio))
    if n >= 3 and val_ratio > 0 and n_val == 0:
        n_val = 1
    if n >= 3 and train_ratio + val_ratio < 1 and n - n_train - n_val <= 0:
        n_train = max(1, n_train - 1)
    n_train = min(n_train, n)
    n_val = min(n_val, n - n_train)
    for position, work in enumerate(free):
        split_of[work] = "train" if position < n_train else "validation" if position < n_train + n_val else "test"
    return split_of
