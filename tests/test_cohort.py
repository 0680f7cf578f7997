"""Cohort score normalisation: the fast path against a plain reference, the cohort's selection, and calibrate ->
evaluate -> Matcher using one cohort, refused when its file is missing, altered or from another model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bookmatch.calibration import CalibrateConfig, calibrate
from bookmatch.cohort import COHORT_FILE, ScoreCohort, select_cohort_texts
from bookmatch.errors import InputError
from bookmatch.inference import BiEncoderScorer, Matcher
from bookmatch.inference.calibration import probability_from_margin

WORDS = "river harbour winter letter captain garden storm lamp orchard bridge candle market window doctor".split()


def _text(seed: int, length: int = 24) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, size=length)).capitalize() + "."


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """Books with 1, 3 and 6 passages in the train split; balanced validation and test splits."""
    from datasets import Dataset, DatasetDict

    def rows(books: dict[str, int], offset: int) -> list[dict]:
        out, seed = [], offset
        for book, count in books.items():
            for _ in range(count):
                out.append(
                    {
                        "text1": _text(seed),
                        "text2": _text(seed + 1),
                        "label": 1,
                        "book1": book,
                        "book2": book,
                        "neg_type": "",
                    }
                )
                out.append(
                    {
                        "text1": _text(seed + 2),
                        "text2": _text(seed + 3),
                        "label": 0,
                        "book1": book,
                        "book2": "other/x",
                        "neg_type": "random",
                    }
                )
                seed += 4
        return out

    out = tmp_path_factory.mktemp("cohort_data") / "processed"
    DatasetDict(
        {
            "train": Dataset.from_list(rows({"a/one": 1, "b/three": 3, "c/six": 6}, 0)),
            "validation": Dataset.from_list(rows({"d/v": 10}, 1000)),
            "test": Dataset.from_list(rows({"e/t": 6}, 2000)),
        }
    ).save_to_disk(str(out))
    return out


@pytest.fixture()
def run(models, tmp_path) -> Path:
    """The tiny bi-encoder in a run folder of its own (calibration files land in the run folder)."""
    shutil.copytree(models["bi"], tmp_path / "run" / "final")
    return tmp_path / "run" / "final"


def test_normalised_margins_match_a_plain_reference(models):
    import torch

    from bookmatch.models.bi_encoder import BiEncoder

    model = BiEncoder.from_pretrained(models["bi"])
    cohort_texts = [_text(i) for i in range(500, 507)]
    texts = [_text(i) for i in range(10)]
    pairs = [(texts[i], texts[j]) for i in range(10) for j in range(10) if i != j][:30]
    scorer = BiEncoderScorer(model, cache_size=0)
    scorer.cohort = ScoreCohort(*scorer.embed(cohort_texts))
    raw = scorer.raw_scores([a for a, _ in pairs], [b for _, b in pairs], batch_size=4)

    def margin(a: str, b: str) -> float:
        logits = model.pair_logits(model.encode_texts([a]), model.encode_texts([b]))[0]
        return float(logits[1] - logits[0])

    def affinity(text: str) -> float:
        return float(np.mean([margin(text, c) for c in cohort_texts]))

    reference = [0.5 * (margin(a, b) + margin(b, a)) - 0.5 * (affinity(a) + affinity(b)) for a, b in pairs]
    assert raw.normalized == pytest.approx(reference, abs=1e-4)
    assert raw.score is raw.normalized
    assert np.std(raw.normalized - raw.margin) > 1e-3  # the texts' affinities differ: normalising changes the order
    # cached affinities give the same values, and a cohort change drops them
    cached = BiEncoderScorer(model, cache_size=100, cohort=scorer.cohort)
    assert cached.raw_scores([a for a, _ in pairs], [b for _, b in pairs]).normalized == pytest.approx(
        reference, abs=1e-4
    )
    assert cached.raw_scores([a for a, _ in pairs], [b for _, b in pairs]).normalized == pytest.approx(
        reference, abs=1e-4
    )
    cached.cohort = ScoreCohort(*cached.embed(cohort_texts[:3]))
    assert not cached._affinities
    with torch.no_grad():
        other = ScoreCohort(torch.zeros(2, 7), torch.zeros(2, 16), torch.zeros(2, model.side_features.dim))
    with pytest.raises(InputError, match="built for another model"):
        cached.cohort = other


def test_cohort_texts_spread_over_the_books(dataset_dir):
    three = select_cohort_texts(dataset_dir, 3)
    train = __import__("datasets").load_from_disk(str(dataset_dir))["train"]
    book_of = {row[f"text{side}"]: row[f"book{side}"] for row in train for side in (1, 2)}
    # one passage of each of the three books before a second of any ("other/x" is a book too: four in all)
    assert len(set(three)) == 3 and len({book_of[t] for t in three}) == 3
    many = select_cohort_texts(dataset_dir, 1000)
    assert len(many) == len(set(many)) == len(book_of)
    assert select_cohort_texts(dataset_dir, 5) == select_cohort_texts(dataset_dir, 5)  # seeded
    assert select_cohort_texts(dataset_dir, 0) == [] and select_cohort_texts(dataset_dir, 5, split="nope") == []


def test_calibrate_evaluate_and_matcher_share_the_cohort(run, dataset_dir, tmp_path):
    from bookmatch.evaluation.evaluate import EvaluateConfig, evaluate

    result = calibrate(
        CalibrateConfig(model_dir=str(run), data_dir=str(dataset_dir), cohort_size=6, precision="no", device="cpu")
    )
    written = json.loads((run.parent / "calibration.json").read_text())
    assert written["score_normalization"]["texts"] == 6 == result["score_normalization"]["texts"]
    assert (run.parent / COHORT_FILE).exists()

    matcher = Matcher.from_pretrained(run, device="cpu", precision="no")
    assert matcher.bi.cohort is not None and len(matcher.bi.cohort) == 6
    validation = __import__("datasets").load_from_disk(str(dataset_dir))["validation"]
    pairs = list(zip(validation["text1"], validation["text2"]))
    raw = matcher.bi.raw_scores(*zip(*pairs))
    expected = probability_from_margin(raw.normalized, written["temperature"], written["offset"])
    assert [r.probability for r in matcher.score_many(pairs)] == pytest.approx(expected.tolist(), abs=1e-6)

    report = tmp_path / "report"
    evaluate(
        EvaluateConfig(
            model_dir=str(run),
            data_dir=str(dataset_dir),
            split="validation",
            report_dir=str(report),
            precision="no",
            device="cpu",
        )
    )
    predictions = [json.loads(line) for line in (report / "predictions.jsonl").read_text().splitlines()]
    assert [p["probability"] for p in predictions] == pytest.approx(expected.tolist(), abs=1e-5)
    # uncalibrated figures stay the model's own (symmetric) margin
    assert [p["uncalibrated_probability"] for p in predictions] == pytest.approx(
        probability_from_margin(raw.margin).tolist(), abs=1e-5
    )
    assert json.loads((report / "metrics.json").read_text())["calibration"]["score_cohort"] == 6
    assert "score_cohort 6" in (report / "report.md").read_text()


def test_a_missing_altered_or_stale_cohort_file_is_handled(run, dataset_dir):
    calibrate(
        CalibrateConfig(model_dir=str(run), data_dir=str(dataset_dir), cohort_size=4, precision="no", device="cpu")
    )
    cohort_file = run.parent / COHORT_FILE
    good = cohort_file.read_bytes()
    cohort_file.write_bytes(good[:-8] + b"\x00" * 8)
    with pytest.raises(InputError, match="not the one calibration.json was fitted with") as info:
        Matcher.from_pretrained(run, device="cpu", precision="no")
    assert "re-run `bookmatch calibrate`" in str(info.value) and "\n" not in str(info.value)
    cohort_file.unlink()
    with pytest.raises(InputError, match="cannot be read"):
        Matcher.from_pretrained(run, device="cpu", precision="no")
    # calibrating without a cohort removes the old file and writes a calibration that needs none
    cohort_file.write_bytes(good)
    written = calibrate(
        CalibrateConfig(model_dir=str(run), data_dir=str(dataset_dir), cohort_size=0, precision="no", device="cpu")
    )
    assert written["score_normalization"] is None and not cohort_file.exists()
    assert Matcher.from_pretrained(run, device="cpu", precision="no").bi.cohort is None


def test_pairs_without_a_train_split_calibrate_without_a_cohort(run, tmp_path, caplog):
    rows = [{"text1": _text(i), "text2": _text(i + 1 if i % 2 else i + 50), "label": i % 2} for i in range(20)]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("WARNING"):
        written = calibrate(CalibrateConfig(model_dir=str(run), pairs_file=str(pairs), precision="no", device="cpu"))
    assert written["score_normalization"] is None and "not normalised" in caplog.text


@pytest.mark.parametrize(
    "features",
    [
        {"lexical_buckets": 0, "pooled_cosine": False},  # the plain model
        {"lexical_buckets": 64, "lexical_top_k": 8, "name_top_k": 4, "pooled_cosine": True},
    ],
)
def test_margins_against_equal_the_classifier_on_every_pair(tiny_encoder_dir, features):
    import torch

    from bookmatch.inference.calibration import logit_margin
    from bookmatch.models.bi_encoder import BiEncoder, TextEmbeddings

    torch.manual_seed(3)
    model = BiEncoder.from_backbone(
        str(tiny_encoder_dir), projection_dim=8, classifier_hidden_dim=24, max_seq_length=32, **features
    )
    texts = [_text(i, length=10 + i) + " Mr. Harbour met Captain Lamp in London." * (i % 3) for i in range(9)]
    if model.lexical is not None:
        model.fit_lexical(texts)
    emb = model.encode_texts(texts)
    emb = TextEmbeddings(emb.pooled * 3, emb.projected, emb.style)  # margins far from 0, so a wrong term shows
    a, b = emb.take(slice(0, 4)), emb.take(slice(4, None))
    fast = model.margins_against(a, b, max_rows=7)  # blocks that split the texts unevenly
    rows = a.take(torch.arange(4).repeat_interleave(5)), b.take(torch.arange(5).repeat(4))  # every (a, b) pair
    reference = torch.from_numpy(logit_margin(model.pair_logits(*rows))).float().reshape(4, 5)
    assert torch.allclose(fast, reference, atol=1e-4), (fast - reference).abs().max()
    assert reference.std() > 1e-3
