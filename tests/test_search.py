"""Source-book search: the exact search against a plain reference (faiss and numpy), the index folder, the CLI,
the Python API and POST /v1/search; and sentence evidence on planted cases."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from bookmatch.search import BookIndex, exact_top_m, faiss_available


def random_index(n_books: int = 7, per_book: int = 5, dim: int = 12, backend: str = "numpy") -> BookIndex:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n_books * per_book, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    books = [{"id": f"author/book{i}", "author": "author", "title": f"Book {i}"} for i in range(n_books)]
    return BookIndex(
        vectors,
        np.repeat(np.arange(n_books), per_book),
        books,
        [f"passage {i}" for i in range(len(vectors))],
        {"format": 1},
        backend=backend,
    )


def test_exact_top_m_is_every_inner_product_sorted() -> None:
    index = random_index()
    queries = np.random.default_rng(1).normal(size=(4, 12)).astype(np.float32)
    scores, rows = exact_top_m(index.vectors, queries, 9)
    full = queries @ index.vectors.T
    for q in range(4):
        reference = sorted(range(full.shape[1]), key=lambda r: (-full[q, r], r))[:9]
        assert rows[q].tolist() == reference
        assert np.allclose(scores[q], full[q, reference])


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
def test_faiss_and_numpy_find_the_same_books() -> None:
    queries = np.random.default_rng(2).normal(size=(5, 12)).astype(np.float32)
    by_numpy, by_faiss = random_index(backend="numpy"), random_index(backend="faiss")
    a, b = by_numpy.search_vectors(queries, k=4), by_faiss.search_vectors(queries, k=4)
    assert [[hit["book"] for hit in q] for q in a] == [[hit["book"] for hit in q] for q in b]
    assert [hit["score"] for q in a for hit in q] == pytest.approx([hit["score"] for q in b for hit in q], abs=1e-5)


def test_book_scores_are_their_best_passage_and_k_books_come_back() -> None:
    index = random_index()
    query = index.vectors[13] + 0.01  # nearest passage: row 13, book 2
    found = index.search_vectors(query / np.linalg.norm(query), k=7)[0]
    assert found[0]["book"] == "author/book2" and found[0]["passages"][0]["text"] == "passage 13"
    assert len(found) == 7 and len({hit["book"] for hit in found}) == 7
    full = index.vectors @ (query / np.linalg.norm(query))
    best_per_book = [full[index.passage_book == b].max() for b in range(7)]
    assert [hit["score"] for hit in found] == pytest.approx(sorted(best_per_book, reverse=True), abs=1e-5)


@pytest.fixture(scope="module")
def small_books(corpus_dir: Path, tmp_path_factory) -> Path:
    """Four short books of four authors, copied (the index reads a folder)."""
    import shutil

    out = tmp_path_factory.mktemp("books")
    chosen = []
    for folder in sorted(p for p in (corpus_dir / "books").iterdir() if p.is_dir()):
        files = sorted(
            (p for p in folder.glob("*.txt") if "\r" not in p.name and 60_000 < p.stat().st_size < 200_000),
            key=lambda p: p.stat().st_size,
        )
        if files:
            chosen.append(files[0])
        if len(chosen) == 4:
            break
    for path in chosen:
        (out / path.parent.name).mkdir()
        shutil.copyfile(path, out / path.parent.name / path.name)
    return out


@pytest.fixture(scope="module")
def built_index(small_books: Path, models, tmp_path_factory) -> Path:
    from bookmatch.cli import main

    out = tmp_path_factory.mktemp("index") / "idx"
    result = CliRunner().invoke(
        main,
        [
            "index",
            "--books",
            str(small_books),
            "--model",
            str(models["bi"]),
            "--out",
            str(out),
            "--passages-per-book",
            "6",
            "--precision",
            "no",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def test_index_folder_is_complete_and_search_finds_an_indexed_passage(built_index: Path, models) -> None:
    from bookmatch.cli import main

    manifest = json.loads((built_index / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["complete"] and manifest["books"] == 4 and manifest["passages"] == 24
    assert not list(built_index.parent.glob(".idx.tmp-*")), "a temp folder was left behind"
    index = BookIndex.load(built_index)
    passage, book = index.passages[8], index.books[index.passage_book[8]]["id"]
    result = CliRunner().invoke(
        main, ["search", "--index", str(built_index), "--text", passage, "-k", "3", "--precision", "no"]
    )
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)["books"]
    assert len(found) == 3 and found[0]["book"] == book
    assert found[0]["score"] == pytest.approx(1.0, abs=1e-4) and found[0]["passages"][0]["text"] == passage


def test_index_refuses_another_model(built_index: Path, models) -> None:
    import torch

    from bookmatch.errors import InputError
    from bookmatch.inference import load_bi_encoder

    model = load_bi_encoder(models["bi"])
    BookIndex.load(built_index).check_model(model)  # its own model passes
    with torch.no_grad():
        model.projection[0].bias.add_(0.5)
    with pytest.raises(InputError, match="another model"):
        BookIndex.load(built_index).check_model(model)


def test_search_through_the_service(built_index: Path, models) -> None:
    from test_serve import ThreadedServer

    from bookmatch.serve import ServeConfig, Service, create_app

    service = Service(ServeConfig(model=str(models["bi"]), index=str(built_index), precision="no"))
    service.load()
    assert service.ready, service.error
    index = BookIndex.load(built_index)
    with (
        ThreadedServer(create_app(service, load_in_background=False)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        assert client.get("/healthz").json()["search"] is True
        answer = client.post("/v1/search", json={"text": index.passages[20], "k": 2})
        assert client.post("/v1/search", json={"text": "a passage", "k": 0}).status_code == 422
    assert answer.status_code == 200
    assert answer.json()["books"][0]["book"] == index.books[index.passage_book[20]]["id"]


# --- evidence ---------------------------------------------------------------------------------------------

PLANTED_A = (
    "The rain came down over the valley. Old Tobias Quenworth walked slowly to the mill that morning. "
    "Martha and Lucas watched from the window. The dog barked twice at the gate. Nobody spoke at supper."
)
PLANTED_B = (
    "Winter had come early that year. Harriet sat by the fire with her sewing. "
    "It was said in the village that Quenworth kept gold under his floor. Edmund laughed at the idea. The clock struck nine."
)


@pytest.fixture(scope="module")
def names_model(tiny_encoder_dir, tmp_path_factory) -> Path:
    """A tiny bi-encoder whose margin is set to grow with its names-signature cosine (the classifier's weights
    are planted), so the evidence must find the sentences holding the shared name."""
    import torch
    from conftest import SAMPLE_TEXTS

    from bookmatch.models.bi_encoder import BiEncoder

    torch.manual_seed(0)
    model = BiEncoder.from_backbone(
        str(tiny_encoder_dir),
        projection_dim=16,
        classifier_hidden_dim=8,
        max_seq_length=64,
        lexical_buckets=512,
        lexical_top_k=8,
        name_top_k=8,
    )
    model.fit_lexical(
        list(SAMPLE_TEXTS) + [PLANTED_A, PLANTED_B, "Martha went home. Then Harriet and Lucas and Edmund met."]
    )
    first, last = model.classifier[0], model.classifier[3]
    # the scalars come last: lexical cosine, names cosine, then the pooled cosine (and MaxSim) when the model has them
    names_column = first.weight.shape[1] - 1 - int(model.config.pooled_cosine) - int(model.late_interaction)
    with torch.no_grad():
        first.weight.zero_(), first.bias.zero_(), last.weight.zero_(), last.bias.zero_()
        first.weight[0, names_column] = 1.0
        last.weight[1, 0] = 1.0
    out = tmp_path_factory.mktemp("names_model") / "final"
    model.save_pretrained(out)
    return out


def test_evidence_ranks_the_sentences_holding_a_shared_rare_name_first(names_model: Path) -> None:
    from bookmatch.explain import explain_pair
    from bookmatch.inference import Matcher

    evidence = explain_pair(Matcher.from_pretrained(names_model, precision="no"), PLANTED_A, PLANTED_B)
    assert evidence.shared_names[0]["name"] == "quenworth"
    top1, top2 = evidence.ranked(evidence.sentences1)[0], evidence.ranked(evidence.sentences2)[0]
    assert "Quenworth" in top1.text and "Quenworth" in top2.text
    assert top1.weight > 0 and top2.weight > 0
    assert len(evidence.sentences1) == 5 and len(evidence.sentences2) == 5
    # the reference: leaving the name's sentence out is what loses the most margin, scored one pair at a time
    matcher = Matcher.from_pretrained(names_model, precision="no")
    without = PLANTED_A.replace(" Old Tobias Quenworth walked slowly to the mill that morning.", "")
    lost = evidence.margin - float(matcher.bi.raw_scores([without], [PLANTED_B]).score[0])
    assert lost == pytest.approx(top1.weight, abs=1e-4)


def test_infer_explain_flag_prints_evidence(names_model: Path) -> None:
    from bookmatch.cli import main

    result = CliRunner().invoke(
        main,
        [
            "infer",
            "contrastive",
            "--model",
            str(names_model),
            "--text1",
            PLANTED_A,
            "--text2",
            PLANTED_B,
            "--explain",
            "--precision",
            "no",
        ],
    )
    assert result.exit_code == 0, result.output
    evidence = json.loads(result.stdout)["evidence"]
    assert "Quenworth" in evidence["top_sentences1"][0]["text"] and evidence["shared_names"][0]["name"] == "quenworth"
