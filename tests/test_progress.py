"""Progress a person can follow in a remote log (`sky jobs logs`): plain lines every N seconds without a terminal."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bookmatch.progress import LineProgress, progress_bar, progress_mode, progress_text, summary_line

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_every_interval_with_count_rate_and_eta() -> None:
    clock, out = FakeClock(), io.StringIO()
    counter = LineProgress(total=100, desc="books", unit="book", interval=10.0, stream=out, clock=clock)
    for _ in range(100):
        clock.now += 0.5  # 2 books/s: a line every 20 items
        counter.update(1)
    counter.close()
    lines = out.getvalue().splitlines()
    # 50 s of work at one line per 10 s; the last one already shows the final count, so close() adds none
    assert len(lines) == 5, lines
    assert lines[0] == "books: 20/100 book (20%), 2.0 book/s, 0:10 elapsed, ETA 0:40"
    assert lines[-1] == "books: 100/100 book (100%), 2.0 book/s, 0:50 elapsed"
    assert "\r" not in out.getvalue()


def test_resumed_counter_rates_only_this_runs_work() -> None:
    clock, out = FakeClock(), io.StringIO()
    counter = LineProgress(total=1000, desc="train", unit="step", initial=900, interval=5.0, stream=out, clock=clock)
    counter.set_postfix(loss="0.1234")
    for _ in range(10):
        clock.now += 1.0
        counter.update(1)
    clock.now += 1.0
    counter.update(1)
    counter.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "train: 905/1,000 step (90%), 1.0 step/s, 0:05 elapsed, ETA 1:35 [loss=0.1234]"
    # closing between two lines prints the count the stage ended on
    assert lines[-1] == "train: 911/1,000 step (91%), 1.0 step/s, 0:11 elapsed, ETA 1:29 [loss=0.1234]"


def test_unknown_total_and_nothing_done() -> None:
    assert progress_text("fetch", 7, None, 2.0, "book") == "fetch: 7 book, 3.5 book/s, 0:02 elapsed"
    out, clock = io.StringIO(), FakeClock()
    LineProgress(total=5, desc="x", stream=out, interval=1.0).close()
    short = LineProgress(total=5, desc="x", stream=out, interval=1.0, clock=clock)
    for _ in range(5):
        short.update(1)
    short.close()
    assert out.getvalue() == "", "a stage shorter than the interval prints no progress line (its summary says enough)"


def test_mode_follows_the_terminal_and_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("BOOKMATCH_PROGRESS", raising=False)
    assert progress_mode(io.StringIO()) == "lines"
    assert progress_mode(FakeTty()) == "bar"
    for value, mode in (("1", "bar"), ("bar", "bar"), ("lines", "lines"), ("0", "off")):
        monkeypatch.setenv("BOOKMATCH_PROGRESS", value)
        assert progress_mode(io.StringIO()) == mode
        assert progress_mode(FakeTty()) == mode
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.delenv("BOOKMATCH_PROGRESS")
    assert isinstance(progress_bar(10, "x"), LineProgress)
    assert not isinstance(progress_bar(10, "x", disable=True), LineProgress)


def test_a_piped_stage_prints_progress_lines_and_its_summary_unchanged() -> None:
    """What `sky jobs logs` shows: stderr is a pipe, so lines (not a silent bar), then the stage's own summary."""
    code = (
        "import time\n"
        "from bookmatch.progress import progress, summary_line\n"
        "for _ in progress(range(30), desc='books', unit='book'):\n"
        "    time.sleep(0.02)\n"
        "print(summary_line('scanned books', 30, 0.6, 'books'), flush=True)\n"
    )
    env = {"BOOKMATCH_PROGRESS_SECONDS": "0.1", "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("books: ")]
    assert len(lines) >= 2, proc.stderr
    assert all(
        re.fullmatch(r"books: \d+/30 book \(\d+%\), [\d.]+ book/s, \d+:\d\d elapsed(, ETA \d+:\d\d)?", line)
        for line in lines
    )
    assert lines[-1].startswith("books: 30/30 book (100%)")
    assert "\r" not in proc.stderr
    assert proc.stdout.strip() == "scanned books: 30 books in 0.6 s (50.0 books/s)"


def test_summary_line_format_is_unchanged() -> None:
    """Scripts and tests parse these lines: the format is fixed."""
    assert summary_line("imported", 2, 4.0, "books") == "imported: 2 books in 4.0 s (0.5 books/s)"


@pytest.mark.parametrize("disable", [False, True])
def test_the_trainer_bar_prints_lines_without_a_terminal(monkeypatch, disable: bool) -> None:
    from bookmatch.training.trainer import _progress_bar

    monkeypatch.delenv("BOOKMATCH_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = _progress_bar(10, 3, disable=disable)
    assert isinstance(bar, LineProgress) != disable
    if not disable:
        assert (bar.n, bar.total, bar.desc) == (3, 10, "train")
