"""scripts/gpu_check.sh with tiny settings on CPU: every part runs and the summary holds every figure it parses."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def test_script_parses_and_documents_its_parts():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    usage = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for part in ("carry", "setup", "mfu", "pipeline", "train", "summary", "64 MiB"):
        assert part in usage
    wrong = subprocess.run(
        ["bash", str(SCRIPT), "--part", "nope"],
        capture_output=True,
        text=True,
        env={**os.environ, "OUT": "/tmp/gpu_check_nope"},
    )
    assert wrong.returncode == 2 and "unknown part nope" in wrong.stderr


@pytest.mark.slow  # the whole gpu-small pipeline, two benches and the summary with a tiny encoder: minutes on 2 cores
def test_tiny_run_on_cpu_produces_every_figure(corpus_dir, tmp_path):
    books = tmp_path / "books"
    picked = sorted((p for p in (corpus_dir / "books").rglob("*.txt") if p.stat().st_size < 400_000), key=str)[:10]
    for path in picked:
        target = books / path.relative_to(corpus_dir / "books")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
    pairs = tmp_path / "pairs.jsonl"
    lines = (corpus_dir / "validation_pairs.jsonl").read_text(encoding="utf-8").splitlines()
    pairs.write_text("\n".join(lines[:: len(lines) // 24][:24]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "DEVICE": "cpu",
        "BOOKS": str(books),
        "EVAL_PAIRS": str(pairs),
        "BUDGET_S": "900",
    }
    subprocess.run(
        ["bash", str(SCRIPT), "--tiny", "--part", "setup,pipeline,train,mfu,summary"], env=env, check=True, cwd=tmp_path
    )
    summary = json.loads((out / "summary.json").read_text())
    assert "status=0" in " ".join(summary["parts"]), summary["parts"]
    assert float(summary["mining"][0][2].replace(",", "")) > 0
    assert summary["stage_mining_per_s"] > 0 and summary["stage_teacher_per_s"] > 0  # bench_stages on the run's data
    assert summary["trainer_step_s_contrastive"] > 0 and summary["trainer_over_bench_step"] > 0
    assert 0 <= summary["auc_eval_pairs"] <= 1 and 0 <= summary["auc_test"] <= 1
    assert summary["mfu_tiny"][0]["median_step_s"] > 0
    assert summary["pipeline"]["complete"]
