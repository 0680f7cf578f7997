"""Dynamic batching: requests that arrive together are scored together, in one model call on one thread.

Each request puts its pairs on a queue and awaits a future. One worker task takes the first waiting request,
then keeps taking more for up to `max_wait_ms` (or until `max_batch_pairs` pairs), and scores them all in one
`Matcher.score_many` call per mode. That call encodes a text shared by several requests once (the scorer
dedups within a call and keeps an LRU cache across calls), and the encoder sees full batches instead of one
pair at a time. Model calls run on a single worker thread, so the event loop keeps accepting requests and
the scorer's caches are never touched from two threads at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass
class _Job:
    mode: str
    pairs: list[tuple[str, str]]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Queue pairs from many requests; `score_batch(mode, pairs)` (blocking, on the worker thread) scores them.

    `on_batch(n_pairs, n_requests)`: called after each model call, for metrics.
    """

    def __init__(
        self,
        score_batch: Callable[[str, list[tuple[str, str]]], list],
        max_batch_pairs: int = 256,
        max_wait_ms: float = 5.0,
        executor: ThreadPoolExecutor | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self.score_batch = score_batch
        self.max_batch_pairs = max_batch_pairs
        self.max_wait = max_wait_ms / 1000.0
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="bookmatch-model")
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Job | None] | None = None
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish every queued request, then stop the worker."""
        if self._worker is None:
            return
        await self._queue.put(None)
        await self._worker
        self._worker = None

    async def submit(self, mode: str, pairs: Sequence[tuple[str, str]]) -> list:
        if self._worker is None:
            raise RuntimeError("the batcher is not running")
        job = _Job(mode, list(pairs), asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return await job.future

    async def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` plus the jobs that arrive within the wait window; True when the stop marker was seen."""
        jobs, pairs = [first], len(first.pairs)
        deadline = time.perf_counter() + self.max_wait
        while pairs < self.max_batch_pairs:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if job is None:
                return jobs, True
            jobs.append(job)
            pairs += len(job.pairs)
        return jobs, False

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while True:
            if stopping and self._queue.empty():
                return
            first = await self._queue.get()
            if first is None:
                stopping = True
                continue
            jobs, saw_stop = await self._collect(first)
            stopping = stopping or saw_stop
            for mode in dict.fromkeys(job.mode for job in jobs):
                group = [job for job in jobs if job.mode == mode]
                flat = [pair for job in group for pair in job.pairs]
                try:
                    results = await loop.run_in_executor(self.executor, self.score_batch, mode, flat)
                except Exception as err:  # one bad batch fails its requests, never the worker
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(err)
                    continue
                if self.on_batch is not None:
                    self.on_batch(len(flat), len(group))
                start = 0
                for job in group:
                    if not job.future.done():
                        job.future.set_result(results[start : start + len(job.pairs)])
                    start += len(job.pairs)
