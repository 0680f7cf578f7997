"""Training program: sampler, configs, CLI end to end, distillation cache, a short real run."""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bookmatch.training.samplers import NoDuplicatesBatchSampler, shard_global_batch, text_key_ids

COLUMNS = ("text1", "text2", "label", "book1", "book2", "pair_type", "neg_type", "topic1", "topic2", "same_topic")


def _synthetic_books(n_books: int, chunks_per_book: int, seed: int) -> dict[str, list[str]]:
    """Books whose chunks share book-specific words, so 'same book' is learnable in a few steps."""
    rng = random.Random(seed)
    common = "the of and to a in that it was he for on with as his at by".split()
    books = {}
    for b in range(n_books):
        own = [f"w{b}x{k}" for k in range(6)]
        chunks = []
        for _ in range(chunks_per_book):
            words = [rng.choice(own) if rng.random() < 0.4 else rng.choice(common) for _ in range(rng.randint(12, 30))]
            chunks.append(" ".join(words).capitalize() + ".")
        books[f"author{b % 3}/book{b}"] = chunks
    return books


def _corpus_books(corpus_dir: Path, n_books: int, chunks_per_book: int) -> dict[str, list[str]]:
    """Chunks of real books: consecutive 4-sentence windows from the middle of each book."""
    books = {}
    for path in sorted((corpus_dir / "books").glob("*/*.txt"))[: n_books * 3 : 3]:
        text = path.read_text(encoding="utf-8", errors="replace")
        body = " ".join(text[len(text) // 4 : len(text) // 4 + 40000].split())
        sentences = re.split(r"(?<=[.!?])\s+", body)
        chunks = [" ".join(sentences[i : i + 4]) for i in range(0, len(sentences) - 4, 4)]
        chunks = [c for c in chunks if 100 < len(c) < 1200][:chunks_per_book]
        if len(chunks) >= 4:
            books[f"{path.parent.name}/{path.stem}"] = chunks
    return books


def _pairs(books: dict[str, list[str]], n_pairs: int, rng: random.Random) -> list[dict]:
    names = sorted(books)
    rows = []
    for i in range(n_pairs):
        if i % 2 == 0:
            book = rng.choice(names)
            a, b = rng.sample(books[book], 2)
            rows.append(dict(text1=a, text2=b, label=1, book1=book, book2=book, pair_type="positive", neg_type=""))
        else:
            b1, b2 = rng.sample(names, 2)
            rows.append(
                dict(
                    text1=rng.choice(books[b1]),
                    text2=rng.choice(books[b2]),
                    label=0,
                    book1=b1,
                    book2=b2,
                    pair_type="negative",
                    neg_type="random",
                )
            )
        topic1, topic2 = rows[-1]["book1"].split("/")[0], rows[-1]["book2"].split("/")[0]
        rows[-1].update(topic1=topic1, topic2=topic2, same_topic=topic1 == topic2)
    return rows


def make_pair_dataset(out: Path, books: dict[str, list[str]], n_train: int, n_val: int, seed: int = 0) -> Path:
    """A DatasetDict in the `bookmatch prepare` layout (+ manifest.json with book_work), built in code."""
    from datasets import Dataset, DatasetDict

    rng = random.Random(seed)
    names = sorted(books)
    split_at = max(2, len(names) * 2 // 3)
    train_books = {n: books[n] for n in names[:split_at]}
    val_books = {n: books[n] for n in names[split_at:]} if len(names) - split_at >= 2 else train_books
    splits = {}
    for name, part, count in (
        ("train", train_books, n_train),
        ("validation", val_books, n_val),
        ("test", val_books, n_val),
    ):
        rows = _pairs(part, count, rng)
        splits[name] = Dataset.from_dict({c: [r[c] for r in rows] for c in COLUMNS})
    DatasetDict(splits).save_to_disk(str(out))
    # two "copies" of one work: book0 and book3 share a work id
    book_work = {n: n for n in names}
    if len(names) > 3:
        book_work[names[3]] = names[0]
    (out / "manifest.json").write_text(json.dumps({"book_work": book_work}), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    return make_pair_dataset(
        tmp_path_factory.mktemp("pairs") / "data", _synthetic_books(9, 12, seed=1), n_train=96, n_val=40
    )


# --- sampler -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [None, "random"])
def test_no_duplicates_sampler(lengths):
    rng = random.Random(3)
    pool = [f"text{i}" for i in range(40)]  # few distinct texts: many clashes
    a = [rng.choice(pool) for _ in range(300)]
    b = [rng.choice(pool) for _ in range(300)]
    keys = text_key_ids(a, b)
    length_values = None if lengths is None else [rng.randint(5, 100) for _ in range(300)]
    sampler = NoDuplicatesBatchSampler(keys, batch_size=8, seed=5, lengths=length_values)
    for epoch in range(3):
        batches = sampler.batches(epoch)
        flat = [i for batch in batches for i in batch]
        assert sorted(flat) == list(range(300))  # every example exactly once
        for batch in batches:
            texts = [t for i in batch for t in (a[i], b[i])]
            # a pair may repeat its own text (a == b), but no text is shared by two pairs of the batch
            per_pair = [set((a[i], b[i])) for i in batch]
            assert sum(len(s) for s in per_pair) == len(set(texts))
            assert 1 <= len(batch) <= 8
        assert sum(len(b) == 8 for b in batches) >= len(batches) - 6  # clashes leave only a few short batches
    assert sampler.batches(1) == sampler.batches(1)  # deterministic per (seed, epoch)
    assert sampler.batches(1) != sampler.batches(2)


def test_sampler_length_grouping_reduces_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=4000).tolist()
    keys = [(2 * i, 2 * i + 1) for i in range(4000)]

    def padding(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    grouped = NoDuplicatesBatchSampler(keys, 16, seed=0, lengths=lengths).batches(0)
    plain = NoDuplicatesBatchSampler(keys, 16, seed=0).batches(0)
    assert padding(grouped) < 0.2 * padding(plain)


def test_author_grouped_batches_draw_from_few_authors():
    """Grouped batches: every example once, no text twice, and each batch from about groups_per_batch groups
    (random batches over 50 groups draw from ~12 of them)."""
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 50, size=3000).tolist()
    keys = [(2 * i, 2 * i + 1) for i in range(3000)]
    grouped = NoDuplicatesBatchSampler(keys, 16, seed=0, groups=groups, groups_per_batch=4, lengths=[1] * 3000)
    batches = grouped.batches(0)
    assert sorted(i for b in batches for i in b) == list(range(3000))
    distinct = [len({groups[i] for i in b}) for b in batches]
    # the groups' short last runs fill the last few batches of the epoch
    assert np.mean([d <= 4 for d in distinct]) > 0.9 and np.median(distinct) == 4
    plain = [len({groups[i] for i in b}) for b in NoDuplicatesBatchSampler(keys, 16, seed=0).batches(0)]
    assert np.median(plain) >= 10
    assert grouped.batches(1) == NoDuplicatesBatchSampler(keys, 16, seed=0, groups=groups, groups_per_batch=4).batches(
        1
    )
    assert grouped.batches(1) != grouped.batches(2)

    # clashing texts inside a group are deferred, never put twice in one batch
    shared = [(i % 7, 100 + i) for i in range(200)]
    for batch in NoDuplicatesBatchSampler(
        shared, 8, seed=3, groups=[i % 5 for i in range(200)], groups_per_batch=2
    ).batches(0):
        texts = [t for i in batch for t in shared[i]]
        assert len(texts) == len(set(texts))


def test_contrastive_batch_groups_are_authors(synthetic_data, tiny_encoder_dir):
    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.data import load_pair_data
    from bookmatch.training.tasks import ContrastiveTask

    split = load_pair_data(synthetic_data).splits["train"]
    assert ContrastiveTask(ContrastiveTrainConfig()).batch_groups(split) is None
    groups, per_batch = ContrastiveTask(ContrastiveTrainConfig(authors_per_batch=3)).batch_groups(split)
    authors = [book.split("/")[0] for book in split["book1"]]
    assert per_batch == 3 and len(groups) == len(split)
    assert all(
        (groups[i] == groups[j]) == (authors[i] == authors[j]) for i in range(len(split)) for j in range(len(split))
    )


def test_shard_global_batch():
    batch = list(range(10))
    parts = [shard_global_batch(batch, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [4, 3, 3]
    assert sum(parts, []) == batch


# --- configs and CLI ------------------------------------------------------------------------------------------


def test_config_defaults_and_yaml(tmp_path):
    from bookmatch.config import build_config
    from bookmatch.training.config import ContrastiveTrainConfig, CrossTrainConfig

    c = ContrastiveTrainConfig()
    assert (c.model, c.epochs, c.batch_size, c.lr, c.warmup_steps, c.contrastive_weight, c.temperature) == (
        "roberta-large",
        5,
        8,
        1e-5,
        1000,
        0.2,
        0.05,
    )
    t = CrossTrainConfig()
    assert (t.epochs, t.lr) == (3, 2e-5)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("lr: 0.001\nepochs: 2\n")
    built = build_config(ContrastiveTrainConfig, file=yaml_file, overrides={"epochs": 4, "batch_size": None})
    assert (built.lr, built.epochs, built.batch_size) == (0.001, 4, 8)
    with pytest.raises(ValueError):
        ContrastiveTrainConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="authors_per_batch"):
        ContrastiveTrainConfig(authors_per_batch=-1)


def test_warmup_is_capped_for_short_runs():
    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.trainer import _warmup_steps

    assert _warmup_steps(ContrastiveTrainConfig(), 100) == 10
    assert _warmup_steps(ContrastiveTrainConfig(), 100_000) == 1000


def test_pair_metrics_against_reference():
    from sklearn.metrics import f1_score, log_loss, roc_auc_score

    from bookmatch.training.trainer import pair_metrics

    rng = np.random.default_rng(0)
    for logits in (rng.normal(size=(50, 2)), rng.integers(-2, 3, size=(50, 2)).astype(float)):  # the second: ties
        labels = rng.integers(0, 2, 50)
        m = pair_metrics(logits, labels)
        prob = torch.softmax(torch.tensor(logits), -1).numpy()
        assert m["loss"] == pytest.approx(log_loss(labels, prob), rel=1e-9)
        assert m["auc"] == pytest.approx(roc_auc_score(labels, logits[:, 1] - logits[:, 0]), rel=1e-12)
        assert m["auc"] == pytest.approx(roc_auc_score(labels, prob[:, 1]), abs=0.02)
        assert m["accuracy"] == pytest.approx(np.mean((logits[:, 1] > logits[:, 0]) == labels))
        assert m["f1"] == pytest.approx(f1_score(labels, logits[:, 1] > logits[:, 0], zero_division=0))
    one_class = pair_metrics(rng.normal(size=(5, 2)), np.zeros(5, dtype=np.int64))
    assert np.isnan(one_class["auc"]) and one_class["f1"] == 0.0


def test_tokenized_split_matches_model_and_workers(synthetic_data, tiny_encoder_dir):
    """Training inputs are the model's own tokenization and style features; worker processes change nothing."""
    from datasets import load_from_disk

    from bookmatch.models.bi_encoder import BiEncoder
    from bookmatch.training.data import BiEncoderCollator, tokenize_bi_encoder_split, topic_ids, work_ids

    model = BiEncoder.from_backbone(str(tiny_encoder_dir), projection_dim=8, max_seq_length=32, lexical_buckets=0)
    split = load_from_disk(str(synthetic_data))["train"].select(range(20))
    book_work = json.loads((synthetic_data / "manifest.json").read_text())["book_work"]
    works = work_ids(split, book_work)
    one = tokenize_bi_encoder_split(split, model, works, topic_ids(split, None))
    two = tokenize_bi_encoder_split(split, model, works, topic_ids(split, None), num_proc=2)
    assert one.to_list() == two.to_list()
    row = one[3]
    assert row["input_ids_b"] == model.tokenize([split[3]["text2"]])["input_ids"][0]
    assert np.allclose(row["style_a"], model.side_feature_array([split[3]["text1"]])[0])
    # copies of one work share a SupCon label; different works do not
    for i in range(len(split)):
        same_work = book_work[split[i]["book1"]] == book_work[split[i]["book2"]]
        assert (one[i]["work_a"] == one[i]["work_b"]) == same_work
    batch = BiEncoderCollator(model.tokenizer)([one[i] for i in range(4)])
    assert batch["style_a"].shape == (4, len(model.config.side_feature_names))
    assert batch["input_ids_a"].shape[1] == max(len(one[i]["input_ids_a"]) for i in range(4))


def test_random_training_windows_are_seeded_slices_of_the_whole_text(synthetic_data, tiny_encoder_dir):
    """training_window "random": each side reads max_seq_length consecutive tokens of its text at an offset
    drawn from (seed, row, side): the same with worker processes, different across seeds, and the first
    window whenever the text fits."""
    from datasets import load_from_disk

    from bookmatch.models.bi_encoder import BiEncoder
    from bookmatch.training.data import tokenize_bi_encoder_split, topic_ids, work_ids

    # 16 tokens: shorter than most synthetic passages whatever the tiny tokenizer learnt (with the corpus beside
    # the checkout it learns word pieces; without it, a book-specific word is one [UNK])
    width = 16
    model = BiEncoder.from_backbone(str(tiny_encoder_dir), projection_dim=8, max_seq_length=width)
    split = load_from_disk(str(synthetic_data))["train"].select(range(20))
    works, topics = work_ids(split, {}), topic_ids(split, None)
    first = tokenize_bi_encoder_split(split, model, works, topics)
    drawn = tokenize_bi_encoder_split(split, model, works, topics, window="random", seed=1)
    assert (
        drawn.to_list()
        == tokenize_bi_encoder_split(split, model, works, topics, window="random", seed=1, num_proc=2).to_list()
    )
    other_seed = tokenize_bi_encoder_split(split, model, works, topics, window="random", seed=2)
    prefix, suffix = model.special_affixes()
    moved = longer = 0
    for i in range(len(split)):
        for side, column in (("a", "text1"), ("b", "text2")):
            whole = model.tokenizer(split[i][column], add_special_tokens=False)["input_ids"]
            ids = drawn[i][f"input_ids_{side}"]
            body = ids[len(prefix) : len(ids) - len(suffix)]
            assert ids[: len(prefix)] == prefix and ids[len(ids) - len(suffix) :] == suffix
            assert len(ids) == min(len(whole) + len(prefix) + len(suffix), width)
            assert any(whole[k : k + len(body)] == body for k in range(len(whole) - len(body) + 1))
            if len(whole) + len(prefix) + len(suffix) <= width:
                assert ids == first[i][f"input_ids_{side}"]
            longer += len(whole) + len(prefix) + len(suffix) > width
            moved += ids != first[i][f"input_ids_{side}"]
        assert drawn[i]["attention_mask_a"] == [1] * len(drawn[i]["input_ids_a"])
    assert longer >= 30
    # a longer text starts at 0 only when its draw says so (one offset among at least two)
    assert moved >= longer // 2
    assert drawn.to_list() != other_seed.to_list()
    with pytest.raises(ValueError, match="unknown training window"):
        tokenize_bi_encoder_split(split, model, works, topics, window="middle")


def test_early_stopping(synthetic_data, tiny_encoder_dir, tmp_path):
    """With lr 0 the validation AUC never improves: patience 1 stops at the second evaluation."""
    from bookmatch.models.bi_encoder import BiEncoder
    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.trainer import train_contrastive

    final = train_contrastive(
        ContrastiveTrainConfig(
            data=str(synthetic_data),
            out=str(tmp_path / "run"),
            model=str(tiny_encoder_dir),
            cpu=True,
            max_seq_length=32,
            lr=0.0,
            batch_size=8,
            max_steps=10,
            eval_steps=2,
            save_steps=100,
            patience=1,
            projection_dim=8,
            epochs=1,
        )
    )
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["stopped_early"] and summary["global_step"] == 4
    assert [h["step"] for h in summary["history"]] == [2, 4] and summary["best_step"] == 2
    assert final == tmp_path / "run" / "final" and BiEncoder.from_pretrained(final).config.projection_dim == 8


def test_auto_precision_resolves_to_what_the_device_computes_natively(synthetic_data, tiny_encoder_dir, tmp_path):
    import yaml

    from bookmatch.precision import native_bf16, resolve_mixed_precision
    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.trainer import train_contrastive

    for value in ("no", "bf16", "fp16"):
        assert resolve_mixed_precision(value, use_cuda=False) == value
    expected = "bf16" if native_bf16(use_cuda=False) else "no"
    assert resolve_mixed_precision("auto", use_cuda=False) == expected
    train_contrastive(
        ContrastiveTrainConfig(
            data=str(synthetic_data),
            out=str(tmp_path / "run"),
            model=str(tiny_encoder_dir),
            cpu=True,
            max_seq_length=32,
            batch_size=8,
            max_steps=2,
            eval_steps=2,
            save_steps=100,
            projection_dim=8,
            epochs=1,
            mixed_precision="auto",
        )
    )
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["mixed_precision"] == expected  # the run records what it used, not "auto"


def _cli(args: list[str]):
    from click.testing import CliRunner

    from bookmatch.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


TINY = [
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--max-seq-length",
    "48",
    "--eval-steps",
    "4",
    "--save-steps",
    "4",
    "--cpu",
    "--lr",
    "1e-3",
]


def test_cli_cross_then_contrastive_with_teacher(synthetic_data, tiny_encoder_dir, tmp_path, caplog):
    from bookmatch.models.bi_encoder import BiEncoder
    from bookmatch.models.cross_encoder import CrossEncoder

    teacher_out = tmp_path / "teacher"
    result = _cli(
        [
            "train",
            "cross",
            "--data",
            str(synthetic_data),
            "--model",
            str(tiny_encoder_dir),
            "--out",
            str(teacher_out),
            *TINY,
            "--max-steps",
            "6",
        ]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((teacher_out / "train_summary.json").read_text())
    assert summary["complete"] and summary["global_step"] == 6
    assert [h["step"] for h in summary["history"]] == [4, 6]
    assert (teacher_out / "config.yaml").exists() and (teacher_out / "checkpoint-4").is_dir()
    teacher = CrossEncoder.from_pretrained(teacher_out / "final")
    assert teacher.predict_logits([("a b", "c d")]).shape == (1, 2)

    student_out = tmp_path / "student"
    args = [
        "train",
        "contrastive",
        "--data",
        str(synthetic_data),
        "--model",
        str(tiny_encoder_dir),
        "--out",
        str(student_out),
        *TINY,
        "--teacher",
        str(teacher_out / "final"),
        "--projection-dim",
        "16",
        "--topic-adversary",
        "--independence-weight",
        "0.1",
        "--authors-per-batch",
        "2",
        "--max-steps",
        "9",
    ]
    cache = synthetic_data / "cache"  # the logits are cached beside the dataset, shared by every run on it
    cached_before = set(cache.glob("teacher_logits-*.npy"))
    with caplog.at_level(logging.INFO, logger="bookmatch"):
        result = _cli(args)
    assert result.exit_code == 0, result.output
    # the teacher trained on these pairs: its stage's cached tokens are scored, not the texts tokenized again
    assert any(r.getMessage().startswith("teacher logits: reusing the cross-encoder's tokens") for r in caplog.records)
    assert "authors_per_batch: 2" in (student_out / "config.yaml").read_text()
    summary = json.loads((student_out / "train_summary.json").read_text())
    assert summary["complete"] and summary["global_step"] == 9
    assert [h["step"] for h in summary["history"]] == [4, 8, 9]  # every --eval-steps, and at the end
    logged = summary["history"][-1]
    for term in (
        "train_ce_loss",
        "train_contrastive_loss",
        "train_distill_loss",
        "train_topic_adv_loss",
        "train_independence_loss",
    ):
        assert np.isfinite(logged[term]), term
    caches = list(set(cache.glob("teacher_logits-*.npy")) - cached_before)
    assert len(caches) == 1 and np.load(caches[0]).shape == (96, 2)
    # the cached logits are the teacher's own logits on the training pairs (row order of the train split)
    from datasets import load_from_disk

    train = load_from_disk(str(synthetic_data))["train"]
    expected = teacher.predict_logits(list(zip(train["text1"], train["text2"])))
    assert np.allclose(np.load(caches[0]), expected.numpy(), atol=1e-5)
    assert {p.name for p in student_out.glob("checkpoint-*")} == {"checkpoint-4", "checkpoint-8"}
    model = BiEncoder.from_pretrained(student_out / "final")
    assert model.encode_texts(["x y z"]).projected.shape == (1, 16)
    # --resume on a finished run returns at once
    result = _cli(args + ["--resume"])
    assert result.exit_code == 0 and result.output.strip().endswith("final")
    # another run on the same data and teacher reuses the logits instead of scoring the pairs again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bookmatch"):
        again = _cli([*args[: args.index("--out") + 1], str(tmp_path / "again"), *args[args.index("--out") + 2 :]])
    assert again.exit_code == 0, again.output
    assert any(r.getMessage() == f"teacher logits: reusing {caches[0]}" for r in caplog.records)
    assert not any(r.getMessage().startswith("teacher logits: 96 pairs in") for r in caplog.records)


def test_cached_lexical_idf_equals_a_fresh_fit_and_a_damaged_file_is_refitted(tiny_encoder_dir, tmp_path):
    from bookmatch.models.bi_encoder import BiEncoder
    from bookmatch.training.features import fit_lexical_cached

    texts = [f"Captain Ahab spoke of the whale {i}, and Ishmael listened by the harbour." for i in range(40)]
    texts += ["Elizabeth Bennet walked to Netherfield through the muddy fields of Hertfordshire."] * 3

    def model():
        return BiEncoder.from_backbone(str(tiny_encoder_dir), lexical_buckets=64, name_top_k=4, projection_dim=8)

    reference = model()
    reference.fit_lexical(texts)
    expected = [idf.clone() for _, idf in reference.lexical_fingerprints()]
    assert len(expected) == 2 and all(not torch.all(idf == 1) for idf in expected)  # both vocabularies fitted

    calls = []

    def texts_once():
        calls.append(1)
        return texts

    for _ in range(2):  # the first fits and stores, the second reads
        fresh = model()
        fit_lexical_cached(fresh, "fingerprint", texts_once, tmp_path)
        assert all(torch.equal(a, b) for (_, a), b in zip(fresh.lexical_fingerprints(), expected))
        # the fingerprinters use the loaded weights, not only the buffers
        assert np.array_equal(fresh.lexical.idf, expected[0].numpy())
    assert len(calls) == 1
    (stored,) = tmp_path.glob("lexical_idf-*.npz")
    stored.write_bytes(stored.read_bytes()[:100])
    damaged = model()
    fit_lexical_cached(damaged, "fingerprint", texts_once, tmp_path)
    assert len(calls) == 2 and all(torch.equal(a, b) for (_, a), b in zip(damaged.lexical_fingerprints(), expected))
    other = model()  # other texts: another key, a fresh fit
    fit_lexical_cached(other, "another fingerprint", lambda: texts[:5], tmp_path)
    assert not torch.equal(next(other.lexical_fingerprints())[1], expected[0])


def test_a_task_fingerprints_each_split_once(synthetic_data, monkeypatch):
    from datasets import load_from_disk

    import bookmatch.training.tasks as tasks
    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.data import texts_fingerprint

    splits = load_from_disk(str(synthetic_data))
    calls = []
    monkeypatch.setattr(tasks, "texts_fingerprint", lambda split: calls.append(split) or texts_fingerprint(split))
    task = tasks.ContrastiveTask(ContrastiveTrainConfig())
    for split in (splits["train"], splits["validation"], splits["train"], splits["validation"]):
        assert task.fingerprint(split) == texts_fingerprint(split)
    assert calls == [splits["train"], splits["validation"]]
    assert task.fingerprint(splits["train"]) != task.fingerprint(splits["validation"])


def test_cli_bad_data_is_one_line_error(tmp_path, tiny_encoder_dir):
    from click.testing import CliRunner

    from bookmatch.cli import main

    result = CliRunner().invoke(
        main,
        [
            "train",
            "cross",
            "--data",
            str(tmp_path / "missing"),
            "--model",
            str(tiny_encoder_dir),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 4
    assert "does not exist" in result.output and "Traceback" not in result.output


def test_cached_contrastive_matches_plain_step(synthetic_data, tiny_encoder_dir, tmp_path):
    """GradCache changes memory, not the update: with encoder dropout off, both give the same weights."""
    import shutil

    from safetensors.torch import load_file

    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.trainer import train_contrastive

    encoder = tmp_path / "encoder"
    shutil.copytree(tiny_encoder_dir, encoder)
    encoder_config = json.loads((encoder / "config.json").read_text())
    encoder_config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (encoder / "config.json").write_text(json.dumps(encoder_config))
    weights = {}
    for cached in (False, True):
        out = tmp_path / f"run-{cached}"
        train_contrastive(
            ContrastiveTrainConfig(
                data=str(synthetic_data),
                out=str(out),
                model=str(encoder),
                cpu=True,
                max_seq_length=32,
                lr=1e-3,
                batch_size=8,
                max_steps=2,
                eval_steps=2,
                save_steps=100,
                projection_dim=8,
                epochs=1,
                cached_contrastive=cached,
                mini_batch_size=4,
            )
        )
        weights[cached] = load_file(str(out / "final" / "model.safetensors"))
    initial = load_file(str(encoder / "model.safetensors"))
    moved = weights[False]["encoder.embeddings.word_embeddings.weight"] - initial["embeddings.word_embeddings.weight"]
    assert moved.abs().max() > 1e-4
    for key, value in weights[False].items():
        assert torch.allclose(value, weights[True][key], atol=2e-5, rtol=1e-4), key


def _short_real_run(corpus_dir, tiny_encoder_dir, tmp_path, steps: int, n_books: int) -> dict:
    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.trainer import train_contrastive

    data = make_pair_dataset(tmp_path / "data", _corpus_books(corpus_dir, n_books, 30), n_train=steps * 8, n_val=48)
    config = ContrastiveTrainConfig(
        data=str(data),
        out=str(tmp_path / "run"),
        model=str(tiny_encoder_dir),
        epochs=1,
        batch_size=8,
        lr=5e-4,
        max_seq_length=64,
        eval_steps=steps // 2,
        save_steps=1000,
        cpu=True,
        projection_dim=16,
        warmup_steps=0,
        patience=0,
        eval_max_pairs=48,
        max_steps=steps,
    )
    train_contrastive(config)
    return json.loads((tmp_path / "run" / "train_summary.json").read_text())


def _validation_loss(model, data: Path) -> float:
    from datasets import load_from_disk

    from bookmatch.training.trainer import pair_metrics

    val = load_from_disk(str(data))["validation"]
    a, b = model.encode_texts(list(val["text1"])), model.encode_texts(list(val["text2"]))
    return pair_metrics(model.pair_logits(a, b).numpy(), np.asarray(val["label"]))["loss"]


def test_short_real_run_learns(corpus_dir, tiny_encoder_dir, tmp_path):
    """20 steps on real book chunks: the trained model beats its own starting point on held-out books."""
    from accelerate.utils import set_seed

    from bookmatch.models.bi_encoder import BiEncoder

    summary = _short_real_run(corpus_dir, tiny_encoder_dir, tmp_path, steps=20, n_books=6)
    assert summary["complete"] and len(summary["history"]) == 2
    set_seed(42)  # the trainer's seed: the same random heads it started from
    initial = BiEncoder.from_backbone(str(tiny_encoder_dir), projection_dim=16, max_seq_length=64)
    trained = BiEncoder.from_pretrained(tmp_path / "run" / "final")
    assert _validation_loss(trained, tmp_path / "data") < _validation_loss(initial, tmp_path / "data")


@pytest.mark.slow
def test_real_run_lowers_validation_loss(corpus_dir, tiny_encoder_dir, tmp_path):
    summary = _short_real_run(corpus_dir, tiny_encoder_dir, tmp_path, steps=60, n_books=12)
    history = summary["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert max(h["val_auc"] for h in history) > 0.6


@pytest.mark.parametrize("window", ["first", "random"])
def test_feature_arrays_batch_like_the_plain_collator(synthetic_data, tiny_encoder_dir, window, tmp_path):
    """The cached arrays (features.py) give the plain path's batches (tokenize_bi_encoder_split + collator), also
    padded to a multiple, also after a round trip through the cache file."""
    from datasets import load_from_disk

    from bookmatch.models.bi_encoder import BiEncoder
    from bookmatch.training.data import BiEncoderCollator, tokenize_bi_encoder_split, topic_ids, work_ids
    from bookmatch.training.features import PairArrays, bi_encoder_arrays, cached_arrays

    model = BiEncoder.from_backbone(
        str(tiny_encoder_dir), projection_dim=8, max_seq_length=16, lexical_buckets=64, lexical_top_k=4
    )
    split = load_from_disk(str(synthetic_data))["train"].select(range(30))
    model.fit_lexical(list(split["text1"]) + list(split["text2"]))
    works, topics = work_ids(split, {}), topic_ids(split, None)
    plain = tokenize_bi_encoder_split(split, model, works, topics, window=window, seed=3)
    built = []
    arrays = cached_arrays(
        tmp_path,
        "k",
        lambda: (
            built.append(1)
            or bi_encoder_arrays(list(split["text1"]), list(split["text2"]), model, window=window, seed=3)
        ),
    )
    again = cached_arrays(tmp_path, "k", lambda: built.append(1) or arrays)
    assert built == [1] and isinstance(again, PairArrays)  # the second call read the file
    # a cut file (a kill mid-copy, a full disk) is rebuilt, never trusted nor fatal
    (stored,) = tmp_path.glob("features-k.npz")
    whole = stored.read_bytes()
    stored.write_bytes(whole[: len(whole) // 2])
    cached_arrays(tmp_path, "k", lambda: built.append(1) or arrays)
    assert built == [1, 1] and stored.read_bytes() == whole
    for table in (arrays, again):
        for side, i in (("a", 0), ("b", 1)):
            table.add_column(f"work_{side}", np.asarray(works[i]))
            table.add_column(f"topic_{side}", np.asarray(topics[i]))
        table.add_column("label", np.asarray(split["label"]))
        table.add_column("row", np.arange(len(split)))
    for multiple in (None, 8):
        collate = BiEncoderCollator(model.tokenizer, multiple)
        for rows in ([0, 5, 7, 2], list(range(30))):
            expected = collate([plain[r] for r in rows])
            for table in (arrays, again):
                table.pad_to_multiple_of = multiple
                got = table.batch(rows)
                assert sorted(got) == sorted(expected)
                for key in expected:
                    assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), key
    assert arrays.lengths.tolist() == plain["length"]


def test_cross_arrays_batch_like_the_plain_collator(synthetic_data, tiny_encoder_dir):
    from datasets import load_from_disk

    from bookmatch.models.cross_encoder import CrossEncoder
    from bookmatch.training.data import CrossCollator, tokenize_cross_split
    from bookmatch.training.features import cross_arrays

    cross = CrossEncoder.from_backbone(str(tiny_encoder_dir), max_seq_length=24)
    split = load_from_disk(str(synthetic_data))["train"].select(range(20))
    plain = tokenize_cross_split(split, cross)
    arrays = cross_arrays(list(split["text1"]), list(split["text2"]), cross)
    arrays.add_column("label", np.asarray(split["label"]))
    arrays.add_column("row", np.arange(len(split)))
    rows = [3, 1, 4, 15, 9]
    expected = CrossCollator(cross.tokenizer)([plain[r] for r in rows])
    got = arrays.batch(rows)
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_second_run_reuses_the_feature_cache(synthetic_data, tiny_encoder_dir, tmp_path, caplog):
    """A run writes its splits' arrays beside the data; the next run on the same data reads them and trains
    the same; the summary reports where a step's time went."""
    import logging

    from safetensors.torch import load_file

    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.trainer import train_contrastive

    def run(name: str):
        train_contrastive(
            ContrastiveTrainConfig(
                data=str(synthetic_data),
                out=str(tmp_path / name),
                model=str(tiny_encoder_dir),
                cpu=True,
                max_seq_length=24,
                lr=1e-3,
                batch_size=8,
                max_steps=3,
                eval_steps=3,
                save_steps=100,
                projection_dim=8,
                epochs=1,
                seed=11,
                lexical_buckets=64,
                lexical_top_k=4,
                name_top_k=4,
            )
        )
        return json.loads((tmp_path / name / "train_summary.json").read_text())

    first = run("one")
    with caplog.at_level(logging.INFO, logger="bookmatch.training.features"):
        second = run("two")
    assert sum("features: reusing" in r.getMessage() for r in caplog.records) == 2  # train and validation
    assert sum("lexical IDF: reusing" in r.getMessage() for r in caplog.records) == 1
    assert first["history"] == second["history"]
    wa, wb = (load_file(str(tmp_path / n / "final" / "model.safetensors")) for n in ("one", "two"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert set(first["step_milliseconds"]) == {"data", "forward_backward", "optimizer", "logging"}
    assert first["step_milliseconds"]["forward_backward"] > 0
    assert "per step: data" in first["summary"] and first["summary"].startswith("train contrastive: 3 steps in ")
