"""Smoke tests of scripts/bench_train.py on CPU with a tiny random RoBERTa (both paths, JSON output; fixed and real lengths)."""

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
    # 6 * N * tokens + 12 * layers * seq^2 * hidden * seqs, for 3 sequences of 16 tokens
    assert bench.sequence_flops(1000, 2, 8, [16] * 3) == 6 * 1000 * 48 + 12 * 2 * 16**2 * 8 * 3
    encoder = bench.build_random_roberta("tiny", 64, seed=0)
    total, non_embedding = bench.count_params(encoder)
    hidden, layers, _, intermediate, _ = bench.SIZES["tiny"]
    per_layer = 4 * (hidden * hidden + hidden) + 2 * (hidden * intermediate) + intermediate + hidden + 2 * 2 * hidden
    assert non_embedding == layers * per_layer + 2 * hidden  # + the embedding LayerNorm
    assert total > non_embedding


def test_bench_runs_both_paths_on_cpu(tmp_path, capsys):
    bench = _load_script()
    out = tmp_path / "bench.json"
    argv = [
        "--device",
        "cpu",
        "--size",
        "tiny",
        "--seq-len",
        "64",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--batch-pairs",
        "4",
    ]
    assert bench.main(argv + ["--json-out", str(out)]) == 0
    payload = json.loads(out.read_text())
    results = payload["results"]
    assert [r["path"] for r in results] == ["ours", "st"]
    for r in results:
        assert r["steps_timed"] == 3 and r["seqs_per_step"] == 8 and r["seq_len"] == 64
        assert r["median_step_s"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["seqs_per_s"] * 64)
        assert r["real_tokens_per_s"] == r["tokens_per_s"] and r["pad_fraction"] == 0  # fixed length: no padding
        assert r["mfu"] == pytest.approx(r["achieved_tflops"] / payload["meta"]["peak_tflops"])
    assert results[0]["params"] == results[1]["params"]
    assert "ours" in capsys.readouterr().out


def _pairs_dataset(path: Path) -> Path:
    """256 pairs of texts of 1-40 words, saved as a prepared dataset."""
    import random

    from datasets import Dataset, DatasetDict

    rng = random.Random(0)
    words = "the sea was calm and the ship sailed on while the captain read his letters by the lamp".split()

    def text():
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) + "."

    books = [f"author{i % 5}/book{i % 11}" for i in range(256)]
    rows = {
        "text1": [text() for _ in range(256)],
        "text2": [text() for _ in range(256)],
        "label": [i % 2 for i in range(256)],
        "book1": books,
        "book2": [b if i % 2 else f"author{i % 3}/other{i}" for i, b in enumerate(books)],
    }
    DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(str(path))
    return path


def test_real_length_batches_pad_as_each_path_trains(tmp_path, tiny_encoder_dir):
    import torch
    from transformers import AutoTokenizer

    bench = _load_script()
    data = _pairs_dataset(tmp_path / "data")
    args = bench.parse_args(
        [
            "--device",
            "cpu",
            "--size",
            "tiny",
            "--seq-len",
            "128",
            "--batch-pairs",
            "8",
            "--steps",
            "9",
            "--warmup",
            "1",
            "--lengths-from",
            str(data),
            "--tokenizer",
            str(tiny_encoder_dir),
        ]
    )
    batches = bench.real_length_batches(args, vocab=1000, device=torch.device("cpu"))

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_encoder_dir))
    from datasets import load_from_disk

    split = load_from_disk(str(data))["train"]
    lengths = {
        side: sorted(min(len(ids), 128) for ids in tokenizer(list(split[side]))["input_ids"])
        for side in ("text1", "text2")
    }
    assert lengths["text1"][-1] - lengths["text1"][0] > 20  # the premise: lengths vary

    pad = {}
    for path, path_batches in batches.items():
        assert len(path_batches) == 10
        positions = real = 0
        for batch in path_batches:
            widths = []
            for side in ("text1", "text2"):
                ids, mask = batch[side]["input_ids"], batch[side]["attention_mask"]
                assert torch.equal(ids == 1, mask == 0)  # padding id exactly where the mask is 0
                assert (ids[mask == 1] >= 3).all()
                side_lengths = mask.sum(1)
                assert all(int(n) in lengths[side] for n in side_lengths)  # real texts' token counts
                widths.append(ids.shape[1])
                if path == "st":
                    assert ids.shape[1] == int(side_lengths.max())  # each column padded to its own longest
                positions += ids.numel()
                real += int(mask.sum())
            longest = max(int(batch[s]["attention_mask"].sum(1).max()) for s in ("text1", "text2"))
            if path == "ours":
                assert widths == [longest, longest]  # both sides stacked, padded to one width
            assert batch["pair_labels"].shape == (8,) and batch["book_labels"].shape == (16,)
        pad[path] = 1 - real / positions
    assert pad["ours"] < pad["st"]  # length-grouped batches pad less than random ones


def test_bench_with_real_lengths_reports_real_tokens(tmp_path, tiny_encoder_dir):
    bench = _load_script()
    data = _pairs_dataset(tmp_path / "data")
    out = tmp_path / "bench.json"
    argv = [
        "--device",
        "cpu",
        "--size",
        "tiny",
        "--seq-len",
        "128",
        "--steps",
        "9",
        "--warmup",
        "1",
        "--batch-pairs",
        "8",
        "--lengths-from",
        str(data),
        "--tokenizer",
        str(tiny_encoder_dir),
        "--json-out",
        str(out),
    ]
    assert bench.main(argv) == 0
    payload = json.loads(out.read_text())
    assert payload["meta"]["step_statistic"] == "mean"
    ours, st = payload["results"]
    for r in (ours, st):
        assert 0 < r["real_tokens_per_s"] < r["tokens_per_s"]
        assert r["real_tokens_per_s"] == pytest.approx(r["tokens_per_s"] * (1 - r["pad_fraction"]))
        assert r["pairs_per_s"] == pytest.approx(r["seqs_per_s"] / 2)
    assert ours["pad_fraction"] < st["pad_fraction"]
