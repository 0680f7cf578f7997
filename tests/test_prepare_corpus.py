"""The prepare stage on real corpus books (copied by path into temp folders; no book text in the repo)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bookmatch.prepare.config import PrepareConfig
from bookmatch.prepare.dedup import group_works
from bookmatch.prepare.scan import find_book_files
from bookmatch.prepare.shards import scan_books

SMALL_BOOKS = [
    "Smith, Geoffrey Bache/A Spring Harvest (English).txt",
    "Tolkien, J. R. R. (John Ronald Reuel)/A Spring Harvest.txt",  # the same text as the line above
    "Jowett, Benjamin/Laches.txt",
    "Plato/Laches.txt",  # the same text as the line above
    "Emshwiller, Ed/Derelict.txt",
    "Emshwiller, Ed/Laboratory.txt",
    "Emshwiller, Ed/Watchbird.txt",
    "Orban, Paul/A Gift For Terra.txt",
    "Orban, Paul/The Barbarians.txt",
    "Orban, Paul/Brainchild.txt",
    "Burnett, Frances Hodgson/Esmeralda.txt",
    "Burnett, Frances Hodgson/Racketty-Packetty House, as Told by Queen Crosspatch.txt",
]
BAD_INPUTS = ["empty.txt", "compressed_not_text.txt", "license_only.txt", "whitespace_only.txt"]

# The README's traps (same text under several folders, parts inside complete editions, a tale inside its
# collection) plus controls that must stay apart: other books by the same authors.
TRAP_BOOKS = [
    "Grimm, Jacob/Grimm's Fairy Stories.txt",
    "Grimm, Wilhelm/Grimm's Fairy Stories.txt",
    "Cervantes Saavedra, Miguel de/The History of Don Quixote, Volume 1, Complete.txt",
    "Ormsby, John/The History of Don Quixote, Volume 1, Part 04.txt",
    "Doré, Gustave/The History of Don Quixote, Volume 1, Part 15.txt",
    "Cervantes Saavedra, Miguel de/The History of Don Quixote, Volume 2, Part 20.txt",
    "Doré, Gustave/The History of Don Quixote, Volume 2, Part 21.txt",
    "Hapgood, Isabel Florence/The Village.txt",
    "Bunin, Ivan Alekseevich/The Village.txt",
    "Bunin, Ivan Alekseevich/Reminiscences of Anton Chekhov.txt",
    "Hapgood, Isabel Florence/On the Significance of Science and Art.txt",
    "Tolstoy, Leo, graf/On the Significance of Science and Art.txt",
    "Hawthorne, Nathaniel/A Wonder Book for Girls & Boys.txt",
    'Hawthorne, Nathaniel/The Miraculous Pitcher(From: "A Wonder-Book for Girls and Boys").txt',
    "Emshwiller, Ed/Derelict.txt",
    "Emshwiller, Ed/Watchbird.txt",
]
TRAP_GROUPS = [
    ["Bunin, Ivan Alekseevich/The Village.txt", "Hapgood, Isabel Florence/The Village.txt"],
    [
        "Cervantes Saavedra, Miguel de/The History of Don Quixote, Volume 1, Complete.txt",
        "Doré, Gustave/The History of Don Quixote, Volume 1, Part 15.txt",
        "Ormsby, John/The History of Don Quixote, Volume 1, Part 04.txt",
    ],
    ["Grimm, Jacob/Grimm's Fairy Stories.txt", "Grimm, Wilhelm/Grimm's Fairy Stories.txt"],
    [
        "Hapgood, Isabel Florence/On the Significance of Science and Art.txt",
        "Tolstoy, Leo, graf/On the Significance of Science and Art.txt",
    ],
    [
        "Hawthorne, Nathaniel/A Wonder Book for Girls & Boys.txt",
        'Hawthorne, Nathaniel/The Miraculous Pitcher(From: "A Wonder-Book for Girls and Boys").txt',
    ],
]


def copy_books(corpus_dir: Path, names: list[str], target: Path) -> Path:
    for name in names:
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus_dir / "books" / name, destination)
    return target


@pytest.fixture(scope="module")
def small_books(corpus_dir, tmp_path_factory) -> Path:
    root = copy_books(corpus_dir, SMALL_BOOKS, tmp_path_factory.mktemp("small_books"))
    (root / "Bad Inputs").mkdir()
    for name in BAD_INPUTS:
        shutil.copyfile(corpus_dir / "bad_inputs" / name, root / "Bad Inputs" / name)
    return root


def found_groups(books: Path, config: PrepareConfig) -> list[list[str]]:
    records, _ = scan_books(find_book_files(books), books, config)
    records.sort(key=lambda r: r.path)
    grouping = group_works(
        records,
        config.containment_threshold,
        config.min_shared_shingles,
        config.max_books_per_shingle,
        config.large_overlap_shingles,
        config.boilerplate_min_works,
    )
    return sorted(sorted(records[i].path for i in group) for group in grouping.groups)


def test_trap_files_are_grouped_into_works_and_controls_are_not(corpus_dir, tmp_path):
    books = copy_books(corpus_dir, TRAP_BOOKS, tmp_path / "books")
    assert found_groups(books, PrepareConfig(workers=1)) == TRAP_GROUPS


def small_config(books: Path, out: Path, **overrides) -> PrepareConfig:
    values = dict(
        books=str(books),
        out=str(out),
        hard_negatives=False,
        max_chunks_per_book=60,
        n_negative_per_book=6,
        workers=2,
        seed=7,
        holdout_authors="Orban",
    )
    values.update(overrides)
    return PrepareConfig(**values)


@pytest.fixture(scope="module")
def prepared(small_books, tmp_path_factory) -> Path:
    from bookmatch.prepare import run_prepare

    return run_prepare(small_config(small_books, tmp_path_factory.mktemp("prepared") / "data"))


def test_prepared_dataset_schema_manifest_and_skips(prepared):
    from datasets import load_from_disk

    from bookmatch.prepare.pairs import COLUMNS
    from bookmatch.storage import read_json

    dataset = load_from_disk(str(prepared))
    manifest = read_json(prepared / "manifest.json")
    assert sorted(dataset) == ["test", "train", "validation"]
    assert manifest["complete"] is True and (prepared / "config.yaml").exists()
    assert manifest["books_found"] == len(SMALL_BOOKS) + len(BAD_INPUTS)
    assert manifest["books_used"] == len(SMALL_BOOKS)
    assert sorted(s["path"] for s in manifest["skipped"]) == sorted(f"Bad Inputs/{n}" for n in BAD_INPUTS)
    assert all(s["reason"] for s in manifest["skipped"])
    assert sorted(map(sorted, manifest["duplicate_groups"])) == [
        ["Jowett, Benjamin/Laches.txt", "Plato/Laches.txt"],
        [
            "Smith, Geoffrey Bache/A Spring Harvest (English).txt",
            "Tolkien, J. R. R. (John Ronald Reuel)/A Spring Harvest.txt",
        ],
    ]
    assert (
        len(manifest["book_work"]) == len(SMALL_BOOKS)
        and len(set(manifest["book_work"].values())) == len(SMALL_BOOKS) - 2
    )
    assert set(manifest["timings"]) >= {"scan", "dedup", "splits", "pairs", "save"}
    for name, split in dataset.items():
        assert tuple(split.column_names) == COLUMNS
        assert set(split["label"]) <= {0, 1}
        counts = manifest["counts"][name]
        assert counts["total"] == len(split) and counts["positive"] == sum(split["label"])
    total_pos = sum(sum(s["label"]) for s in dataset.values())
    total = sum(len(s) for s in dataset.values())
    assert total > 0 and abs(total_pos - (total - total_pos)) <= 0.2 * total


def test_no_work_in_two_splits_and_no_negative_joins_copies(prepared):
    from datasets import load_from_disk

    from bookmatch.storage import read_json

    dataset = load_from_disk(str(prepared))
    manifest = read_json(prepared / "manifest.json")
    work = manifest["book_work"]
    split_of_work: dict[str, set[str]] = {}
    for name, books in manifest["split_books"].items():
        for book in books:
            split_of_work.setdefault(work[book], set()).add(name)
    assert all(len(splits) == 1 for splits in split_of_work.values())
    assert all(split_of_work[work[b]] == {"test"} for b in work if b.startswith("orban_paul/"))
    for name, split in dataset.items():
        allowed = set(manifest["split_books"][name])
        for row in split:
            assert row["book1"] in allowed and row["book2"] in allowed
            if row["label"] == 0:
                assert work[row["book1"]] != work[row["book2"]]
                assert row["neg_type"] in {"same_author", "same_topic", "random"}  # mining is off
            else:
                assert row["book1"] == row["book2"] and row["text1"] != row["text2"]


def test_sharded_prepare_and_merge_give_the_identical_dataset(small_books, prepared, tmp_path):
    from datasets import load_from_disk

    from bookmatch.prepare.shards import merge_shards, prepare_shard
    from bookmatch.storage import read_json

    config = small_config(small_books, tmp_path / "merged", workers=1)
    for index in range(3):
        prepare_shard(small_books, tmp_path / "shards", index, 3, config)
    merged = merge_shards(tmp_path / "shards", tmp_path / "merged", config, wait_timeout=0)
    single, sharded = load_from_disk(str(prepared)), load_from_disk(str(merged))
    for name in single:
        assert single[name].to_list() == sharded[name].to_list()
    a, b = read_json(prepared / "manifest.json"), read_json(merged / "manifest.json")
    for key in (
        "books_found",
        "books_used",
        "skipped",
        "duplicate_groups",
        "book_work",
        "split_books",
        "counts",
        "text_removed",
    ):
        assert a[key] == b[key], key


def test_merge_waits_for_missing_shards_then_says_which(small_books, tmp_path):
    from bookmatch.errors import BookmatchError
    from bookmatch.prepare.shards import merge_shards, prepare_shard

    config = small_config(small_books, tmp_path / "out", workers=1)
    prepare_shard(small_books, tmp_path / "shards", 0, 4, config)
    with pytest.raises(BookmatchError, match=r"\[1, 2, 3\]"):
        merge_shards(tmp_path / "shards", tmp_path / "out", config, wait_timeout=0.3, poll_interval=0.1)
    assert not (tmp_path / "out").exists()


def test_another_seed_gives_another_dataset(small_books, prepared, tmp_path):
    from datasets import load_from_disk

    from bookmatch.prepare import run_prepare

    other = run_prepare(small_config(small_books, tmp_path / "other", seed=8, workers=1))
    assert load_from_disk(str(other))["train"]["text1"] != load_from_disk(str(prepared))["train"]["text1"]


def test_hard_negatives_with_a_tiny_miner(small_books, tiny_encoder_dir, tmp_path):
    from datasets import load_from_disk

    from bookmatch.prepare import run_prepare
    from bookmatch.storage import read_json

    config = small_config(
        small_books,
        tmp_path / "mined",
        hard_negatives=True,
        miner_model=str(tiny_encoder_dir),
        num_chunks_for_embed=4,
        num_hard_negative_books=3,
        holdout_authors="",
        train_ratio=1.0,
        val_ratio=0.0,
        workers=1,
    )
    out = run_prepare(config)
    manifest = read_json(out / "manifest.json")
    assert manifest["chunks_embedded"] == 4 * len(SMALL_BOOKS)
    train = load_from_disk(str(out))["train"]
    hard = [row for row in train if row["neg_type"] == "hard"]
    assert hard, "mining is on: some negatives must be hard"
    work = manifest["book_work"]
    assert all(work[row["book1"]] != work[row["book2"]] and row["label"] == 0 for row in hard)


def test_cli_bare_form_with_yaml_config_and_one_line_errors(small_books, tmp_path):
    import yaml
    from click.testing import CliRunner

    from bookmatch.cli import main

    config_file = tmp_path / "prepare.yaml"
    config_file.write_text(
        yaml.safe_dump({"hard_negatives": False, "max_chunks_per_book": 30, "n_negative_per_book": 3, "workers": 1})
    )
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "prepare",
            "--books",
            str(small_books),
            "--out",
            str(tmp_path / "cli"),
            "--config",
            str(config_file),
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())
    assert saved["max_chunks_per_book"] == 30 and saved["seed"] == 3 and saved["hard_negatives"] is False

    missing = runner.invoke(main, ["prepare", "--books", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 4
    assert "error: books folder" in missing.output and "Traceback" not in missing.output
    bad = runner.invoke(
        main, ["prepare", "--books", str(small_books), "--out", str(tmp_path / "x"), "--train-ratio", "1.5"]
    )
    assert bad.exit_code == 4 and "error: prepare config" in bad.output


# Every group of books sharing text in the development corpus, checked by hand from titles and the shared
# word runs (README: "about 50 pairs of files are the same text, in whole or in large part").
CORPUS_GROUPS = [
    ["Bunin, Ivan Alekseevich/The Village.txt", "Hapgood, Isabel Florence/The Village.txt"],
    # Under Ground is the manuscript Wonderland grew from: half its text is in Wonderland word for word
    [
        "Carroll, Lewis/Alice's Adventures Under Ground\rBeing a facsimile of the original Ms. book afterwards developed into \"Alice's Adventures in Wonderland\".txt",
        "Carroll, Lewis/Alice's Adventures in Wonderland.txt",
        "Carroll, Lewis/Alice's Adventures in WonderlandIllustrated by Arthur Rackham. With a Proem by Austin Dobson.txt",
    ],
    [
        "Cervantes Saavedra, Miguel de/The History of Don Quixote, Volume 1, Complete.txt",
        "Cervantes Saavedra, Miguel de/The History of Don Quixote, Volume 1, Part 13.txt",
        "Doré, Gustave/The History of Don Quixote, Volume 1, Part 15.txt",
        "Ormsby, John/The History of Don Quixote, Volume 1, Part 04.txt",
        "Ormsby, John/The History of Don Quixote, Volume 1, Part 09.txt",
        "Ormsby, John/The History of Don Quixote, Volume 1, Part 12.txt",
        "Ormsby, John/The History of Don Quixote, Volume 1, Part 13.txt",
        "Ormsby, John/The History of Don Quixote, Volume 1, Part 14.txt",
        "Ormsby, John/The History of Don Quixote, Volume 1, Part 15.txt",
    ],
    ["Chekhov, Anton Pavlovich/Best Russian Short Stories.txt", "Dostoyevsky, Fyodor/Best Russian Short Stories.txt"],
    [
        "Dante Alighieri/Divine Comedy, Cary's Translation, Purgatory.txt",
        "Dante Alighieri/The Divine Comedy by Dante, Illustrated, Purgatory, Volume 5.txt",
    ],
    [
        "Dostoyevsky, Fyodor/Notes from the Underground.txt",
        "Dostoyevsky, Fyodor/White Nights and Other StoriesThe Novels of Fyodor Dostoevsky, Volume X.txt",
    ],
    # three collections printing many of the same tales in the same translation (thousands of words shared)
    [
        "Grimm, Jacob/Grimm's Fairy Stories.txt",
        "Grimm, Jacob/Grimm's Fairy Tales.txt",
        "Grimm, Jacob/Grimms' Fairy Tales.txt",
        "Grimm, Wilhelm/Grimm's Fairy Stories.txt",
        "Grimm, Wilhelm/Grimm's Fairy Tales.txt",
        "Grimm, Wilhelm/Grimms' Fairy Tales.txt",
    ],
    [
        "Grimm, Jacob/Household Stories by the Brothers Grimm.txt",
        "Grimm, Wilhelm/Household Stories by the Brothers Grimm.txt",
    ],
    ["Grimm, Jacob/Snowdrop & Other Tales.txt", "Grimm, Wilhelm/Snowdrop & Other Tales.txt"],
    [
        "Hapgood, Isabel Florence/On the Significance of Science and Art.txt",
        "Tolstoy, Leo, graf/On the Significance of Science and Art.txt",
        "Tolstoy, Leo, graf/What to Do? Thoughts Evoked by the Census of Moscow.txt",
    ],
    [
        "Hawthorne, Nathaniel/A Wonder Book for Girls & Boys.txt",
        'Hawthorne, Nathaniel/The Miraculous Pitcher(From: "A Wonder-Book for Girls and Boys").txt',
    ],
    ["Hesse, Hermann/Siddhartha: A Poem of India.txt", "Wyllie, David/Siddhartha: A Poem of India.txt"],
    ["Hoskins, Gayle Porter/'Me--Smith'.txt", "Lockhart, Caroline/'Me--Smith'.txt"],
    ["Hoskins, Gayle Porter/The Lady Doc.txt", "Lockhart, Caroline/The Lady Doc.txt"],
    # two anthologies and Maupassant's collections printing the same stories (Zadig, "The Necklace"...)
    [
        "Hugo, Victor/International Short Stories: French.txt",
        "Maupassant, Guy de/A Selection from the Writings of Guy De Maupassant, Vol. I.txt",
        "Maupassant, Guy de/Notre Coeur; or, A Woman's Pastime: A Novel.txt",
        "Maupassant, Guy de/Original Short Stories — Volume 10.txt",
        "Maupassant, Guy de/The Works of Guy de Maupassant, Volume 2.txt",
        "Maupassant, Guy de/Une Vie, a Piece of String and Other Stories.txt",
        "Voltaire/International Short Stories: French.txt",
        "Voltaire/Library of the World's Best Mystery and Detective Stories.txt",
    ],
    ["Ibsen, Henrik/A Doll's House : a play.txt", "Ibsen, Henrik/A Doll's House.txt"],
    ["Jowett, Benjamin/Laches.txt", "Plato/Laches.txt"],
    ["Jowett, Benjamin/Laws.txt", "Plato/Laws.txt"],
    ["Kafka, Franz/Metamorphosis.txt", "Wyllie, David/Metamorphosis.txt"],
    ["Kafka, Franz/The Trial.txt", "Wyllie, David/The Trial.txt"],
    [
        "Kemble, E. W. (Edward Windsor)/Adventures of Huckleberry Finn.txt",
        "Kemble, E. W. (Edward Windsor)/The Adventures of Huckleberry Finn.txt",
    ],
    ["Maude, Aylmer/Master and Man.txt", "Maude, Louise/Master and Man.txt"],
    ["Maude, Aylmer/The Light Shines in Darkness.txt", "Tolstoy, Leo, graf/The Light Shines in Darkness.txt"],
    ["Maude, Aylmer/The Live Corpse.txt", "Maude, Louise/The Live Corpse.txt"],
    [
        "Maude, Aylmer/The Power of Darkness.txt",
        "Maude, Louise/The Power of Darkness.txt",
        "Tolstoy, Leo, graf/The Power of Darkness.txt",
    ],
    ["Maude, Louise/Father Sergius.txt", "Tolstoy, Leo, graf/Father Sergius.txt"],
    [
        "Milton, John/L'Allegro, Il Penseroso, Comus, and Lycidas.txt",
        "Milton, John/Milton's Comus.txt",
        "Milton, John/Milton: Minor Poems.txt",
        "Milton, John/The Poetical Works of John Milton.txt",
    ],
    # poems in collected editions (verse line numbers broke whole-sentence matching; word runs survive them)
    [
        "Pope, Alexander/An Essay on Criticism.txt",
        "Pope, Alexander/An Essay on Man; Moral Essays and Satires.txt",
        "Pope, Alexander/Letters of Abelard and Heloise\rTo which is prefix'd a particular account of their lives, amours, and misfortunes.txt",
        "Pope, Alexander/The Poetical Works of Alexander Pope, Volume 1.txt",
        "Pope, Alexander/The Works of Alexander Pope, Volume 2.txt",
    ],
    [
        "Potter, Beatrix/A Collection of Beatrix Potter Stories.txt",
        "Potter, Beatrix/The Great Big Treasury of Beatrix Potter.txt",
    ],
    ["Shakespeare, William/Henry VI, Part 2.txt", "Shakespeare, William/The Second Part of King Henry the Sixth.txt"],
    [
        "Smith, Geoffrey Bache/A Spring Harvest (English).txt",
        "Tolkien, J. R. R. (John Ronald Reuel)/A Spring Harvest.txt",
    ],
]


@pytest.mark.slow
def test_whole_corpus_duplicate_works_are_exactly_the_known_groups(corpus_dir):
    groups = found_groups(corpus_dir / "books", PrepareConfig(workers=2))
    # The README's named traps, spelled out so a failure says which one broke.
    for trap in TRAP_GROUPS:
        assert any(set(trap) <= set(group) for group in groups), trap
    # Nothing else merged: in particular no two different books of one author (Gibbon's volumes, Don Quixote
    # volume 2 parts, the Grimm collections that share only a few tales, a boys' series whose books share
    # only their publisher's front matter and advertisements).
    assert groups == sorted(sorted(g) for g in CORPUS_GROUPS)


def test_cli_shard_and_merge(small_books, tmp_path):
    from click.testing import CliRunner
    from datasets import load_from_disk

    from bookmatch.cli import main

    runner = CliRunner()
    common = ["--no-hard-negatives", "--max-chunks-per-book", "20", "--n-negative-per-book", "2", "--workers", "1"]
    for index in range(2):
        result = runner.invoke(
            main,
            [
                "prepare",
                "shard",
                "--books",
                str(small_books),
                "--out",
                str(tmp_path / "shards"),
                "--shard-index",
                str(index),
                "--num-shards",
                "2",
                *common,
            ],
        )
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["shard-00000-of-00002", "shard-00001-of-00002"]
    result = runner.invoke(
        main, ["prepare", "merge", "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "data"), *common]
    )
    assert result.exit_code == 0, result.output
    dataset = load_from_disk(str(tmp_path / "data"))
    assert sum(len(split) for split in dataset.values()) > 0
    wrong = runner.invoke(
        main,
        ["prepare", "merge", "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "x"), "--chunk-size", "9"],
    )
    assert wrong.exit_code == 4 and "chunked with" in wrong.output
