"""Progress bars and the one summary line every long stage ends with."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", disable: bool | None = None) -> Iterator[T]:
    """A tqdm bar on stderr; silent when stderr is not a terminal unless BOOKMATCH_PROGRESS=1."""
    import os

    if disable is None:
        disable = not (sys.stderr.isatty() or os.environ.get("BOOKMATCH_PROGRESS") == "1")
    return iter(tqdm(items, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True, file=sys.stderr))


def summary_line(what: str, count: int | float, seconds: float, unit: str) -> str:
    rate = count / seconds if seconds > 0 else float("inf")
    return f"{what}: {count:,} {unit} in {seconds:.1f} s ({rate:,.1f} {unit}/s)"


class Timer:
    """Wall-clock stage timings, kept in insertion order for manifests."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def stage(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.start = time.perf_counter()
                return self

            def __exit__(self, *exc):
                timer.timings[name] = round(timer.timings.get(name, 0.0) + time.perf_counter() - self.start, 3)
                return False

        return _Stage()
