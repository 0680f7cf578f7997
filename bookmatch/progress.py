"""Progress for long stages, and the one summary line every long stage ends with.

On a terminal a stage shows a tqdm bar. Where stderr is not a terminal (a log file, `sky jobs logs`, a pipe) a
bar would either stay silent or fill the log with carriage returns, so the stage prints one plain line every
`BOOKMATCH_PROGRESS_SECONDS` (30 by default) instead: what, how many of how many, the rate and the time left.

`BOOKMATCH_PROGRESS`: unset = the choice above; `bar` (or `1`) = a tqdm bar even without a terminal; `lines` =
plain lines even on a terminal; `0` = nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

PROGRESS_ENV = "BOOKMATCH_PROGRESS"
SECONDS_ENV = "BOOKMATCH_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


def progress_mode(stream: TextIO | None = None) -> str:
    """'bar', 'lines' or 'off' for `stream` (stderr by default), from the environment and whether it is a tty."""
    stream = stream if stream is not None else sys.stderr
    wanted = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if wanted in ("0", "off", "none"):
        return "off"
    if wanted in ("1", "bar"):
        return "bar"
    if wanted == "lines":
        return "lines"
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def progress_interval() -> float:
    """Seconds between two progress lines (BOOKMATCH_PROGRESS_SECONDS; a bad value falls back to 30)."""
    try:
        seconds = float(os.environ.get(SECONDS_ENV, DEFAULT_SECONDS))
    except ValueError:
        return DEFAULT_SECONDS
    return seconds if seconds > 0 else DEFAULT_SECONDS


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_text(
    desc: str, done: int, total: int | None, elapsed: float, unit: str, start: int = 0, postfix: str = ""
) -> str:
    """One progress line: `desc: 120/400 book (30%), 4.0 book/s, 0:30 elapsed, ETA 1:10`.

    The rate counts only what this run did (`done - start`): a resumed run does not claim its predecessor's work.
    """
    rate = (done - start) / elapsed if elapsed > 0 else 0.0
    if total:
        head = f"{desc}: {done:,}/{total:,} {unit} ({100.0 * done / total:.0f}%)"
    else:
        head = f"{desc}: {done:,} {unit}"
    parts = [head, f"{rate:,.1f} {unit}/s", f"{_duration(elapsed)} elapsed"]
    if total and rate > 0 and done < total:
        parts.append(f"ETA {_duration((total - done) / rate)}")
    text = ", ".join(parts)
    return f"{text} [{postfix}]" if postfix else text


class LineProgress:
    """A tqdm-like counter (update, set_postfix, close) that prints a plain line every `interval` seconds."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        interval: float | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start = initial
        self.interval = progress_interval() if interval is None else interval
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.started = self.last_print = clock()
        self.postfix = ""
        self.printed_n: int | None = None  # the count on the last line printed
        self.closed = False

    def _emit(self) -> None:
        now = self.clock()
        self.last_print, self.printed_n = now, self.n
        line = progress_text(self.desc, self.n, self.total, now - self.started, self.unit, self.start, self.postfix)
        print(line, file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last_print >= self.interval:
            self._emit()

    def set_postfix(self, **values) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        """A stage that printed progress ends on a line with its final count; a short one stays quiet (its
        summary line says enough)."""
        if not self.closed and self.printed_n is not None and self.printed_n != self.n:
            self._emit()
        self.closed = True


class _Silent:
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, unit: str = "it", initial: int = 0, disable: bool = False):
    """A counter with update/set_postfix/close: a tqdm bar on a terminal, plain lines elsewhere (see module doc)."""
    mode = "off" if disable else progress_mode()
    if mode == "off":
        return _Silent()
    if mode == "lines":
        return LineProgress(total, desc, unit, initial=initial)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)


def progress(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", disable: bool | None = None
) -> Iterator[T]:
    """Iterate `items`, reporting progress on stderr (a bar or plain lines, see module doc); `disable=True`: quiet."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    counter = progress_bar(total, desc, unit, disable=bool(disable))
    try:
        for item in items:
            yield item
            counter.update(1)
    finally:
        counter.close()


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
