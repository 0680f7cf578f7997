"""Smoke test of scripts/bench_train.py on CPU with a tiny random RoBERTa (both paths, JSON output)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_train.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_flop_estimate_follows_nanogpt_formula():
    bench = _load_script()
    # 6 * N * tokens + 12 * layers * seq^2 * hidden * seqs
    assert bench.step_flops(1000, 2, 8, 3, 16) == 6 * 1000 * 48 + 12 * 2 * 16**2 * 8 * 3
    encoder = bench.build_random_roberta("tiny", 64, seed=0)
    total, non_embedding = bench.count_params(encoder)
    hidden, layers, _, intermediate, _ = bench.SIZES["tiny"]
    per_layer = 4 * (hidden * hidden + hidden) + 2 * (hidden * intermediate) + intermediate + hidden + 2 * 2 * hidden
    assert non_embedding == layers * per_layer + 2 * hidden  # + the embedding LayerNorm
    assert total > non_embedding


def test_bench_runs_both_paths_on_cpu(tmp_path, capsys):
    bench = _load_script()
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--size", "tiny", "--seq-len", "64", "--steps", "3", "--warmup", "1", "--batch-pairs", "4"]
    assert bench.main(argv + ["--json-out", str(out)]) == 0
    payload = json.loads(out.read_text())
    results = payload["results"]
    assert [r["path"] for r in results] == ["ours", "st"]
    for r in results:
        assert r["steps_timed"] == 3 and r["seqs_per_step"] == 8 and r["seq_len"] == 64
        assert r["median_step_s"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["seqs_per_s"] * 64)
        assert r["mfu"] == pytest.approx(r["achieved_tflops"] / payload["meta"]["peak_tflops"])
    assert results[0]["params"] == results[1]["params"]
    assert "ours" in capsys.readouterr().out
