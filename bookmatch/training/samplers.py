"""Batch order for pair training: seeded per epoch, length-grouped, and no text twice in one batch.

In-batch contrastive negatives are only real negatives when a text does not appear twice in a batch (two
pairs sharing a passage would make it its own "negative"); the greedy pass below follows
sentence-transformers' NoDuplicatesBatchSampler but defers a clashing example to a later batch instead of
rescanning the whole remainder, so an epoch costs O(n) rather than O(n^2 / batch).

With `groups` (e.g. the author of each pair's first book) every batch gathers its pairs from a few groups, so
the in-batch negatives of the contrastive loss include other books of the same author, not only strangers
(batches built from clusters, as in topic-aware sampling for dense retrieval).

The order is a pure function of (seed, epoch): a resumed run rebuilds the same epoch and skips the batches it
already consumed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np

# Examples are shuffled, then sorted by length inside windows of this many batches (as in Hugging Face's
# LengthGroupedSampler): batches pad little, yet the epoch order stays random.
MEGABATCH_FACTOR = 50


class NoDuplicatesBatchSampler:
    """Yields lists of example indices; every index exactly once per epoch (the last batch may be short).

    `text_keys[i]` holds the ids of the texts of example i (e.g. `(id(text1), id(text2))` as ints);
    `lengths[i]` its token length (None: no length grouping); `groups[i]` its group id (None: batches drawn
    at random), each batch then taking runs of about batch_size / groups_per_batch examples from that many
    groups (length grouping is not applied then: it would undo the runs).
    """

    def __init__(
        self,
        text_keys: Sequence[Sequence[int]],
        batch_size: int,
        seed: int,
        lengths: Sequence[int] | None = None,
        drop_last: bool = False,
        groups: Sequence[int] | None = None,
        groups_per_batch: int = 4,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if groups is not None and groups_per_batch < 1:
            raise ValueError(f"groups_per_batch must be >= 1, got {groups_per_batch}")
        self.text_keys = [tuple(k) for k in text_keys]
        self.batch_size = batch_size
        self.seed = seed
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.drop_last = drop_last
        self.groups = None if groups is None else np.asarray(groups)
        self.groups_per_batch = groups_per_batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _grouped_order(self, rng: np.random.Generator) -> np.ndarray:
        """Each group's examples shuffled and cut into runs of batch_size / groups_per_batch; the full runs in
        random order, so each batch is groups_per_batch runs of (almost always) different groups; the groups'
        short last runs go at the end of the epoch, where they would otherwise shift every later batch."""
        run = -(-self.batch_size // self.groups_per_batch)
        shuffled = rng.permutation(len(self.groups))
        by_group = shuffled[np.argsort(self.groups[shuffled], kind="stable")]  # grouped, random inside a group
        bounds = np.flatnonzero(np.diff(self.groups[by_group])) + 1
        runs = [
            members[start : start + run]
            for members in np.split(by_group, bounds)
            for start in range(0, len(members), run)
        ]
        full = [runs[i] for i in rng.permutation(len(runs)) if len(runs[i]) == run]
        tails = [r for r in runs if len(r) < run]
        return np.concatenate(full + tails) if runs else np.zeros(0, dtype=np.int64)

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        if self.groups is not None:
            return self._grouped_order(rng)
        order = rng.permutation(len(self.text_keys))
        if self.lengths is None:
            return order
        window = self.batch_size * MEGABATCH_FACTOR
        parts = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            # stable sort, longest first, so ties keep the random order
            parts.append(chunk[np.argsort(-self.lengths[chunk], kind="stable")])
        return np.concatenate(parts) if parts else order

    def batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        batches: list[list[int]] = []
        pending: deque[int] = deque()
        stream = iter(self._order(rng).tolist())
        exhausted = False
        while pending or not exhausted:
            batch: list[int] = []
            seen: set[int] = set()

            def fits(index: int) -> bool:
                return seen.isdisjoint(self.text_keys[index])

            # deferred examples first, so they are not pushed to the end of the epoch indefinitely
            for _ in range(len(pending)):
                if len(batch) == self.batch_size:
                    break
                index = pending.popleft()
                if fits(index):
                    batch.append(index)
                    seen.update(self.text_keys[index])
                else:
                    pending.append(index)
            while len(batch) < self.batch_size and not exhausted:
                index = next(stream, None)
                if index is None:
                    exhausted = True
                    break
                if fits(index):
                    batch.append(index)
                    seen.update(self.text_keys[index])
                else:
                    pending.append(index)
            if not batch:  # cannot happen (an empty batch accepts anything), but never loop forever
                break
            batches.append(batch)
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.lengths is not None and self.groups is None and len(batches) > 1:
            # length grouping made neighbouring batches similar; shuffle so an epoch does not sweep by length
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        return len(self.batches(self.epoch))


def text_key_ids(texts_a: Sequence[str], texts_b: Sequence[str]) -> list[tuple[int, int]]:
    """Per example, small integer ids of its two texts (equal texts get equal ids, in first-seen order)."""
    ids: dict[str, int] = {}
    return [(ids.setdefault(a, len(ids)), ids.setdefault(b, len(ids))) for a, b in zip(texts_a, texts_b)]


def shard_global_batch(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This rank's contiguous part of a global batch (sizes differ by at most one)."""
    size, extra = divmod(len(batch), world_size)
    start = rank * size + min(rank, extra)
    return list(batch[start : start + size + (1 if rank < extra else 0)])
