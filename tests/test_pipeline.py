"""The one-shot pipeline: presets are valid stage configs; a tiny end-to-end run skips finished stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from bookmatch.cli import main
from bookmatch.config import build_config
from bookmatch.pipeline import available_presets, load_stage_options


@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_builds_every_stage_config(preset):
    from bookmatch.calibration import CalibrateConfig
    from bookmatch.evaluation.evaluate import EvaluateConfig
    from bookmatch.prepare.config import PrepareConfig
    from bookmatch.training.config import ContrastiveTrainConfig, CrossTrainConfig

    options = load_stage_options(preset)
    build_config(PrepareConfig, overrides=options["prepare"])
    build_config(CrossTrainConfig, overrides=options["cross"])
    build_config(ContrastiveTrainConfig, overrides={**options["contrastive"], "teacher": ""})
    build_config(CalibrateConfig, overrides=options["calibrate"])
    build_config(EvaluateConfig, overrides=options["evaluate"])


def test_set_overrides_and_bad_keys():
    from bookmatch.config import ConfigError

    options = load_stage_options("cpu-small", sets=["cross.max_steps=3", "prepare.hard_negatives=false"])
    assert options["cross"]["max_steps"] == 3 and options["prepare"]["hard_negatives"] is False
    assert options["contrastive"]["teacher"] == ""  # cpu-small skips the teacher (see the preset)
    with pytest.raises(ConfigError):
        load_stage_options("cpu-small", sets=["nostage.x=1"])
    result = CliRunner().invoke(main, ["pipeline", "--preset", "nope", "--out", "x"])
    assert result.exit_code != 0 and "unknown preset" in result.output


def test_option_values_written_as_text_take_the_declared_types(tmp_path):
    """YAML reads 1e-4 (no dot) as a string; --set values are YAML: numbers and booleans in text are converted
    to the field's type, and a value that is neither fails with one line naming the stage and option, before
    the pipeline writes anything."""
    from bookmatch.config import ConfigError
    from bookmatch.prepare.config import PrepareConfig
    from bookmatch.training.config import ContrastiveTrainConfig

    options = load_stage_options("cpu-small", sets=["contrastive.lr=1e-4", "contrastive.max_steps=7"])
    built = build_config(ContrastiveTrainConfig, overrides={**options["contrastive"], "teacher": ""})
    assert built.lr == 1e-4 and isinstance(built.lr, float) and built.max_steps == 7
    yaml_file = tmp_path / "prepare.yaml"
    yaml_file.write_text("seed: '5'\nhard_negatives: 'no'\nn_positive_per_book: '12'\nmin_shared_shingles: 2.0\n")
    prepare = build_config(PrepareConfig, file=yaml_file)
    assert (prepare.seed, prepare.hard_negatives, prepare.n_positive_per_book, prepare.min_shared_shingles) == (
        5,
        False,
        12,
        2,
    )
    with pytest.raises(ConfigError, match='lr must be a number >= 0, got "fast"'):
        build_config(ContrastiveTrainConfig, overrides={"lr": "fast"})
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["pipeline", "--out", str(out), "--set", "contrastive.lr=fast"])
    assert result.exit_code == 4 and 'contrastive: lr must be a number >= 0, got "fast"' in result.output
    assert not out.exists()
    result = CliRunner().invoke(main, ["pipeline", "--out", str(out), "--set", "contrastive.mixed_precision=fp8"])
    assert result.exit_code == 4 and "mixed_precision must be one of" in result.output and not out.exists()


def test_tiny_pipeline_end_to_end_then_skips(corpus_dir, tiny_encoder_dir, tmp_path):
    books = tmp_path / "books"
    picked = 0
    for author in ["Carroll, Lewis", "Potter, Beatrix", "Wilde, Oscar", "Kafka, Franz", "Defoe, Daniel", "Voltaire"]:
        for path in sorted((corpus_dir / "books" / author).glob("*.txt"))[:2]:
            (books / author).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, books / author / path.name)
            picked += 1
    assert picked >= 10
    model = str(tiny_encoder_dir)
    args = [
        "pipeline",
        "--books",
        str(books),
        "--out",
        str(tmp_path / "out"),
        "--preset",
        "cpu-small",
        "--set",
        "prepare.hard_negatives=false",
        "--set",
        "prepare.max_chunks_per_book=12",
        "--set",
        "prepare.n_negative_per_book=4",
        "--set",
        "prepare.holdout_authors=",
        "--set",
        "prepare.train_ratio=0.4",
        "--set",
        "prepare.val_ratio=0.2",
        # cpu-small trains no teacher; switch it on so the teacher stage and its gate run too
        "--set",
        "contrastive.teacher=auto",
        "--set",
        "cross.cpu=true",
    ]
    for stage in ("cross", "contrastive"):
        args += [
            "--set",
            f"{stage}.model={model}",
            "--set",
            f"{stage}.max_steps=2",
            "--set",
            f"{stage}.eval_steps=2",
            "--set",
            f"{stage}.save_steps=2",
            "--set",
            f"{stage}.sample=0",
            "--set",
            f"{stage}.max_seq_length=64",
        ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "test" in result.output and "auc" in result.output
    out = tmp_path / "out"
    metrics = json.loads((out / "reports" / "test" / "metrics.json").read_text())
    assert 0.0 <= metrics["uncalibrated"]["auc"] <= 1.0
    assert (out / "models" / "book_matcher_contrastive" / "calibration.json").exists()
    summary = json.loads((out / "pipeline_summary.json").read_text())
    assert {"prepare", "teacher", "contrastive", "calibrate", "evaluate:test"} <= set(summary["timings"])

    # A second run finds every stage complete and redoes nothing.
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "pipeline_summary.json").read_text())["timings"] == {}


# ---------------------------------------------------------------------------------------------- review fixes


def test_bad_config_file_and_set_values_are_one_line_errors(tmp_path):
    out = tmp_path / "run"
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("prepare: {workers: 2\nbad: [\n")
    not_utf8 = tmp_path / "latin1.yaml"
    not_utf8.write_bytes("prepare:\n  books: caf\xe9\n".encode("latin-1"))
    for args, expected in (
        (["--config", str(bad_yaml)], f"--config {bad_yaml} is not valid YAML"),
        (["--config", str(not_utf8)], f"--config {not_utf8} is not UTF-8"),
        (["--set", "calibrate.target=[oops"], "--set 'calibrate.target=[oops': the value is not valid YAML"),
    ):
        result = CliRunner().invoke(main, ["pipeline", "--out", str(out)] + args)
        assert result.exit_code == 4, result.output
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "calibrate.target=f2"], "calibrate: target must be one of accuracy, f1"),
        (["--set", "evaluate.mode=twostage"], "evaluate: mode must be one of contrastive, two-stage"),
        (["--set", "evaluate.batch_size=0"], "evaluate: batch_size must be"),
        (["--eval-pairs", "no/such/pairs.jsonl"], "--eval-pairs no/such/pairs.jsonl does not exist"),
    ],
)
def test_bad_options_fail_before_any_stage(tmp_path, monkeypatch, args, expected):
    import bookmatch.prepare

    def never(*a, **k):
        raise AssertionError("a stage ran before the options were checked")

    monkeypatch.setattr(bookmatch.prepare, "run_prepare", never)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["pipeline", "--out", str(out)] + args)
    assert result.exit_code == 4, result.output
    assert expected in result.stderr and "Traceback" not in result.output
    assert not out.exists()


def test_stage_with_missing_outputs_is_not_skipped(tmp_path, monkeypatch):
    """calibration.json without style_calibration.json, metrics.json without the report: both stages rerun."""
    import bookmatch.calibration
    import bookmatch.evaluation.evaluate as evaluate_module
    import bookmatch.prepare
    import bookmatch.training.trainer
    from bookmatch.artifacts import write_commit
    from bookmatch.evaluation.evaluate import METRICS_FILE, REPORT_FILES
    from bookmatch.pipeline import PipelineConfig, run_pipeline

    out = tmp_path / "run"
    (out / "data" / "processed").mkdir(parents=True)
    (out / "data" / "processed" / "manifest.json").write_text(json.dumps({"complete": True}))
    write_commit(out / "data" / "processed")  # prepare and both trainings finished and committed
    for run in ("book_matcher", "book_matcher_contrastive"):
        (out / "models" / run / "final").mkdir(parents=True)
        (out / "models" / run / "final" / "model.safetensors").write_bytes(b"weights")
        write_commit(out / "models" / run / "final")
        (out / "models" / run / "train_summary.json").write_text(json.dumps({"complete": True, "best_val_auc": 0.9}))
    student = out / "models" / "book_matcher_contrastive"
    (student / "calibration.json").write_text("{}")  # a cut run: no style_calibration.json
    (out / "reports" / "test").mkdir(parents=True)
    (out / "reports" / "test" / METRICS_FILE).write_text("{}")  # a cut run: no report, plots, predictions
    calls = []

    def never(*a, **k):
        raise AssertionError("a complete stage ran again")

    def fake_calibrate(config):
        calls.append("calibrate")
        (student / "style_calibration.json").write_text("{}")

    def fake_evaluate(config):
        calls.append("evaluate")
        Path(config.report_dir).mkdir(parents=True, exist_ok=True)
        for name in (*REPORT_FILES, METRICS_FILE):
            (Path(config.report_dir) / name).write_text(json.dumps({"source": config.pairs_file}))

    monkeypatch.setattr(bookmatch.prepare, "run_prepare", never)
    monkeypatch.setattr(bookmatch.training.trainer, "train_cross", never)
    monkeypatch.setattr(bookmatch.training.trainer, "train_contrastive", never)
    monkeypatch.setattr(bookmatch.calibration, "calibrate", fake_calibrate)
    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    run_pipeline(PipelineConfig(books=str(tmp_path), out=str(out), stages=load_stage_options("cpu-small")))
    assert calls == ["calibrate", "evaluate"]
    calls.clear()
    run_pipeline(PipelineConfig(books=str(tmp_path), out=str(out), stages=load_stage_options("cpu-small")))
    assert calls == []
    # the report on --eval-pairs is redone when the run is given another pairs file, and only then
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("{}\n"), second.write_text("{}\n")
    for pairs, expected in ((first, ["evaluate"]), (first, []), (second, ["evaluate"])):
        calls.clear()
        run_pipeline(
            PipelineConfig(
                books=str(tmp_path), out=str(out), stages=load_stage_options("cpu-small"), eval_pairs=str(pairs)
            )
        )
        assert calls == expected, pairs


def test_stage_markers_count_only_what_verifies(tmp_path):
    """A marker that reached a bucket before its files (or a cut file) does not make a stage complete."""
    from bookmatch.artifacts import write_commit
    from bookmatch.pipeline import (
        _prepare_complete,
        _training_complete,
        is_complete,
        mark_complete,
    )

    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"complete": True}))
    (data / "train.arrow").write_bytes(b"x" * 1000)
    assert not _prepare_complete(data)  # a complete manifest without a commit: cut before the commit
    write_commit(data)
    assert _prepare_complete(data)
    (data / "train.arrow").write_bytes(b"x" * 10)  # the bucket holds a cut copy
    assert not _prepare_complete(data)

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "train_summary.json").write_text(json.dumps({"complete": True}))
    (run / "final" / "model.safetensors").write_bytes(b"w" * 100)
    assert not _training_complete(run)  # final/ without its commit
    write_commit(run / "final")
    assert _training_complete(run)
    (run / "train_summary.json").write_text('{"complete": tr')  # a cut summary
    assert not _training_complete(run)

    (run / "calibration.json").write_text("{}")
    (run / "style_calibration.json").write_text("{}")
    mark_complete(run, ["calibration.json", "style_calibration.json"], name="COMMIT.calibrate.json")
    assert is_complete(run, "COMMIT.calibrate.json")
    (run / "style_calibration.json").unlink()
    assert not is_complete(run, "COMMIT.calibrate.json")


@pytest.mark.parametrize(
    "preset, names",
    [
        ("gpu", ["prepare", "teacher", "contrastive", "calibrate", "evaluate:test"]),
        ("cpu-small", ["prepare", "contrastive", "calibrate", "evaluate:test"]),
    ],
)
def test_stages_follow_the_protocol_and_build_without_touching_files(tmp_path, preset, names):
    """Each stage builds its own config (pure), owns its marker and runs; the list is the whole pipeline."""
    from bookmatch.pipeline import PipelineConfig, _Layout, _stages

    out = tmp_path / "out"
    config = PipelineConfig(books=str(tmp_path / "books"), out=str(out), stages=load_stage_options(preset))
    stages, teacher, student = _stages(config, _Layout(out))
    assert [stage.name for stage in stages] == names
    assert all(callable(getattr(stage, method)) for stage in stages for method in ("build", "is_complete", "run"))
    built = {stage.name: stage.build() for stage in stages}
    assert not out.exists() and not any(stage.is_complete() for stage in stages)
    assert built["contrastive"].out == str(student.run_dir) and built["contrastive"].teacher == ""
    assert built["calibrate"].model_dir == built["evaluate:test"].model_dir == str(student.run_dir / "final")
    assert teacher.build().out == str(out / "models" / "book_matcher")  # checked even when not trained
