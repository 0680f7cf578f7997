"""`bookmatch calibrate` and `bookmatch evaluate` end to end on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bookmatch.cli import main
from bookmatch.errors import InputError
from bookmatch.evaluation.metrics import compute_metrics

SENTENCES = [
    "The rain had not stopped for three days and the river was rising fast.",
    "Her aunt kept a small shop near the church, where she sold thread and ribbons.",
    "Nobody in the village could remember a harder winter than that one.",
    "The doctor arrived late, muddy to the knees, and asked for a glass of water.",
    "They sailed at dawn, with the tide, and the coast was soon a grey line behind them.",
    "He laughed at the idea, but afterwards he thought about it for a long time.",
    "The letter was short, and it said nothing of what she had hoped to read.",
    "Above the town the hills were brown and bare, and the road wound up among them.",
]


def _passage(seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(SENTENCES[i] for i in rng.permutation(len(SENTENCES))[:5])


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """A DatasetDict with the columns `bookmatch prepare` writes (texts made up here, labels balanced)."""
    from datasets import Dataset, DatasetDict

    def split(offset: int, n: int) -> Dataset:
        rows = []
        for i in range(n):
            label = int(i % 2 == 0)
            neg_type = "" if label else ("hard" if i % 4 == 1 else "random")
            rows.append(
                {
                    "text1": _passage(offset + i),
                    "text2": _passage(offset + 1000 + i),
                    "label": label,
                    "book1": "a/b",
                    "book2": "a/b" if label else "c/d",
                    "pair_type": "positive" if label else "negative",
                    "neg_type": neg_type,
                    "topic1": 0,
                    "topic2": 0,
                    "same_topic": True,
                }
            )
        return Dataset.from_list(rows)

    out = tmp_path_factory.mktemp("data") / "processed"
    DatasetDict({"train": split(0, 8), "validation": split(100, 40), "test": split(200, 40)}).save_to_disk(str(out))
    return out


def _invoke(args):
    return CliRunner().invoke(main, args)


def test_calibrate_then_evaluate_dataset(models, dataset_dir, tmp_path):
    from bookmatch.precision import resolve_mixed_precision

    native_precision = resolve_mixed_precision("auto", use_cuda=False)
    calibration = models["bi"].parent / "calibration.json"
    style = models["bi"].parent / "style_calibration.json"
    cohort = models["bi"].parent / "score_cohort.safetensors"
    try:
        result = _invoke(
            ["calibrate", "--model", str(models["bi"]), "--data", str(dataset_dir), "--target", "f1", "--device", "cpu"]
        )
        assert result.exit_code == 0, result.output
        written = json.loads(calibration.read_text())
        assert written["target"] == "f1" and written["pairs"] == 40 and written["temperature"] > 0
        # the precision the scores were computed in is saved resolved (calibrate and evaluate default to auto)
        assert written["config"]["precision"] == native_precision
        knots = json.loads(style.read_text())
        assert np.all(np.diff(knots["x"]) >= 0) and np.all(np.diff(knots["y"]) >= 0)
        # the training split's 16 passages make the score cohort, fitted with the rest
        assert written["score_normalization"]["texts"] == 16 and cohort.exists()

        report = tmp_path / "report"
        result = _invoke(
            [
                "evaluate",
                "--model",
                str(models["bi"]),
                "--data",
                str(dataset_dir),
                "--report",
                str(report),
                "--device",
                "cpu",
                "--batch-size",
                "8",
            ]
        )
        assert result.exit_code == 0, result.output
    finally:
        for path in (calibration, style, cohort):
            path.unlink(missing_ok=True)

    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["precision"] == native_precision
    for setting in ("uncalibrated", "calibrated"):
        for name in (
            "accuracy",
            "precision",
            "recall",
            "f1",
            "auc",
            "average_precision",
            "brier",
            "ece",
            "c_at_1",
            "f05u",
        ):
            assert name in metrics[setting]
    assert metrics["calibrated"]["threshold"] == pytest.approx(written["threshold"])
    assert set(metrics["by_kind"]["calibrated"]) == {"positive", "hard", "random"}
    assert metrics["by_kind"]["calibrated"]["hard"]["auc_against"] == "all positives"

    predictions = [json.loads(line) for line in (report / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 40
    labels = [p["label"] for p in predictions]
    # the figures in metrics.json are those of the probabilities in predictions.jsonl
    recomputed = compute_metrics(labels, [p["probability"] for p in predictions], written["threshold"])
    assert metrics["calibrated"]["accuracy"] == pytest.approx(recomputed["accuracy"])
    assert metrics["calibrated"]["brier"] == pytest.approx(recomputed["brier"])
    # temperature and offset minimise NLL on the fitted split: never worse than T = 1 and no offset on the same
    # (cohort-normalised) margins, recovered here from the calibrated probabilities
    from scipy.special import logit

    from bookmatch.inference.calibration import binary_nll, probability_from_margin

    calibrated = np.clip([p["probability"] for p in predictions], 1e-7, 1 - 1e-7)
    normalized = logit(calibrated) * written["temperature"] + written["offset"]
    assert written["after"]["nll"] <= binary_nll(labels, probability_from_margin(normalized)) + 1e-4
    raw = compute_metrics(labels, [p["uncalibrated_probability"] for p in predictions], 0.5)
    assert metrics["uncalibrated"]["auc"] == pytest.approx(raw["auc"], abs=1e-4)
    assert [p["decision"] for p in predictions] == [int(p["probability"] >= written["threshold"]) for p in predictions]

    for png in ("roc.png", "reliability.png", "score_histograms.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (report / "report.md").read_text()
    assert "## By kind (calibrated)" in text and "| hard |" in text and "![ROC curve](roc.png)" in text
    assert (report / "config.yaml").exists()


def test_evaluate_pairs_file_two_stage(models, corpus_dir, tmp_path):
    report = tmp_path / "report"
    result = _invoke(
        [
            "evaluate",
            "--model",
            str(models["bi"]),
            "--cross-model",
            str(models["cross"]),
            "--mode",
            "two-stage",
            "--pairs",
            str(corpus_dir / "validation_pairs.jsonl"),
            "--max-pairs",
            "30",
            "--report",
            str(report),
            "--device",
            "cpu",
        ]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["pairs"] == 30 and metrics["calibrated"] is None  # no calibration files beside these models
    assert set(metrics["by_kind"]["uncalibrated"]) == {"positive", "neg_same_author", "neg_other_author"}
    predictions = [json.loads(line) for line in (report / "predictions.jsonl").read_text().splitlines()]
    stages = [p["stage"] for p in predictions]
    assert sum(metrics["stages"].values()) == 30 and metrics["stages"].get("cross-encoder", 0) == stages.count(
        "cross-encoder"
    )
    # a pair the bi-encoder rejects is a negative answer whatever the cross-encoder would say
    assert all(p["decision"] == 0 for p in predictions if p["stage"] == "bi-encoder")
    assert all(p["uncalibrated_probability"] < 0.5 for p in predictions if p["stage"] == "bi-encoder")


def test_evaluate_input_errors(models, dataset_dir, tmp_path):
    no_cross = _invoke(
        [
            "evaluate",
            "--model",
            str(models["bi"]),
            "--data",
            str(dataset_dir),
            "--mode",
            "two-stage",
            "--report",
            str(tmp_path / "r"),
        ]
    )
    assert no_cross.exit_code == InputError.exit_code and "--cross-model" in no_cross.stderr
    bad_split = _invoke(
        [
            "evaluate",
            "--model",
            str(models["bi"]),
            "--data",
            str(dataset_dir),
            "--split",
            "nope",
            "--report",
            str(tmp_path / "r"),
        ]
    )
    assert bad_split.exit_code == InputError.exit_code and "no split 'nope'" in bad_split.stderr
    both = _invoke(["calibrate", "--model", str(models["bi"]), "--data", str(dataset_dir), "--pairs", "x.jsonl"])
    assert both.exit_code == InputError.exit_code and "exactly one of --data" in both.stderr
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text(json.dumps({"text1": "a b", "text2": "c d"}) + "\n")
    missing_label = _invoke(["calibrate", "--model", str(models["bi"]), "--pairs", str(unlabelled)])
    assert missing_label.exit_code == InputError.exit_code and "line 1: missing field 'label'" in missing_label.stderr
    assert "Traceback" not in missing_label.output


def test_calibrate_cross_encoder_feeds_two_stage(models, dataset_dir):
    from bookmatch.inference import Matcher

    calibration = models["cross"].parent / "calibration.json"
    try:
        result = _invoke(["calibrate", "--model", str(models["cross"]), "--data", str(dataset_dir), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        written = json.loads(calibration.read_text())
        assert written["model_kind"] == "cross-encoder" and written["target"] == "accuracy"
        assert not (models["cross"].parent / "style_calibration.json").exists()
        matcher = Matcher.from_pretrained(models["bi"], cross_model=models["cross"], device="cpu")
        assert matcher.cross_threshold == pytest.approx(written["threshold"])
        assert matcher.cross_calibration.temperature == pytest.approx(written["temperature"])
    finally:
        calibration.unlink(missing_ok=True)


def test_calibrate_positional_form_matches_config_form(models, dataset_dir):
    from bookmatch.calibration import CalibrateConfig, calibrate

    try:
        by_config = calibrate(
            CalibrateConfig(model_dir=str(models["bi"]), data_dir=str(dataset_dir), target="f1", device="cpu")
        )
        by_args = calibrate(models["bi"], dataset_dir, "f1", device="cpu")
        assert by_args["temperature"] == pytest.approx(by_config["temperature"])
        assert by_args["threshold"] == pytest.approx(by_config["threshold"])
    finally:
        for name in ("calibration.json", "style_calibration.json", "score_cohort.safetensors"):
            (models["bi"].parent / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- review fixes


def _uncalibrated_copies(models, tmp_path) -> dict[str, Path]:
    """The tiny models in their own run folders: other tests calibrate the shared ones."""
    import shutil

    out = {}
    for kind in ("bi", "cross"):
        shutil.copytree(models[kind], tmp_path / kind / "final")
        out[kind] = tmp_path / kind / "final"
    return out


@pytest.mark.parametrize("prefilter", [0.0, 1.0])
def test_two_stage_prefilter_applies_without_calibration(models, dataset_dir, tmp_path, prefilter):
    from bookmatch.evaluation.evaluate import EvaluateConfig, evaluate
    from bookmatch.inference import Matcher

    own = _uncalibrated_copies(models, tmp_path)
    report = tmp_path / "report"
    metrics = evaluate(
        EvaluateConfig(
            model_dir=str(own["bi"]),
            cross_model_dir=str(own["cross"]),
            mode="two-stage",
            data_dir=str(dataset_dir),
            report_dir=str(report),
            prefilter_threshold=prefilter,
            max_pairs=12,
            precision="no",
            device="cpu",
        )
    )
    assert metrics["calibration"] is None and metrics["prefilter_threshold"] == prefilter
    predictions = [json.loads(line) for line in (report / "predictions.jsonl").read_text().splitlines()]
    from bookmatch.inference.pairs_file import load_labelled_pairs

    pairs = load_labelled_pairs(str(dataset_dir), "test", max_pairs=12)
    matcher = Matcher.from_pretrained(
        own["bi"], cross_model=own["cross"], device="cpu", precision="no", prefilter_threshold=prefilter
    )
    results = matcher.score_many(list(zip(pairs.text1, pairs.text2)), check=False)
    assert [p["stage"] for p in predictions] == [r.stage for r in results]
    assert [p["decision"] for p in predictions] == [int(r.same_book) for r in results]
    assert [p["probability"] for p in predictions] == pytest.approx([r.probability for r in results], abs=1e-5)
    expected_stage = "cross-encoder" if prefilter == 0.0 else "bi-encoder"
    assert metrics["stages"] == {expected_stage: 12}


def test_evaluate_report_folder_checked_before_scoring(models, dataset_dir, tmp_path, monkeypatch):
    from bookmatch.evaluation.evaluate import EvaluateConfig, evaluate
    from bookmatch.inference import BiEncoderScorer

    def never(*args, **kwargs):
        raise AssertionError("scored before checking the report folder")

    monkeypatch.setattr(BiEncoderScorer, "raw_scores", never)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(InputError, match=f"{a_file} is a file, not a folder"):
        evaluate(
            EvaluateConfig(
                model_dir=str(models["bi"]), data_dir=str(dataset_dir), report_dir=str(a_file / "rep"), precision="no"
            )
        )
    monkeypatch.undo()
    result = _invoke(
        [
            "evaluate",
            "--model",
            str(models["bi"]),
            "--data",
            str(dataset_dir),
            "--report",
            str(a_file / "rep"),
            "--precision",
            "no",
        ]
    )
    assert result.exit_code == InputError.exit_code and "Traceback" not in result.output


def test_evaluate_options_checked(models, dataset_dir, tmp_path):
    from bookmatch.config import ConfigError
    from bookmatch.evaluation.evaluate import EvaluateConfig

    with pytest.raises(ConfigError, match="mode must be one of"):
        EvaluateConfig(model_dir="m", report_dir="r", mode="twostage")
    for value in (0, -1):
        with pytest.raises(ConfigError, match="batch_size must be"):
            EvaluateConfig(model_dir="m", report_dir="r", batch_size=value)
    for command in (["evaluate", "--report", str(tmp_path / "r")], ["calibrate"]):
        result = _invoke(command + ["--model", str(models["bi"]), "--data", str(dataset_dir), "--batch-size", "0"])
        assert result.exit_code == 2 and "--batch-size" in result.output and "Traceback" not in result.output


def test_stage_markers_are_written_last(models, dataset_dir, tmp_path, monkeypatch):
    """A run cut after the first output file must not leave the file the pipeline takes as 'stage done'."""
    import bookmatch.calibration as calibration
    from bookmatch.evaluation import plots
    from bookmatch.evaluation.evaluate import EvaluateConfig, evaluate

    own = _uncalibrated_copies(models, tmp_path)

    def cut(*args, **kwargs):
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(calibration, "fit_style_calibration", cut)
    with pytest.raises(KeyboardInterrupt):
        calibration.calibrate(
            calibration.CalibrateConfig(
                model_dir=str(own["bi"]), data_dir=str(dataset_dir), max_pairs=20, precision="no", device="cpu"
            )
        )
    assert not (own["bi"].parent / "calibration.json").exists()

    monkeypatch.setattr(plots, "plot_roc", cut)
    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text("{}")  # left by an earlier run: must not survive a cut re-run
    with pytest.raises(KeyboardInterrupt):
        evaluate(
            EvaluateConfig(
                model_dir=str(own["bi"]),
                data_dir=str(dataset_dir),
                report_dir=str(report),
                max_pairs=20,
                precision="no",
                device="cpu",
            )
        )
    assert not (report / "metrics.json").exists()
