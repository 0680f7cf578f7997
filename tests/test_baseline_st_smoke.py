"""Smoke test of scripts/baseline_st.py (the stock sentence-transformers recipe) with a tiny random encoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_training import _synthetic_books, make_pair_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "baseline_st.py"


def test_baseline_trains_and_scores_every_set(tiny_encoder_dir, tmp_path):
    data = make_pair_dataset(tmp_path / "data", _synthetic_books(9, 12, seed=1), n_train=64, n_val=40)
    pairs = tmp_path / "pairs.jsonl"
    from datasets import load_from_disk

    rows = load_from_disk(str(data))["test"].to_list()[:20]
    pairs.write_text(
        "".join(
            json.dumps(
                {
                    "text1": r["text1"],
                    "text2": r["text2"],
                    "label": r["label"],
                    "kind": "positive" if r["label"] else "neg_other",
                }
            )
            + "\n"
            for r in rows
        ),
        encoding="utf-8",
    )
    out = tmp_path / "baseline.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--data",
        str(data),
        "--pairs",
        str(pairs),
        "--model",
        str(tiny_encoder_dir),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--lr",
        "1e-2",
        "--train-seq-length",
        "32",
        "--eval-seq-length",
        "32",
        "--test-pairs",
        "0",
        "--precision",
        "no",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "trainer"),
        "--json-out",
        str(out),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    zero, tuned = result["auc"]["zero-shot"], result["auc"]["fine-tuned"]
    expected = {"validation@32", "validation/random@32", "test@32", "test/random@32", "pairs@32", "pairs/neg_other@32"}
    assert set(zero) == set(tuned) == expected
    assert all(0.0 <= v <= 1.0 for v in [*zero.values(), *tuned.values()])
    assert zero != tuned  # three steps at lr 1e-2 moved the encoder
    assert result["train_seconds"] > 0
    assert "fine-tuned" in run.stdout
