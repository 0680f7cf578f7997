"""Smoke tests of the maintained benchmark scripts (scripts/README.md): each runs on tiny settings and prints the
figures it exists to print. bench_train.py and baseline_st.py have their own test modules."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _figure(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return float(match.group(1).replace(",", ""))


def test_bench_text_prints_throughput_and_splitter_agreement(corpus_dir, capsys):
    _load("bench_text").main(["--books", str(corpus_dir / "books"), "--limit-mb", "0.5", "--spacy-mb", "0.02"])
    out = capsys.readouterr().out
    assert _figure(r"total:\s+([\d.]+) MB/s per core", out) > 0
    assert 0.5 < _figure(r"\(snapped\): precision ([\d.]+)", out) <= 1.0
    assert 0.5 < _figure(r"\(snapped\): precision [\d.]+\s+recall ([\d.]+)", out) <= 1.0


def test_bench_prepare_runs_prepare_in_a_subprocess(corpus_dir, capsys):
    _load("bench_prepare").main(["--books", str(corpus_dir / "books"), "--limit", "6", "--workers", "1"])
    out = capsys.readouterr().out
    assert _figure(r"pairs \{'train': (\d+)", out) > 0
    assert _figure(r"peak RSS: main (\d+) MB", out) > 0
    assert "stage timings (s): " in out and "dedup" in out


def test_bench_infer_times_batch_against_single_calls(capsys):
    _load("bench_infer").main(
        [
            "--pairs",
            "6",
            "--repeats",
            "1",
            "--batch-size",
            "4",
            "--max-seq-length",
            "64",
            "--cohort",
            "8",
            "--no-minilm",
            "--precision",
            "no",
        ]
    )
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["tiny"]]
    assert {row[1] for row in rows} == {"contrastive", "two-stage"}
    for row in rows:
        assert int(row[3]) == 6 and float(row[4].rstrip("x")) > 0 and float(row[5]) > 0
