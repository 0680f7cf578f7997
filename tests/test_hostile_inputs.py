"""Hostile and broken inputs outside ingest: odd file names in a books folder, leftovers of killed runs, pairs
files with bytes that are not UTF-8 or read from stdin (issue 19). The hostile mirror tests are in test_ingest.py."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bookmatch.inference.pairs_file import read_pairs_jsonl
from bookmatch.leftovers import sweep_dead
from bookmatch.text.names import unicode_name

SMALL = [
    "Emshwiller, Ed/Derelict.txt",
    "Emshwiller, Ed/Laboratory.txt",
    "Emshwiller, Ed/Watchbird.txt",
    "Orban, Paul/A Gift For Terra.txt",
    "Orban, Paul/The Barbarians.txt",
    "Orban, Paul/Brainchild.txt",
]


def _dead_pid() -> int:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(child.stdout)


def test_unicode_name_spells_undecodable_bytes_and_keeps_valid_names():
    assert unicode_name("Doré/Été.txt") == "Doré/Été.txt"
    raw = os.fsdecode(b"livre \xff\xe9.txt")
    assert unicode_name(raw) == "livre \\xff\\xe9.txt"
    assert unicode_name("a\ud800b").encode("utf-8")  # a lone surrogate (not an escaped byte) comes out valid too


def test_sweep_removes_only_what_dead_processes_left(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    (tmp_path / f".x.tmp-{dead}").write_bytes(b"")
    (tmp_path / f".x.tmp-{alive}").write_bytes(b"")
    (tmp_path / f".x.tmp-{dead}-dir").mkdir()
    (tmp_path / "x").write_bytes(b"keep")
    removed = sweep_dead(tmp_path, r"\.x\.tmp-(?P<pid>\d+)(?:-dir)?")
    assert sorted(p.name for p in removed) == sorted([f".x.tmp-{dead}", f".x.tmp-{dead}-dir"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".x.tmp-{alive}", "x"])


def test_prepare_survives_odd_file_names_and_sweeps_killed_runs_leftovers(corpus_dir, tmp_path):
    """Names that are not UTF-8, near the 255-byte limit, or hold line breaks and shell characters: each book is
    used (its name spelled with \\xNN escapes) and the manifest is valid JSON; a `.out.texts-*` folder left by a
    killed run is removed."""
    from bookmatch.prepare import PrepareConfig, run_prepare

    books = tmp_path / "books"
    for name in SMALL:
        (books / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus_dir / "books" / name, books / name)
    odd_folder = os.path.join(os.fsencode(books), b"Orban, Paul \xe9")
    os.rename(os.fsencode(books / "Orban, Paul"), odd_folder)
    os.rename(os.path.join(odd_folder, b"Brainchild.txt"), os.path.join(odd_folder, b"Brain\xffchild.txt"))
    os.rename(books / "Emshwiller, Ed" / "Derelict.txt", books / "Emshwiller, Ed" / ("D" * 240 + ".txt"))
    os.rename(books / "Emshwiller, Ed" / "Watchbird.txt", books / "Emshwiller, Ed" / "Watch\nbird $(x) `y` *.txt")
    out = tmp_path / "data"
    left = [tmp_path / f".data.texts-{_dead_pid()}-abcd1234", tmp_path / ".data.texts-k3l2j4h5"]
    for folder in left:
        folder.mkdir()
        (folder / "pairs.arrow").write_bytes(b"\0" * 10)

    config = PrepareConfig(
        books=str(books),
        out=str(out),
        hard_negatives=False,
        max_chunks_per_book=20,
        n_negative_per_book=2,
        workers=1,
        seed=3,
    )
    run_prepare(config)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    used = {p for split in manifest["split_books"].values() for p in split}
    assert manifest["books_used"] == len(SMALL), manifest["skipped"]
    assert any("brain_xffchild" in book for book in used), used
    removed = manifest["text_removed"]
    assert removed["chars"]["header"] > 0 and removed["chars"]["footer"] > 0 and removed["books_holding_several"] == []
    assert not any(p.exists() for p in left)
    assert not list(tmp_path.glob(".data.*")), list(tmp_path.iterdir())


def test_pairs_reader_warns_on_bytes_that_are_not_utf8(tmp_path, caplog):
    source = tmp_path / "pairs.jsonl"
    good = json.dumps({"text1": "one passage", "text2": "another"}).encode()
    bad = b'{"text1": "caf\xe9 au lait", "text2": "x"}'
    source.write_bytes(b"\xef\xbb\xbf" + good + b"\r\n" + bad + b"\n\n" + good + b"\n")
    warnings: list[str] = []
    rows = list(read_pairs_jsonl(source, warnings=warnings))
    assert [n for n, _ in rows] == [1, 2, 4]
    assert rows[1][1]["text1"] == "caf\ufffd au lait"
    assert warnings == [f"{source} line 2 is not valid UTF-8: undecodable bytes were replaced by U+FFFD"]
    with caplog.at_level(logging.WARNING, logger="bookmatch.inference.pairs_file"):
        list(read_pairs_jsonl(source))
    assert "line 2 is not valid UTF-8" in caplog.text


def test_pairs_reader_takes_stdin_and_a_pipe(tmp_path, monkeypatch):
    import io

    line = json.dumps({"text1": "a", "text2": "b", "id": 7}) + "\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(line.encode())))
    assert [row["id"] for _, row in read_pairs_jsonl("-")] == [7]
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    import threading

    writer = threading.Thread(target=lambda: fifo.write_text(line * 2, encoding="utf-8"))
    writer.start()
    assert [n for n, _ in read_pairs_jsonl(fifo)] == [1, 2]
    writer.join()
    with pytest.raises(Exception, match="is a folder"):
        list(read_pairs_jsonl(tmp_path))


def test_batch_cli_reads_stdin_dash_and_sweeps_dead_runs_temp_output(models, tmp_path):
    from click.testing import CliRunner

    from bookmatch.cli import main
    from bookmatch.inference.pairs_file import check_pairs_input

    check_pairs_input("/dev/stdin")  # a character device or pipe, not a regular file: accepted
    out = tmp_path / "scores.jsonl"
    stale = tmp_path / f".scores.jsonl.tmp-{_dead_pid()}"
    stale.write_bytes(b"")
    lines = "".join(json.dumps({"text1": f"passage number {i}", "text2": "another passage"}) + "\n" for i in range(3))
    result = CliRunner().invoke(
        main,
        [
            "infer",
            "contrastive",
            "--model",
            str(models["bi"]),
            "--device",
            "cpu",
            "--precision",
            "no",
            "--input",
            "-",
            "--output",
            str(out),
        ],
        input=lines,
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["line"] for line in out.read_text(encoding="utf-8").splitlines()] == [1, 2, 3]
    assert not stale.exists()


# A fresh Python process imports torch: ~50 s on the 2 loaded CI cores; the fast tests cover its parts.
@pytest.mark.slow
def test_batch_scoring_reads_dev_stdin_and_sweeps_dead_runs_temp_output(models, tmp_path):
    """`--input /dev/stdin` in a real process (not a test runner's fake stdin); a 0-byte temp output a killed run
    left beside the output is removed."""
    out = tmp_path / "scores.jsonl"
    stale = tmp_path / f".scores.jsonl.tmp-{_dead_pid()}"
    stale.write_bytes(b"")
    lines = "".join(json.dumps({"text1": f"passage number {i}", "text2": "another passage"}) + "\n" for i in range(3))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bookmatch",
            "infer",
            "contrastive",
            "--model",
            str(models["bi"]),
            "--device",
            "cpu",
            "--precision",
            "no",
            "--input",
            "/dev/stdin",
            "--output",
            str(out),
        ],
        input=lines.encode() + b'{"text1": "\xff\xfe", "text2": "z"}\n',
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert [json.loads(line)["line"] for line in out.read_text(encoding="utf-8").splitlines()] == [1, 2, 3, 4]
    assert b"stdin line 4 is not valid UTF-8" in result.stderr
    assert not stale.exists()


def test_a_pairs_line_over_the_limit_is_a_bad_line_read_past_in_pieces(tmp_path, monkeypatch):
    from bookmatch.errors import InputError
    from bookmatch.inference import pairs_file

    monkeypatch.setattr(pairs_file, "MAX_LINE_CHARS", 100)
    good = json.dumps({"text1": "a", "text2": "b"})
    source = tmp_path / "pairs.jsonl"
    long_line = json.dumps({"text1": "x" * 1000, "text2": "y"})
    source.write_text(good + "\n" + long_line + "\n" + good + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 2: longer than 100 characters"):
        list(read_pairs_jsonl(source))
    bad: list[str] = []
    assert [n for n, _ in read_pairs_jsonl(source, skip_bad_lines=True, bad_lines=bad)] == [1, 3]
    assert len(bad) == 1 and "line 2" in bad[0]


def test_a_book_file_over_the_size_limit_is_skipped_with_a_reason(tmp_path, monkeypatch):
    from bookmatch.text import standardize

    monkeypatch.setattr(standardize, "MAX_BOOK_FILE_BYTES", 1000)
    big = tmp_path / "big.txt"
    big.write_text("word " * 1000, encoding="utf-8")
    with pytest.raises(standardize.SkipBook, match="over the 1,000-byte limit"):
        standardize.load_book(big)
