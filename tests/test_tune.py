"""`bookmatch tune`: the search space, a killed search that resumes, the pruner, and the best config's round trip.

Trials train the tiny random encoder on the synthetic pairs of tests/test_training.py for a few steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_training import synthetic_data  # noqa: F401  (the fixture)

optuna = pytest.importorskip("optuna")

REPO = Path(__file__).resolve().parents[1]


def _space(tmp_path: Path, encoder: Path, **overrides) -> Path:
    space = {
        "base": {
            "model": str(encoder),
            "cpu": True,
            "max_seq_length": 32,
            "batch_size": 8,
            "epochs": 1,
            "max_steps": 4,
            "eval_steps": 2,
            "save_steps": 2,  # checkpoints are written mid-trial; the search removes them
            "eval_max_pairs": 0,
            "projection_dim": 8,
            "lexical_buckets": 0,
            "patience": 0,
            "log_steps": 0,
        },
        "params": {"lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}, "temperature": {"low": 0.05, "high": 0.5}},
        "sampler": {"seed": 3, "startup_trials": 2},
        "pruner": "none",
        "enqueue_base": False,
    }
    space.update(overrides)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


# --- the space ---------------------------------------------------------------------------------------------------


def test_shipped_space_starts_from_the_preset_and_enqueues_it():
    from bookmatch.pipeline import load_stage_options
    from bookmatch.tuning.space import load_space

    space = load_space("cpu-small")
    preset = load_stage_options("cpu-small")["contrastive"]
    point = space.base_point()
    assert point["lr"] == preset["lr"] and point["max_seq_length"] == preset["max_seq_length"]
    assert space.base["model"] == preset["model"] and space.base["max_steps"] < preset["max_steps"]
    assert {p.name: p.kind for p in space.params}["lr"] == "float"
    assert {p.name: p.kind for p in space.params}["max_seq_length"] == "categorical"


@pytest.mark.parametrize(
    "params, message",
    [
        ({"learning_rate": {"low": 0.1, "high": 1.0}}, "unknown setting(s) learning_rate"),
        ({"out": {"choices": ["a"]}}, "set by `bookmatch tune` itself"),
        ({"lr": {"low": 1.0, "high": 0.1}}, "needs numbers low < high"),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "log-scale range needs low > 0"),
        ({"temperature": {"low": 0.0, "high": 0.1}}, "temperature must be a number > 0"),
        ({"max_seq_length": {"low": 16.5, "high": 64}}, "whole-number setting"),
        ({"pooling": {"choices": ["mean", "median"]}}, "pooling must be one of"),
    ],
)
def test_bad_space_is_one_line_config_error(tmp_path, params, message):
    from bookmatch.config import ConfigError
    from bookmatch.tuning.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"params": params}))
    with pytest.raises(ConfigError) as err:
        load_space(str(path))
    assert message in str(err.value) and "\n" not in str(err.value)


# --- the search --------------------------------------------------------------------------------------------------


def _states(study_dir: Path) -> list[str]:
    from bookmatch.tuning.search import STUDY_NAME

    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'study.db'}")
    return [t.state.name for t in optuna.load_study(study_name=STUDY_NAME, storage=storage).trials]


def test_an_interrupted_trial_is_failed_and_its_settings_run_again(synthetic_data, tiny_encoder_dir, tmp_path):  # noqa: F811
    """In-process, without a kill: a trial left RUNNING in the database (as a killed search leaves it) is marked
    failed on the next start, its partial folder removed, and its settings are the next trial's."""
    from bookmatch.tuning.search import open_study, run_search
    from bookmatch.tuning.space import load_space

    path, study_dir = _space(tmp_path, tiny_encoder_dir), tmp_path / "study"
    space = load_space(str(path))
    study, _ = open_study(study_dir, space)
    left = study.ask()
    drawn = {p.name: p.suggest(left) for p in space.params}
    (study_dir / "trials" / "trial-000" / "checkpoint-2").mkdir(parents=True)
    result = run_search(str(synthetic_data), str(path), 1, study_dir)
    trials = study.trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"] and result.finished == 1
    assert trials[1].params == drawn and trials[1].user_attrs["retry_of"] == 0
    assert not (study_dir / "trials" / "trial-000").exists() and (study_dir / "trials" / "trial-001" / "final").is_dir()


@pytest.mark.slow  # a real search process killed mid-trial, then 3 more tiny trials: ~2 min on the loaded 2-core box
def test_killed_search_resumes_to_three_complete_trials(synthetic_data, tiny_encoder_dir, tmp_path):  # noqa: F811
    """SIGKILL the search while trial 1 trains; the rerun marks it failed, trains its settings again, and ends
    with three complete trials and their report."""
    from click.testing import CliRunner

    from bookmatch.cli import main

    space, study = _space(tmp_path, tiny_encoder_dir), tmp_path / "study"
    args = ["tune", "--data", str(synthetic_data), "--space", str(space), "--trials", "3", "--study", str(study)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bookmatch", *args], env=env, stderr=subprocess.PIPE, text=True)
    started = study / "trials" / "trial-001" / "config.yaml"  # trial 0 finished, trial 1 set up and training
    deadline = time.monotonic() + 180
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the search ended before it could be killed: {proc.stderr.read()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert _states(study) == ["COMPLETE", "RUNNING"]  # the killed trial is left running in the database

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    storage = optuna.storages.RDBStorage(f"sqlite:///{study / 'study.db'}")
    trials = optuna.load_study(study_name="bookmatch-tune", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    retried = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retried) == 1 and retried[0].params == trials[1].params
    assert not (study / "trials" / "trial-001").exists()  # the killed run's partial folder is gone
    for t in trials:
        if t.state.name == "COMPLETE":
            run = study / "trials" / f"trial-{t.number:03d}"
            assert (run / "final").is_dir() and not list(run.glob("checkpoint-*"))
            assert sorted(t.intermediate_values) == [2, 4] and t.value == max(t.intermediate_values.values())
    report = (study / "report.md").read_text()
    assert "| 1 | fail |" in report and "retry of trial 1" in report and (study / "trials.png").stat().st_size > 0
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert result.output.strip().endswith("best_config.yaml")
    assert yaml.safe_load((study / "best_config.yaml").read_text())["lr"] == best.params["lr"]

    again = CliRunner().invoke(main, args)  # a finished study: nothing more runs
    assert again.exit_code == 0 and len(optuna.load_study(study_name="bookmatch-tune", storage=storage).trials) == 4


def test_a_study_refuses_another_space(synthetic_data, tiny_encoder_dir, tmp_path):  # noqa: F811
    from bookmatch.tuning.search import TuneError, open_study
    from bookmatch.tuning.space import load_space

    open_study(tmp_path / "study", load_space(str(_space(tmp_path, tiny_encoder_dir))))
    other = _space(tmp_path, tiny_encoder_dir, params={"lr": {"low": 1.0e-5, "high": 1.0e-3}})
    with pytest.raises(TuneError, match="another search space"):
        open_study(tmp_path / "study", load_space(str(other)))


@pytest.mark.parametrize("reference_auc, expected", [(1.0, "PRUNED"), (0.0, "COMPLETE")])
def test_pruner_stops_a_trial_below_the_median(synthetic_data, tiny_encoder_dir, tmp_path, reference_auc, expected):  # noqa: F811
    """One finished trial reported AUC `reference_auc` at steps 2 and 4. A trial that evaluates below it (any
    real AUC is below 1.0) is pruned at its first evaluation, step 2, and its run stops there; above it (0.0),
    the same trial runs to the end."""
    from bookmatch.tuning.search import open_study, run_trial
    from bookmatch.tuning.space import load_space

    space = load_space(str(_space(tmp_path, tiny_encoder_dir, pruner={"kind": "median", "startup_trials": 1})))
    study, _ = open_study(tmp_path / "study", space)
    distributions = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
        "temperature": optuna.distributions.FloatDistribution(0.05, 0.5),
    }
    reference = {"lr": 1e-3, "temperature": 0.1}
    study.add_trial(
        optuna.trial.create_trial(
            params=reference,
            distributions=distributions,
            value=reference_auc,
            intermediate_values={2: reference_auc, 4: reference_auc},
        )
    )
    study.enqueue_trial({"lr": 1e-4, "temperature": 0.5})
    study.optimize(lambda trial: run_trial(trial, space, str(synthetic_data), tmp_path / "study"), n_trials=1)
    trial = study.trials[-1]
    assert trial.state.name == expected
    run = tmp_path / "study" / "trials" / "trial-001"
    assert not list(run.glob("checkpoint-*"))  # the step-2 checkpoint was removed either way
    if expected == "PRUNED":
        assert list(trial.intermediate_values) == [2] and trial.intermediate_values[2] < 1.0
        assert not (run / "train_summary.json").exists()  # the run stopped at step 2
    else:
        assert sorted(trial.intermediate_values) == [2, 4] and (run / "train_summary.json").exists()


def test_best_config_trains_with_train_contrastive(synthetic_data, tiny_encoder_dir, tmp_path):  # noqa: F811
    """best_config.yaml goes into `bookmatch train contrastive --config` unchanged, and that run trains with the
    best trial's settings: its saved config equals the trial's, apart from the output folder."""
    from click.testing import CliRunner

    from bookmatch.cli import main
    from bookmatch.config import build_config
    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.tuning.search import run_search

    result = run_search(str(synthetic_data), str(_space(tmp_path, tiny_encoder_dir)), 1, tmp_path / "study")
    best = build_config(ContrastiveTrainConfig, file=result.best_config)
    assert best.max_steps == 4 and best.data == "" and best.out == ""
    out = tmp_path / "retrain"
    cli = CliRunner().invoke(
        main,
        ["train", "contrastive", "--config", str(result.best_config), "--data", str(synthetic_data), "--out", str(out)],
    )
    assert cli.exit_code == 0, cli.output
    trained = yaml.safe_load((out / "config.yaml").read_text())
    trial = yaml.safe_load((tmp_path / "study" / "trials" / "trial-000" / "config.yaml").read_text())
    assert {k: v for k, v in trained.items() if k != "out"} == {k: v for k, v in trial.items() if k != "out"}
