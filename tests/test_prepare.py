"""Unit tests of the prepare stage on synthetic books (no corpus, no text module needed)."""

from __future__ import annotations

import random
from itertools import combinations

import numpy as np
import pytest

from bookmatch.prepare.dedup import common_shingles, drop_boilerplate_chunks, group_works, shared_shingle_counts
from bookmatch.prepare.mining import hard_negative_books, knn_faiss, knn_torch
from bookmatch.prepare.pairs import COLUMNS, PairOptions, build_split_pairs
from bookmatch.prepare.records import BookRecord, sentence_hash, sentence_hashes, word_gram_shingles
from bookmatch.prepare.splits import assign_splits, is_holdout_author
from bookmatch.prepare.topics import GENERAL, chunk_topic


def letters_word(index: int) -> str:
    """A distinct made-up word of letters only (word-gram shingles ignore digits)."""
    word = "w"
    while True:
        index, digit = divmod(index, 26)
        word += chr(ord("a") + digit)
        if index == 0:
            return word


VOCAB = [letters_word(i) for i in range(3000)]
CHUNK = 4


def fake_sentences(rng: random.Random, count: int) -> list[str]:
    return [" ".join(rng.choices(VOCAB, k=rng.randint(8, 14))).capitalize() + "." for _ in range(count)]


def make_record(path: str, sentences: list[str], topics: list[str] | None = None) -> BookRecord:
    starts = list(range(0, max(len(sentences) - CHUNK + 1, 1), CHUNK - 1))
    chunks = [" ".join(sentences[s : s + CHUNK]) for s in starts]
    return BookRecord(
        path=path,
        author=path.split("/")[0],
        title=path.split("/")[1],
        chunks=chunks,
        chunk_starts=starts,
        chunk_topics=topics or [GENERAL] * len(chunks),
        sentence_hashes=sentence_hashes(sentences, 6),
        gram_shingles=word_gram_shingles(" ".join(sentences), 8, 4),
        book_id=path.replace(" ", "_").lower().removesuffix(".txt"),
    )


def test_sentence_hash_ignores_case_and_punctuation_and_short_sentences():
    assert sentence_hash("The sea was calm, and the ship sailed on.", 6) == sentence_hash(
        "the SEA was calm -- and the ship sailed on", 6
    )
    assert sentence_hash("The sea was calm, and the ship sailed on.", 6) != sentence_hash(
        "The sea was rough, and the ship sailed on.", 6
    )
    assert sentence_hash("Yes, sir.", 6) == 0


def test_shared_counts_match_a_pairwise_reference():
    rng = np.random.default_rng(0)
    sets = [np.unique(rng.integers(1, 400, size=rng.integers(20, 120)).astype(np.uint64)) for _ in range(9)]
    counts = shared_shingle_counts(sets, max_books_per_shingle=50)
    for a, b in combinations(range(9), 2):
        assert counts.get((a, b), 0) == len(np.intersect1d(sets[a], sets[b]))


def test_group_works_finds_copies_and_contained_parts_but_not_distinct_books():
    rng = random.Random(1)
    whole = fake_sentences(rng, 400)
    part = whole[120:180]  # a volume inside its complete edition
    other_same_author = fake_sentences(rng, 300)
    records = [
        make_record("A/complete.txt", whole),
        make_record("A/part.txt", part),
        make_record("B/copy.txt", list(whole)),
        make_record("A/other.txt", other_same_author),
        # shares a few quoted sentences with the complete edition: not enough to be the same text
        make_record("C/quotes.txt", fake_sentences(rng, 200) + whole[:5]),
    ]
    grouping = group_works(records, containment_threshold=0.5, min_shared_shingles=20, large_overlap_shingles=100)
    assert grouping.groups == [[0, 1, 2]]
    assert grouping.work_of == grouping.copy_of == [0, 0, 0, 3, 4]
    assert grouping.containment[(0, 1)] == 1.0


def test_word_gram_shingles_survive_line_numbers_and_punctuation_and_sample_the_same_runs():
    text = " ".join(fake_sentences(random.Random(5), 300))
    # verse line numbers, re-punctuation and re-capitalisation of the same words
    renumbered = " ".join(
        f"{w.upper()}, 120" if i % 7 == 0 else f"--{w}" if i % 11 == 0 else w for i, w in enumerate(text.split())
    )
    full, again = word_gram_shingles(text, 8, 1), word_gram_shingles(renumbered, 8, 1)
    assert len(np.intersect1d(full, again)) / len(full) > 0.98
    sampled = word_gram_shingles(text, 8, 16)
    assert np.isin(sampled, full).all() and (sampled % 16 == 0).all()
    assert 0.04 < len(sampled) / len(full) < 0.09  # about one in 16
    assert np.array_equal(sampled, np.unique(sampled))
    assert len(word_gram_shingles("too few words here", 8, 1)) == 0


def test_books_sharing_a_story_are_one_work_but_shared_advertisements_are_not_evidence():
    rng = random.Random(3)
    story = fake_sentences(rng, 250)  # ~2,750 words printed in two anthologies
    adverts = fake_sentences(rng, 150)  # a publisher's catalogue at the end of four series books
    anthology_a = make_record("Ed/anthology_a.txt", fake_sentences(rng, 900) + story + fake_sentences(rng, 900))
    anthology_b = make_record("Other/anthology_b.txt", fake_sentences(rng, 700) + story)
    series = [make_record(f"S/series_{i}.txt", fake_sentences(rng, 800) + adverts) for i in range(4)]
    records = [anthology_a, anthology_b, *series]
    grouping = group_works(records, containment_threshold=0.5, min_shared_shingles=20, large_overlap_shingles=125)
    assert grouping.copy_of == [0, 1, 2, 3, 4, 5]  # neither pair is mostly inside the other
    assert grouping.groups == [[0, 1]]
    # without the advertisement rule the series books would share enough to merge
    assert len(np.intersect1d(series[0].gram_shingles, series[1].gram_shingles)) >= 125


def test_boilerplate_chunks_are_dropped_by_works_not_copies():
    rng = random.Random(2)
    notice = fake_sentences(rng, CHUNK)  # the same front-matter notice in three different works
    books = [make_record(f"X{i}/b.txt", notice + fake_sentences(rng, 40)) for i in range(3)]
    copies = [make_record("Y/a.txt", s := fake_sentences(rng, 40)), make_record("Z/a.txt", list(s))]
    records = books + copies
    work_of = group_works(records, 0.5, 20).work_of
    common = common_shingles(records, work_of, min_works=3)
    assert set(common.tolist()) == set(sentence_hashes(notice, 6).tolist())
    before = [len(r.chunks) for r in records]
    dropped = [drop_boilerplate_chunks(r, common, CHUNK, 0.3) for r in records]
    assert dropped[:3] == [1, 1, 1]  # the notice chunk; the next shares only 1 of 4 sentences (<= 0.3)
    assert dropped[3:] == [0, 0]  # two copies of one work are not three works
    assert all(len(r.chunks) == b - d for r, b, d in zip(records, before, dropped))
    assert all(len(r.chunks) == len(r.chunk_starts) == len(r.chunk_topics) for r in records)


def _as_sets(indices: np.ndarray) -> list[set[int]]:
    return [set(row.tolist()) for row in indices]


@pytest.mark.parametrize("n,dim,k", [(300, 32, 10), (57, 8, 56), (1000, 16, 5)])
def test_faiss_and_blocked_torch_knn_agree(n, dim, k):
    rng = np.random.default_rng(n)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    f_scores, f_idx = knn_faiss(vectors, k)
    t_scores, t_idx = knn_torch(vectors, k, block_size=64, device="cpu")
    assert f_idx.shape == t_idx.shape == (n, min(k, n - 1))
    exact = vectors @ vectors.T
    np.fill_diagonal(exact, -np.inf)
    reference = np.sort(exact, axis=1)[:, ::-1][:, : min(k, n - 1)]
    np.testing.assert_allclose(f_scores, reference, atol=1e-4)
    np.testing.assert_allclose(t_scores, reference, atol=1e-4)
    for row in range(n):
        assert row not in f_idx[row] and row not in t_idx[row]
        if f_idx[row].tolist() != t_idx[row].tolist():
            # Allowed only where the differing neighbours tie at the cut-off score.
            differ = set(f_idx[row]) ^ set(t_idx[row])
            assert np.allclose(exact[row, list(differ)], reference[row, -1], atol=1e-5)


def test_hard_negative_books_skip_copies_of_the_same_work():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(20, 8)).astype(np.float32)
    vectors = np.concatenate([base, base[:5] + 1e-3])  # books 20..24 are near-exact copies of 0..4
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    work_of = list(range(20)) + [0, 1, 2, 3, 4]
    for method in ("faiss", "torch"):
        neighbours = hard_negative_books(vectors, work_of, k=6, method=method)
        for book, row in enumerate(neighbours):
            assert len(row) == 6
            assert all(work_of[o] != work_of[book] for o in row)


def test_splits_keep_works_whole_and_hold_out_authors():
    keys = {w: f"author{w % 7}/book{w}" for w in range(50)}
    authors = {w: [f"Author{w % 7}, Someone", ""] for w in range(50)}
    split = assign_splits(keys, authors, ["author3"], 0.8, 0.1, seed=5)
    assert set(split) == set(keys)
    assert all(split[w] == "test" for w in keys if w % 7 == 3)
    free = [w for w in keys if w % 7 != 3]
    counts = {s: sum(split[w] == s for w in free) for s in ("train", "validation", "test")}
    assert counts == {
        "train": round(len(free) * 0.8),
        "validation": round(len(free) * 0.1),
        "test": len(free) - round(len(free) * 0.8) - round(len(free) * 0.1),
    }
    assert assign_splits(keys, authors, ["author3"], 0.8, 0.1, seed=5) == split
    assert assign_splits(keys, authors, ["author3"], 0.8, 0.1, seed=6) != split
    tiny = assign_splits({0: "a", 1: "b", 2: "c"}, {}, [], 0.8, 0.1, seed=1)
    assert sorted(tiny.values()) == ["test", "train", "validation"]


def _pair_fixture():
    rng = random.Random(4)
    records = []
    for author in ("Ann", "Bob", "Cy"):
        for title in ("one", "two"):
            topics = [rng.choice(["sea", "war", GENERAL]) for _ in range(20)]
            records.append(make_record(f"{author}/{title}.txt", fake_sentences(rng, 61), topics))
    records.append(make_record("Dee/one.txt", fake_sentences(rng, 61)))
    copy = make_record("Eve/copy.txt", [])
    copy.chunks, copy.chunk_starts, copy.chunk_topics = (
        list(records[0].chunks),
        list(records[0].chunk_starts),
        list(records[0].chunk_topics),
    )
    records.append(copy)
    work_of = [0, 1, 2, 3, 4, 5, 6, 0]  # the last book is a copy of the first
    author_of = [r.path.split("/")[0].lower() for r in records]
    neighbours = [[j for j in range(len(records)) if work_of[j] != work_of[i]][:3] for i in range(len(records))]
    return records, work_of, author_of, neighbours


def test_pairs_are_balanced_typed_and_never_join_copies():
    records, work_of, author_of, neighbours = _pair_fixture()
    options = PairOptions(
        n_positive=6,
        n_negative=6,
        chunk_size=CHUNK,
        neg_mix={"hard": 0.3, "same_author": 0.3, "same_topic": 0.2, "random": 0.2},
        seed=1,
    )
    cols = build_split_pairs(records, list(range(len(records))), work_of, author_of, neighbours, options)
    assert tuple(cols) == COLUMNS
    n = len(cols["label"])
    assert sum(cols["label"]) == n - sum(cols["label"]) == 6 * len(records)
    id_work = {r.book_id: w for r, w in zip(records, work_of)}
    id_record = {r.book_id: r for r in records}
    id_author = {r.book_id: a for r, a in zip(records, author_of)}
    kinds = set()
    for row in zip(*cols.values()):
        row = dict(zip(COLUMNS, row))
        if row["label"] == 1:
            assert row["book1"] == row["book2"] and row["pair_type"] == "positive" and row["neg_type"] == ""
            record = id_record[row["book1"]]
            s1 = record.chunk_starts[record.chunks.index(row["text1"])]
            s2 = record.chunk_starts[record.chunks.index(row["text2"])]
            assert abs(s1 - s2) >= CHUNK  # no shared sentence
        else:
            assert id_work[row["book1"]] != id_work[row["book2"]]
            assert row["pair_type"] == "negative"
            kinds.add(row["neg_type"])
            if row["neg_type"] == "same_author":
                assert id_author[row["book1"]] == id_author[row["book2"]]
            if row["neg_type"] == "same_topic":
                assert row["topic1"] == row["topic2"] != GENERAL
        assert row["same_topic"] == (row["topic1"] == row["topic2"])
        assert row["text1"] in id_record[row["book1"]].chunks and row["text2"] in id_record[row["book2"]].chunks
    assert kinds == {"hard", "same_author", "same_topic", "random"}
    again = build_split_pairs(records, list(range(len(records))), work_of, author_of, neighbours, options)
    assert again == cols


def test_pairs_stay_inside_the_split():
    records, work_of, author_of, neighbours = _pair_fixture()
    options = PairOptions(6, 6, CHUNK, {"hard": 1.0, "same_author": 0, "same_topic": 0, "random": 0}, seed=2)
    members = [0, 2, 4]
    cols = build_split_pairs(records, members, work_of, author_of, neighbours, options)
    allowed = {records[b].book_id for b in members}
    assert set(cols["book1"]) | set(cols["book2"]) <= allowed


def test_chunk_topic_picks_the_lexicon_with_most_hits():
    assert chunk_topic("The captain paced the deck while the crew trimmed the sails; the sea rose.") == "sea"
    assert chunk_topic("The regiment marched to battle; soldiers and cannon filled the camp.") == "war"
    assert chunk_topic("He ate bread and went to bed.") == GENERAL


def test_missing_or_empty_books_folder_is_one_clear_input_error(tmp_path):
    from bookmatch.errors import InputError
    from bookmatch.prepare.scan import find_book_files

    with pytest.raises(InputError, match="does not exist"):
        find_book_files(tmp_path / "nope")
    (tmp_path / "empty" / "Some Author").mkdir(parents=True)
    (tmp_path / "empty" / "Some Author" / "notes.md").write_text("not a book")
    with pytest.raises(InputError, match="holds no .txt files"):
        find_book_files(tmp_path / "empty")


def test_chunk_samples_are_reproducible_sorted_and_capped():
    from bookmatch.prepare.scan import sample_chunk_indices

    picked = sample_chunk_indices(1000, 50, "a/b.txt", seed=3)
    assert picked == sorted(picked) and len(set(picked)) == 50
    assert picked == sample_chunk_indices(1000, 50, "a/b.txt", seed=3)
    assert picked != sample_chunk_indices(1000, 50, "a/c.txt", seed=3)
    assert sample_chunk_indices(10, 50, "a/b.txt", seed=3) == list(range(10))


@pytest.mark.gpu
def test_bf16_cuda_knn_matches_faiss_up_to_bf16_ties():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rng = np.random.default_rng(9)
    vectors = rng.normal(size=(5000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    k = 50
    _, f_idx = knn_faiss(vectors, k)
    _, t_idx = knn_torch(vectors, k, block_size=1024, device="cuda")
    exact = vectors @ vectors.T
    np.fill_diagonal(exact, -np.inf)
    kth = np.sort(exact, axis=1)[:, -k]
    for row in range(len(vectors)):
        differ = list(set(f_idx[row]) ^ set(t_idx[row]))
        # bf16 keeps ~3 significant digits: only neighbours within that of the k-th score may swap.
        assert np.all(np.abs(exact[row, differ] - kth[row]) < 2e-2)


def test_record_store_round_trips_and_fetches_only_wanted_texts(tmp_path):
    from bookmatch.prepare.store import ChunkStore, RecordWriter, read_records

    rng = random.Random(6)
    records = [make_record(f"A{i}/b{i}.txt", fake_sentences(rng, 30)) for i in range(40)]  # > one row group
    with RecordWriter(tmp_path / "books.parquet") as writer:
        light = [writer.add(r) for r in records]
    assert all(r.chunks is None and r.num_chunks == o.num_chunks for r, o in zip(light, records))
    full = read_records(tmp_path / "books.parquet", with_texts=True)
    meta = read_records(tmp_path / "books.parquet")
    for original, with_text, without in zip(records, full, meta):
        assert with_text.chunks == original.chunks and without.chunks is None
        for copy in (with_text, without):
            assert (copy.path, copy.chunk_starts, copy.chunk_topics) == (
                original.path,
                original.chunk_starts,
                original.chunk_topics,
            )
            assert (
                np.array_equal(copy.sentence_hashes, original.sentence_hashes)
                and copy.sentence_hashes.dtype == np.uint64
            )
    wanted = {records[3].path: {0, 2}, records[39].path: {1}}
    texts = ChunkStore([tmp_path / "books.parquet"]).fetch(wanted)
    assert texts == {
        (records[3].path, 0): records[3].chunks[0],
        (records[3].path, 2): records[3].chunks[2],
        (records[39].path, 1): records[39].chunks[1],
    }
    with pytest.raises(RuntimeError, match="missing"):
        ChunkStore([tmp_path / "books.parquet"]).fetch({"no/such.txt": {0}})


def test_text_table_spills_streamed_texts_and_takes_them_back_by_key(tmp_path, monkeypatch):
    import pyarrow as pa

    from bookmatch.prepare.store import TextTable, text_key

    monkeypatch.setattr(TextTable, "_BATCH", 16)  # several record batches: takes cross batch boundaries
    rng = random.Random(2)
    items = [
        (b, c, f"book {b} chunk {c} " + "x" * rng.randint(0, 50)) for b in range(30) for c in rng.sample(range(900), 5)
    ]
    rng.shuffle(items)  # the store streams in file order, not key order
    table = TextTable(iter(items), tmp_path / "texts.arrow")
    assert len(table) == len(items) and len(table._batches) == 10
    picks = rng.sample(items, 40) + rng.sample(items, 5)  # out of order, from many batches, some twice
    got = table.take([text_key(b, c) for b, c, _ in picks])
    assert isinstance(got, pa.Array) and got.to_pylist() == [t for _, _, t in picks]
    b, c, text = items[7]
    assert table.book_texts(b, [c]) == [text]
    assert table.take([]).to_pylist() == []
    with pytest.raises(KeyError):
        table.take([text_key(999, 0)])
    with pytest.raises(ValueError, match="twice"):
        TextTable(iter(items[:3] + items[:1]), tmp_path / "dup.arrow")


def test_centroids_embedded_in_blocks_equal_one_pass(tiny_encoder_dir):
    from bookmatch.prepare.mining import embed_centroids

    books = [
        ["The sea was calm.", "A ship sailed past."],
        [],
        ["Alice ran home."],
        ["Rain fell.", "Wind blew.", "Night."],
    ]
    one_pass = embed_centroids(books, str(tiny_encoder_dir))
    blocks = embed_centroids(books, str(tiny_encoder_dir), block_texts=1)
    assert np.allclose(one_pass, blocks, atol=1e-5)
    assert not one_pass[1].any() and np.allclose(np.linalg.norm(one_pass[[0, 2, 3]], axis=1), 1.0, atol=1e-5)


def test_bf16_centroids_agree_with_fp32(tiny_encoder_dir):
    """The miner's bf16 autocast (what "auto" picks on a CPU with native bf16) moves centroids by rounding only."""
    from bookmatch.prepare.mining import embed_centroids

    books = [
        ["The sea was calm.", "A ship sailed past."],
        ["Alice ran home.", "The cat slept."],
        ["Rain fell.", "Wind blew."],
    ]
    fp32 = embed_centroids(books, str(tiny_encoder_dir), precision="no")
    bf16 = embed_centroids(books, str(tiny_encoder_dir), precision="bf16")
    assert bf16.dtype == np.float32 and not np.array_equal(fp32, bf16)  # it did run in bf16
    assert ((fp32 * bf16).sum(axis=1) > 0.999).all()


def test_holdout_authors_match_whole_names_not_editors_or_parts_of_words():
    holdout = ["hawthorne", "london", "h. g. wells"]
    assert is_holdout_author("Hawthorne, Nathaniel", holdout)
    assert is_holdout_author("Jack London", holdout) and is_holdout_author("H. G. Wells", holdout)
    assert not is_holdout_author("Edited by Julian Hawthorne", holdout)
    assert not is_holdout_author("Voltaire; translated by Hawthorne", holdout)
    assert not is_holdout_author("Londonderry, Marchioness of", holdout)
    assert not is_holdout_author("Carolyn Wells", holdout)


def test_prepare_with_no_usable_book_is_one_error_and_writes_nothing(tmp_path):
    from click.testing import CliRunner

    from bookmatch.cli import main

    books = tmp_path / "books" / "Someone"
    books.mkdir(parents=True)
    (books / "empty.txt").write_text("")
    (books / "blank.txt").write_text("  \n\n ")
    result = CliRunner().invoke(
        main, ["prepare", "--books", str(tmp_path / "books"), "--out", str(tmp_path / "data"), "--workers", "1"]
    )
    assert result.exit_code != 0 and "error: no usable book among the 2 files" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "data").exists()


def test_merge_takes_only_the_newest_runs_shards(tmp_path, caplog):
    """A rerun over other books in the same shards folder: until its own shards replace the earlier run's,
    merge waits for them instead of mixing two book lists (the earlier code merged whatever was complete)."""
    from bookmatch.artifacts import write_commit
    from bookmatch.errors import BookmatchError
    from bookmatch.prepare.shards import books_fingerprint, shard_name, wait_for_shards
    from bookmatch.storage import atomic_write_json

    books = tmp_path / "books"
    (books / "a").mkdir(parents=True)
    (books / "a" / "one.txt").write_text("one book")
    (books / "a" / "two.txt").write_text("another book")
    before = books_fingerprint(sorted(books.rglob("*.txt")), books)
    (books / "a" / "three.txt").write_text("a third book")
    after = books_fingerprint(sorted(books.rglob("*.txt")), books)
    assert before != after

    shards = tmp_path / "shards"
    clock = iter(range(1, 100))

    def write_shard(index: int, total: int, fingerprint: str) -> None:
        folder = shards / shard_name(index, total)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            folder / "manifest.json",
            {
                "shard_index": index,
                "num_shards": total,
                "books_fingerprint": fingerprint,
                "created": float(next(clock)),
                "complete": True,
            },
        )
        (folder / "books.parquet").write_bytes(b"records")
        write_commit(folder)

    write_shard(0, 3, before)  # an older run with another shard count
    write_shard(0, 2, before)
    write_shard(1, 2, before)
    assert [m["books_fingerprint"] for _, m in wait_for_shards(shards)] == [before, before]
    write_shard(0, 2, after)  # the rerun: node 0 is done, node 1 still scanning
    with pytest.raises(BookmatchError, match=r"shards \[1\] missing .*earlier run"):
        wait_for_shards(shards, wait_timeout=0.2, poll_interval=0.05)
    write_shard(1, 2, after)
    with caplog.at_level("WARNING"):
        found = wait_for_shards(shards)
    assert [(m["shard_index"], m["books_fingerprint"]) for _, m in found] == [(0, after), (1, after)]
    assert "shard-00000-of-00003" in caplog.text

    # on a bucket a shard's files land in any order: a commit whose parquet is cut or absent is not a shard yet
    cut = shards / shard_name(1, 2) / "books.parquet"
    cut.write_bytes(b"rec")
    with pytest.raises(BookmatchError, match=r"shards \[1\] missing"):
        wait_for_shards(shards, wait_timeout=0.2, poll_interval=0.05)
    cut.unlink()
    with pytest.raises(BookmatchError, match=r"shards \[1\] missing"):
        wait_for_shards(shards, wait_timeout=0.2, poll_interval=0.05)
