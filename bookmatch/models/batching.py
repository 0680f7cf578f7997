"""Inference batching shared by the miner and the teacher: length-sorted batches, cheap padding, prefetch, rank slices.

An encoder's cost grows with the padded length of its batch (attention with its square), so texts run longest
first in batches of similar length; a batch holds at most `max_tokens` padded positions, so short texts go in
larger batches. Padding is a numpy fill (the tokenizer's `pad` walks Python lists), and the next batch is
tokenized and padded on a background thread while the device runs the current one (the Rust tokenizer
releases the GIL).
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


def length_sorted_batches(lengths: Sequence[int], max_tokens: int, max_batch: int) -> list[np.ndarray]:
    """Index batches, longest texts first; each batch's rows x longest length stays within `max_tokens`
    (a single text longer than that still gets a batch of its own) and holds at most `max_batch` rows."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, min(max_batch, max_tokens // longest))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def pad_ids(ids: Sequence[Sequence[int]], pad_id: int, multiple_of: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64 arrays, right-padded to the longest row (rounded up to `multiple_of`)."""
    longest = max((len(row) for row in ids), default=0)
    longest = -(-longest // multiple_of) * multiple_of
    input_ids = np.full((len(ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), longest), dtype=np.int64)
    for row, values in enumerate(ids):
        input_ids[row, : len(values)] = values
        mask[row, : len(values)] = 1
    return input_ids, mask


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `items` produced on a background thread, up to `depth` ahead; its exceptions re-raise here."""
    buffer: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put((True, item))
            buffer.put((True, done))
        except BaseException as err:  # handed to the consumer, which raises it in its own thread
            buffer.put((False, err))

    worker = threading.Thread(target=produce, name="bookmatch-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = buffer.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full buffer
            try:
                buffer.get_nowait()
            except queue.Empty:
                worker.join(0.01)


def ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int, depth: int) -> Iterator[R]:
    """`function(item)` for each item on `workers` threads, yielded in input order, with at most `depth` items
    submitted ahead of the consumer. For work that releases the GIL (the Rust tokenizer): N threads tokenize N
    blocks at once where one thread would starve the device. An exception re-raises here, in order."""
    pending: collections.deque = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix="bookmatch-map") as pool:
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) > max(1, depth):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # a consumer that stops early does not wait for the rest
                future.cancel()


def grouped_map(function: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """`function(item)` for `workers` items at a time on `workers` threads, yielded in input order; nothing runs
    while the consumer holds a result. For a CPU device, whose forward pass takes every core: tokenizer threads
    beside it would only contend with it (measured: slower than taking turns)."""
    workers = max(1, workers)
    iterator = iter(items)
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bookmatch-map") as pool:
        while group := list(itertools.islice(iterator, workers)):
            yield from pool.map(function, group)


def tokenize_threads() -> int:
    """Threads for tokenizing: this process's share of the machine's cores (`LOCAL_WORLD_SIZE` processes per
    machine under a launcher), at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))


def thread_local_copy(original: T) -> Callable[[], T]:
    """A function that returns the calling thread's own deep copy of `original`, made on its first call there.
    Fast tokenizers keep mutable truncation and padding settings, so threads must not share one."""
    local = threading.local()

    def mine() -> T:
        if not hasattr(local, "copy"):
            local.copy = copy.deepcopy(original)
        return local.copy

    return mine


def rank_slice(count: int, rank: int, world_size: int) -> range:
    """This rank's contiguous share of `count` items (sizes differ by at most one; rank order = item order)."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group, or (0, 1) when there is none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(mine: np.ndarray, world_size: int) -> np.ndarray:
    """Concatenate every rank's rows in rank order (all_gather_object: any backend, any row counts)."""
    if world_size == 1:
        return mine
    import torch.distributed as dist

    parts: list = [None] * world_size
    dist.all_gather_object(parts, mine)
    return np.concatenate(parts, axis=0)


def model_attention_mask(model, mask):
    """The attention mask to hand a Hugging Face encoder for a padded batch.

    Under SDPA a (batch, 1, 1, length) boolean mask broadcasts over heads and queries as it is, where the 2-D
    mask makes transformers build the full (batch, 1, length, length) one first (a quarter of a tiny encoder's
    CPU time at 512 tokens); a batch without padding keeps the 2-D mask, which transformers then drops for
    the mask-free kernel. Other attention implementations get the 2-D mask."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa" or bool(mask.all()):
        return mask
    return mask.bool()[:, None, None, :]


def run_batches(
    batches: Sequence[np.ndarray],
    make_inputs: Callable[[np.ndarray], dict],
    forward: Callable[[dict], np.ndarray],
    out: np.ndarray,
    depth: int = 2,
    counter=None,
) -> np.ndarray:
    """out[batch] = forward(make_inputs(batch)) for every batch; inputs are built `depth` batches ahead.

    `counter` (a progress counter, `bookmatch.progress.progress_bar`) is advanced by each batch's rows."""
    for index, inputs in prefetch(((index, make_inputs(index)) for index in batches), depth):
        out[index] = forward(inputs)
        if counter is not None:
            counter.update(len(index))
    return out
