"""`bookmatch baselines`: its figures against direct computations (sklearn, sentence-transformers, `evaluate`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score
from test_training import _synthetic_books, make_pair_dataset

from bookmatch.cli import main
from bookmatch.errors import InputError
from bookmatch.evaluation.baselines import BaselinesConfig, run_baselines
from bookmatch.evaluation.bootstrap import auc_interval, resampled_aucs, stratified_resamples

TFIDF_CHAR = "char 1-4-gram TF-IDF cosine"
TFIDF_WORD = "word TF-IDF cosine"


def _write_pairs(path: Path, books: dict[str, list[str]], n: int, seed: int = 0) -> Path:
    """Labelled pairs with the corpus file's kinds: positive, neg_same_author, neg_other_author (n of each)."""
    rng = random.Random(seed)
    names = sorted(books)
    author = {name: name.split("/")[0] for name in names}
    rows = []
    for i in range(3 * n):
        book = rng.choice(names)
        kind = ("positive", "neg_same_author", "neg_other_author")[i % 3]
        if kind == "positive":
            other = book
        else:
            same = kind == "neg_same_author"
            other = rng.choice([b for b in names if b != book and (author[b] == author[book]) == same])
        a, b = rng.sample(books[book], 1)[0], rng.choice([c for c in books[other] if c != books[book][0]])
        rows.append({"text1": a, "text2": b, "label": int(kind == "positive"), "kind": kind})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def books() -> dict[str, list[str]]:
    return _synthetic_books(9, 12, seed=3)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory, books) -> Path:
    return _write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", books, 30)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------------ the bootstrap


def test_the_rank_auc_of_each_resample_equals_sklearns_ties_included():
    rng = np.random.default_rng(0)
    labels = np.array([1] * 20 + [0] * 35)
    scores = np.round(rng.normal(size=55) + labels, 1)  # rounded: many tied scores
    resamples = stratified_resamples(labels, 50, seed=7)
    fast = resampled_aucs(scores, resamples, int(labels.sum()))
    plain = [roc_auc_score(labels[row], scores[row]) for row in resamples]
    np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-12)
    assert (labels[resamples[:, :20]] == 1).all() and (labels[resamples[:, 20:]] == 0).all()


def test_the_interval_is_reproducible_with_its_seed_and_holds_the_estimate():
    rng = np.random.default_rng(1)
    labels = np.array([1, 0] * 40)
    scores = rng.normal(size=80) + 0.8 * labels
    point = roc_auc_score(labels, scores)
    low, high = auc_interval(labels, scores, n_resamples=500, seed=3)
    assert (low, high) == auc_interval(labels, scores, n_resamples=500, seed=3)
    assert (low, high) != auc_interval(labels, scores, n_resamples=500, seed=4)
    assert low < point < high and high - low < 0.4
    plain = [roc_auc_score(labels[row], scores[row]) for row in stratified_resamples(labels, 500, 3)]
    assert (low, high) == pytest.approx(tuple(np.percentile(plain, [2.5, 97.5])), abs=1e-12)


# ------------------------------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def report(tmp_path_factory, pairs_file, models, tiny_encoder_dir):
    """One run of the command: TF-IDF, the tiny encoder zero-shot, and the tiny bi-encoder and cross-encoder."""
    import shutil

    root = tmp_path_factory.mktemp("baselines")
    calibrated = root / "bi" / "final"  # a calibrated copy of the bi-encoder: scored by its calibration
    shutil.copytree(models["bi"], calibrated)
    calibration = {"model_kind": "bi-encoder", "temperature": 2.5, "offset": 0.3, "threshold": 0.45}
    (calibrated.parent / "calibration.json").write_text(json.dumps(calibration))
    out = root / "report"
    args = ["baselines", "--pairs", str(pairs_file), "--report", str(out), "--model", str(calibrated)]
    args += ["--model", str(models["cross"]), "--st-model", str(tiny_encoder_dir), "--st-seq-length", "48"]
    args += ["--bootstrap", "300", "--seed", "5", "--precision", "no"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout), calibrated


def test_tfidf_auc_and_its_interval_equal_a_direct_computation(report, pairs_file):
    from sklearn.feature_extraction.text import TfidfVectorizer

    out, printed, _ = report
    result = json.loads((out / "baselines.json").read_text())
    rows = _rows(pairs_file)
    labels = np.array([r["label"] for r in rows])
    kinds = np.array([r["kind"] for r in rows])
    texts = sorted({r["text1"] for r in rows} | {r["text2"] for r in rows})
    for name, args in ((TFIDF_CHAR, {"analyzer": "char", "ngram_range": (1, 4)}), (TFIDF_WORD, {})):
        vectors = TfidfVectorizer(sublinear_tf=True, **args).fit(texts)
        a, b = vectors.transform([r["text1"] for r in rows]), vectors.transform([r["text2"] for r in rows])
        cosine = np.array([(a[i] @ b[i].T).toarray()[0, 0] for i in range(len(rows))])
        figures = result["auc"][name]
        assert set(figures) == {"all", "neg_same_author", "neg_other_author"}  # positives vs all negatives = "all"
        assert figures["all"]["auc"] == pytest.approx(roc_auc_score(labels, cosine), abs=1e-12)
        assert printed["auc"][name]["all"] == round(figures["all"]["auc"], 4)
        for kind in ("neg_same_author", "neg_other_author"):
            mask = (kinds == kind) | (labels == 1)
            assert figures[kind]["auc"] == pytest.approx(roc_auc_score(labels[mask], cosine[mask]), abs=1e-12)
        # the interval: the percentiles of sklearn's AUC over the documented resamples (seed 5, 300)
        plain = [roc_auc_score(labels[r], cosine[r]) for r in stratified_resamples(labels, 300, 5)]
        low, high = np.percentile(plain, [2.5, 97.5])
        assert (figures["all"]["low"], figures["all"]["high"]) == pytest.approx((low, high), abs=1e-9)
        assert figures["all"]["low"] <= figures["all"]["auc"] <= figures["all"]["high"]
    assert result["auc"][TFIDF_WORD]["all"]["auc"] > 0.7  # book-specific words: TF-IDF separates the books


def test_zero_shot_auc_equals_the_models_own_cosines(report, pairs_file, tiny_encoder_dir):
    from sentence_transformers import SentenceTransformer

    out, _, _ = report
    result = json.loads((out / "baselines.json").read_text())
    rows = _rows(pairs_file)
    model = SentenceTransformer(str(tiny_encoder_dir), device="cpu")
    model.max_seq_length = 48
    a = model.encode([r["text1"] for r in rows], normalize_embeddings=True)
    b = model.encode([r["text2"] for r in rows], normalize_embeddings=True)
    cosine = (a * b).sum(axis=1)
    name = f"{tiny_encoder_dir.name} zero-shot cosine"
    expected = roc_auc_score([r["label"] for r in rows], cosine)
    assert result["auc"][name]["all"]["auc"] == pytest.approx(expected, abs=1e-4)  # batch padding: float noise


def test_model_figures_equal_bookmatch_evaluate_on_the_same_pairs(report, pairs_file, models, tmp_path):
    out, _, calibrated = report
    result = json.loads((out / "baselines.json").read_text())
    for kind in ("bi-encoder", "cross-encoder"):
        [name] = [n for n in result["methods"] if n.startswith(f"bookmatch {kind}")]
        args = ["evaluate", "--model", str(calibrated), "--pairs", str(pairs_file), "--report", str(tmp_path / kind)]
        if kind == "cross-encoder":  # with the prefilter at 0 the cross-encoder decides every pair
            args += ["--cross-model", str(models["cross"]), "--mode", "two-stage", "--prefilter-threshold", "0"]
        run = CliRunner().invoke(main, [*args, "--precision", "no"])
        assert run.exit_code == 0, run.output
        metrics = json.loads((tmp_path / kind / "metrics.json").read_text())["calibrated"]
        assert metrics["threshold"] == (0.45 if kind == "bi-encoder" else 0.5)
        mine = result["methods"][name]["metrics"]
        for key in ("threshold", "auc", "accuracy", "f1", "brier", "ece", "c_at_1", "f05u", "average_precision"):
            assert mine[key] == pytest.approx(metrics[key], abs=1e-9), (kind, key)
        assert result["auc"][name]["all"]["auc"] == pytest.approx(metrics["auc"], abs=1e-12)


def test_report_files_show_the_figures(report):
    out, _, _ = report
    result = json.loads((out / "baselines.json").read_text())
    text = (out / "report.md").read_text()
    figures = result["auc"][TFIDF_CHAR]["neg_same_author"]
    assert f"{figures['auc']:.3f} [{figures['low']:.3f}, {figures['high']:.3f}]" in text
    assert "| neg_same_author |" in text and "![ROC curves](roc.png)" in text
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = _rows(out / "scores.jsonl")
    assert len(scores) == result["pairs"] == 90 and set(result["methods"]) <= set(scores[0])
    assert len(result["methods"]) == 5


def test_the_stock_recipe_trains_and_is_scored_beside_zero_shot(tmp_path, books, pairs_file, tiny_encoder_dir):
    data = make_pair_dataset(tmp_path / "data", books, n_train=64, n_val=20)
    config = BaselinesConfig(
        pairs_file=str(pairs_file),
        report_dir=str(tmp_path / "report"),
        tfidf=False,
        st_model=str(tiny_encoder_dir),
        st_seq_length=32,
        st_recipe_data=str(data),
        st_steps=3,
        st_batch_size=4,
        st_lr=1e-2,
        st_train_seq_length=32,
        bootstrap=50,
        precision="no",
    )
    result = run_baselines(config)
    zero, tuned = (result["auc"][n]["all"]["auc"] for n in result["methods"])
    assert list(result["methods"])[1].endswith("stock recipe cosine (3 steps)")
    assert zero != tuned and result["st_recipe_train_seconds"] > 0  # three steps at lr 1e-2 moved the encoder


def test_bad_input_is_one_line(tmp_path, pairs_file):
    one_class = tmp_path / "one.jsonl"
    one_class.write_text("".join(line + "\n" for line in pairs_file.read_text().splitlines() if '"label": 1' in line))
    with pytest.raises(InputError, match="both same-book"):
        run_baselines(BaselinesConfig(pairs_file=str(one_class), report_dir=str(tmp_path / "r"), zero_shot=False))
    result = CliRunner().invoke(main, ["baselines", "--pairs", str(tmp_path / "absent.jsonl"), "--report", "r"])
    assert result.exit_code == 4 and result.output.strip().startswith("error: pairs file")
    result = CliRunner().invoke(
        main, ["baselines", "--pairs", str(pairs_file), "--report", str(tmp_path / "r"), "--no-tfidf", "--no-zero-shot"]
    )
    assert result.exit_code == 4 and "nothing to compare" in result.output
