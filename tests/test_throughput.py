"""The inference fast paths (mining embeddings, teacher logits) against the plain ones, on the tiny encoder."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_TEXTS

REPO = Path(__file__).resolve().parents[1]


def _books(count: int = 7) -> list[list[str]]:
    """Chunk lists of varied lengths (one book empty), so batches mix books and pad."""
    rng = np.random.default_rng(0)
    books = []
    for book in range(count):
        chunks = [
            " ".join(rng.choice(SAMPLE_TEXTS, size=int(rng.integers(1, 12)))) for _ in range(int(rng.integers(2, 9)))
        ]
        books.append([] if book == 2 else chunks)
    return books


def test_length_sorted_batches_cover_every_index_once_within_the_budget():
    from bookmatch.models.batching import length_sorted_batches

    lengths = [5, 300, 17, 512, 64, 64, 1, 200, 9]
    batches = length_sorted_batches(lengths, max_tokens=600, max_batch=4)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert all(len(b) <= 4 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 600) for b in batches)
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)  # longest first


def test_rank_slices_partition_in_order_and_prefetch_reraises():
    from bookmatch.models.batching import prefetch, rank_slice

    for count in (0, 1, 7, 10):
        parts = [list(rank_slice(count, rank, 3)) for rank in range(3)]
        assert sum(parts, []) == list(range(count)) and max(map(len, parts)) - min(map(len, parts)) <= 1

    def broken():
        yield 1
        raise ValueError("from the producer")

    with pytest.raises(ValueError, match="from the producer"):
        list(prefetch(broken()))
    assert list(prefetch(iter(range(50)), depth=2)) == list(range(50))


def test_ordered_map_keeps_input_order_bounds_its_lead_and_reraises():
    import threading
    import time

    from bookmatch.models.batching import ordered_map

    started, lock = [], threading.Lock()

    def slow_square(x: int) -> int:
        with lock:
            started.append(x)
        time.sleep(0.002 * (7 - x % 7))  # later items often finish first
        return x * x

    assert list(ordered_map(slow_square, range(30), workers=4, depth=5)) == [x * x for x in range(30)]
    started.clear()
    results = ordered_map(slow_square, iter(range(100)), workers=2, depth=3)
    assert next(results) == 0
    time.sleep(0.05)
    assert len(started) <= 5  # the first, plus at most depth + 1 submitted ahead
    results.close()

    def fails_on_three(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    seen = []
    with pytest.raises(ValueError, match="three"):
        for value in ordered_map(fails_on_three, range(10), workers=3, depth=4):
            seen.append(value)
    assert seen == [0, 1, 2]


def test_grouped_map_keeps_order_runs_a_group_at_once_and_nothing_while_the_consumer_works():
    import threading
    import time

    from bookmatch.models.batching import grouped_map

    started, running, most, lock = [], [0], [0], threading.Lock()

    def slow_square(x: int) -> int:
        with lock:
            started.append(x)
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002 * (7 - x % 7))
        with lock:
            running[0] -= 1
        return x * x

    assert list(grouped_map(slow_square, range(30), workers=3)) == [x * x for x in range(30)]
    assert most[0] == 3  # a group's items run side by side
    started.clear()
    results = grouped_map(slow_square, iter(range(100)), workers=3)
    assert next(results) == 0
    time.sleep(0.05)
    assert sorted(started) == [0, 1, 2]  # the consumer holds a result: the next group waits
    results.close()
    with pytest.raises(ValueError, match="three"):
        list(grouped_map(lambda x: x if x != 3 else int("three"), range(10), workers=2))


def _progress_lines(text: str, desc: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{desc}: ")]


def test_fast_centroids_equal_sentence_transformers_encode(tiny_encoder_dir, monkeypatch, capsys):
    from bookmatch.prepare.mining import embed_centroids, embed_centroids_plain

    monkeypatch.setenv("BOOKMATCH_PROGRESS", "lines")
    monkeypatch.setenv("BOOKMATCH_PROGRESS_SECONDS", "1e-6")
    books = _books()
    total = sum(map(len, books))
    # small blocks and batches: several tokenized blocks, many batches of mixed books
    fast = embed_centroids(books, str(tiny_encoder_dir), batch_size=4, block_texts=9, total_texts=total)
    lines = _progress_lines(capsys.readouterr().err, "mining: embedding")
    plain = embed_centroids_plain(books, str(tiny_encoder_dir), batch_size=4)
    assert fast.shape == plain.shape and not fast[2].any()
    np.testing.assert_allclose(fast, plain, atol=2e-5)
    threaded = embed_centroids(books, str(tiny_encoder_dir), batch_size=4, block_texts=5, threads=3)
    np.testing.assert_allclose(threaded, plain, atol=2e-5)  # blocks tokenized 3 at a time, summed in book order
    # a long mining run is followed in a log: a line per batch here, the last one at the full count
    assert len(lines) >= 2 and lines[-1].startswith(f"mining: embedding: {total}/{total} chunk (100%)")


def test_sentence_transformers_folder_pooling_is_read(tmp_path, tiny_encoder_dir):
    """A sentence-transformers folder with CLS pooling and a max length of its own: same centroids as its encode."""
    import json
    import shutil

    from bookmatch.prepare.mining import (
        SentenceEncoder,
        _sentence_transformers_pooling,
        embed_centroids,
        embed_centroids_plain,
    )

    folder = tmp_path / "st"
    shutil.copytree(tiny_encoder_dir, folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 24, "do_lower_case": False}))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    encoder = SentenceEncoder.load(str(folder))
    assert (encoder.pooling, encoder.max_length) == ("cls", 24)
    books = _books(4)
    np.testing.assert_allclose(
        embed_centroids(books, str(folder)), embed_centroids_plain(books, str(folder)), atol=2e-5
    )
    (folder / "modules.json").write_text(
        json.dumps(modules + [{"idx": 2, "name": "2", "path": "2_Dense", "type": "x.Dense"}])
    )
    assert _sentence_transformers_pooling(folder) is None  # a module it does not run: the plain path takes it


def test_fast_teacher_logits_equal_predict_logits_in_input_order(models, monkeypatch, capsys):
    from bookmatch.models.cross_encoder import CrossEncoder
    from bookmatch.training.teacher_logits import score_pairs

    monkeypatch.setenv("BOOKMATCH_PROGRESS", "lines")
    monkeypatch.setenv("BOOKMATCH_PROGRESS_SECONDS", "1e-6")

    teacher = CrossEncoder.from_pretrained(models["cross"])
    rng = np.random.default_rng(1)
    texts1 = [" ".join(rng.choice(SAMPLE_TEXTS, size=int(rng.integers(1, 6)))) for _ in range(23)]
    texts2 = [" ".join(rng.choice(SAMPLE_TEXTS, size=int(rng.integers(1, 6)))) for _ in range(23)]
    plain = teacher.predict_logits(list(zip(texts1, texts2)), batch_size=8).numpy()
    fast = score_pairs(teacher, texts1, texts2, batch_size=3)
    lines = _progress_lines(capsys.readouterr().err, "teacher scoring")
    np.testing.assert_allclose(fast, plain, atol=2e-5)
    assert len(lines) >= 2 and lines[-1].startswith("teacher scoring: 23/23 pair (100%)")
    assert np.abs(plain[:, 1] - plain[:, 0]).std() > 0  # the pairs score differently, so order is tested
    # blocks of 4 pairs tokenized on 3 threads at once: the same logits, in input order
    monkeypatch.setattr("bookmatch.training.teacher_logits.MIN_TOKENIZE_BLOCK", 4)
    threaded = score_pairs(teacher, texts1, texts2, batch_size=3, threads=3)
    np.testing.assert_allclose(threaded, plain, atol=2e-5)
    # under bf16 the weights are cast whole, on a CPU as on a GPU: the same logits to bf16's precision
    import torch

    half = CrossEncoder.from_pretrained(models["cross"])
    in_bf16 = score_pairs(half, texts1, texts2, batch_size=3, precision="bf16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    np.testing.assert_allclose(in_bf16, plain, atol=0.02 * np.abs(plain).max())


def test_teacher_scoring_reads_the_cross_stages_tokens_for_its_rows(models, tmp_path, monkeypatch, caplog):
    """The token ids the cross-encoder's training stage cached for a split are those tokenize_pairs gives, for
    any rank's rows; a missing, short or damaged file means tokenizing as before."""
    from bookmatch.models.cross_encoder import CrossEncoder
    from bookmatch.training.features import arrays_path, cached_arrays, cross_arrays, cross_arrays_key
    from bookmatch.training.teacher_logits import cross_stage_tokens, score_pairs

    teacher = CrossEncoder.from_pretrained(models["cross"])
    rng = np.random.default_rng(4)
    texts1 = [" ".join(rng.choice(SAMPLE_TEXTS, size=int(rng.integers(1, 6)))) for _ in range(11)]
    texts2 = [" ".join(rng.choice(SAMPLE_TEXTS, size=int(rng.integers(1, 6)))) for _ in range(11)]
    assert cross_stage_tokens(tmp_path, "texts", teacher, range(11)) is None
    cached_arrays(tmp_path, cross_arrays_key("texts", teacher), lambda: cross_arrays(texts1, texts2, teacher))
    with caplog.at_level(logging.INFO, logger="bookmatch.training.teacher_logits"):
        block = cross_stage_tokens(tmp_path, "texts", teacher, range(3, 9))  # one rank's share
    assert any("reusing the cross-encoder's tokens" in r.getMessage() for r in caplog.records)
    plain = teacher.tokenize_pairs(texts1, texts2)
    for part, rows in ((slice(0, 4), range(3, 7)), (slice(4, 8), range(7, 9))):
        got = block(part)
        assert got["input_ids"] == [plain["input_ids"][r] for r in rows]
        assert got.get("token_type_ids") == (
            [plain["token_type_ids"][r] for r in rows] if "token_type_ids" in plain else None
        )
    assert cross_stage_tokens(tmp_path, "texts", teacher, range(0, 12)) is None  # the file holds fewer pairs
    expected = score_pairs(teacher, texts1, texts2, batch_size=3)
    monkeypatch.setattr(CrossEncoder, "tokenize_pairs", lambda *a, **k: pytest.fail("tokenized again"))
    reused = score_pairs(
        teacher, texts1, texts2, batch_size=3, tokens=cross_stage_tokens(tmp_path, "texts", teacher, range(11))
    )
    np.testing.assert_allclose(reused, expected, atol=1e-6)
    path = arrays_path(tmp_path, cross_arrays_key("texts", teacher))
    path.write_bytes(path.read_bytes()[:100])
    assert cross_stage_tokens(tmp_path, "texts", teacher, range(11)) is None


def test_teacher_logits_stage_logs_its_summary_and_reuses_its_cache(models, tmp_path, caplog):
    from accelerate import Accelerator
    from datasets import Dataset

    from bookmatch.models.cross_encoder import CrossEncoder
    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.teacher_logits import teacher_logits

    rng = np.random.default_rng(2)
    split = Dataset.from_dict(
        {"text1": list(rng.choice(SAMPLE_TEXTS, 11)), "text2": list(rng.choice(SAMPLE_TEXTS, 11))}
    )
    config = ContrastiveTrainConfig(teacher=str(models["cross"]), teacher_batch_size=4)
    with caplog.at_level(logging.INFO, logger="bookmatch.training.teacher_logits"):
        logits = teacher_logits(config, split, Accelerator(cpu=True), tmp_path)
        again = teacher_logits(config, split, Accelerator(cpu=True), tmp_path)
    assert any(r.getMessage().startswith("teacher logits: 11 pairs in ") for r in caplog.records)
    assert any("reusing" in r.getMessage() for r in caplog.records)
    expected = (
        CrossEncoder.from_pretrained(models["cross"]).predict_logits(list(zip(split["text1"], split["text2"]))).numpy()
    )
    np.testing.assert_allclose(logits, expected, atol=2e-5)
    np.testing.assert_array_equal(again, logits)
    # a cut cache file is scored again and replaced, never trusted nor fatal
    (stored,) = tmp_path.glob("teacher_logits-*.npy")
    whole = stored.read_bytes()
    stored.write_bytes(whole[:100])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bookmatch.training.teacher_logits"):
        rescored = teacher_logits(config, split, Accelerator(cpu=True), tmp_path)
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(rescored, logits)
    assert stored.read_bytes() == whole


_RANK_SCRIPT = r"""
import json, sys
import numpy as np
import torch.distributed as dist
rank, store, encoder, books_file, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
from bookmatch.prepare.mining import embed_centroids
centroids = embed_centroids(json.load(open(books_file)), encoder, batch_size=4)
np.save(f"{out}-{rank}.npy", centroids)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow  # two fresh interpreters importing torch: 127 s on the loaded 2-core machine
def test_two_gloo_processes_split_the_books_and_gather_the_same_centroids(tiny_encoder_dir, tmp_path):
    import json
    import subprocess

    from bookmatch.prepare.mining import embed_centroids

    books = _books(5)
    books_file = tmp_path / "books.json"
    books_file.write_text(json.dumps(books))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    args = [str(tmp_path / "store"), str(tiny_encoder_dir), str(books_file), str(tmp_path / "out")]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK_SCRIPT, str(rank), *args], env=env, stderr=subprocess.PIPE, text=True
        )
        for rank in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-2000:]
    single = embed_centroids(books, str(tiny_encoder_dir), batch_size=4)
    for rank in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"out-{rank}.npy"), single, atol=2e-5)
