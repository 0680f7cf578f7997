"""`bookmatch tune`: a TPE search over a space's settings, pruned on the validation AUC, resumable after a kill.

The study lives in SQLite inside the study folder (`study.db`, Optuna's RDBStorage, loaded if it exists), so a
search that is killed picks up where it stopped: finished trials stay, and a trial that was running when the
process died is marked failed and its settings are tried again first. One search process per study folder.

Each trial is one `bookmatch train contrastive` run in `trials/trial-NNN/` (final/, config.yaml,
train_summary.json; checkpoints are removed when it ends). The trainer's step callback hands Optuna the
validation AUC of every evaluation, and Optuna's pruner may stop the run there. The objective is the run's best
validation AUC (the `validation` split of --data; nothing else is read).
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bookmatch.config import ConfigError, build_config, config_to_dict
from bookmatch.errors import BookmatchError
from bookmatch.tuning.space import RESERVED, SearchSpace, load_space

logger = logging.getLogger(__name__)

STUDY_NAME = "bookmatch-tune"
DB_NAME = "study.db"
FINISHED = ("COMPLETE", "PRUNED")


class TuneError(BookmatchError):
    """The search cannot run as asked (optuna missing, a study folder started with another space)."""


@dataclass
class TuneResult:
    study_dir: Path
    best_config: Path | None
    report: Path
    finished: int


def _optuna():
    try:
        import optuna
    except ModuleNotFoundError:
        raise TuneError("`bookmatch tune` needs Optuna: pip install 'bookmatch[tune]'") from None
    return optuna


class ReportValidation:
    """A trainer step callback: after each evaluation, report its validation AUC to the trial and stop the run
    (optuna.TrialPruned) when the pruner says so. It reads the evaluation the recipe just appended to its
    history, so the trainer itself knows nothing of Optuna."""

    def __init__(self, trial, recipe) -> None:
        self.trial, self.recipe = trial, recipe

    def __call__(self, step: int) -> None:
        history = self.recipe.state.history
        if not history or history[-1]["step"] != step:
            return  # not an evaluation step
        auc = history[-1].get("val_auc")
        if auc is None or not math.isfinite(auc):
            return
        self.trial.report(float(auc), step)
        if self.trial.should_prune():
            raise _optuna().TrialPruned(f"validation AUC {auc:.4f} at step {step}")


def trial_dir(study_dir: Path, number: int) -> Path:
    return Path(study_dir) / "trials" / f"trial-{number:03d}"


def run_trial(trial, space: SearchSpace, data: str, study_dir: Path) -> float:
    """Train one trial's config; its best validation AUC (pruned: optuna.TrialPruned from the callback)."""
    from bookmatch.training import checkpoint as ckpt
    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.tasks import ContrastiveTask
    from bookmatch.training.trainer import TrainingRecipe

    settings = space.trial_settings({p.name: p.suggest(trial) for p in space.params})
    out = trial_dir(study_dir, trial.number)
    config = build_config(
        ContrastiveTrainConfig,
        settings=settings,
        overrides={"data": data, "out": str(out)},
        where=f"trial {trial.number}: ",
    )
    trial.set_user_attr("settings", {k: v for k, v in config_to_dict(config).items() if k not in RESERVED})
    recipe = TrainingRecipe(ContrastiveTask(config))
    recipe.callbacks.append(ReportValidation(trial, recipe))
    try:
        recipe.run()
    finally:
        for _, checkpoint in ckpt.checkpoint_steps(out):  # the trial's model is final/ (its best evaluation)
            shutil.rmtree(checkpoint, ignore_errors=True)
    best = next((h["val_auc"] for h in recipe.state.history if h["step"] == recipe.state.best_step), None)
    if best is None or not math.isfinite(best):
        raise TuneError(f"trial {trial.number}: no finite validation AUC (does the validation split have both labels?)")
    return float(best)


def open_study(study_dir: Path, space: SearchSpace, seed: int | None = None):
    """The study in `<study_dir>/study.db`, created or loaded; a different space in an existing study is refused."""
    optuna = _optuna()
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(study_dir / DB_NAME).resolve()}")
    sampler = optuna.samplers.TPESampler(
        seed=space.seed if seed is None else seed, n_startup_trials=space.startup_trials
    )
    if space.pruner == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=space.pruner_startup_trials, n_warmup_steps=space.pruner_warmup_steps
        )
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    fingerprint = study.user_attrs.get("space_fingerprint")
    if fingerprint is None:
        study.set_user_attr("space_fingerprint", space.fingerprint())
        study.set_user_attr("space_source", space.source)
        if space.enqueue_base and not study.trials:
            study.enqueue_trial(space.base_point(), user_attrs={"baseline": True})
    elif fingerprint != space.fingerprint():
        raise TuneError(
            f"{study_dir} holds a study over another search space ({study.user_attrs.get('space_source')}); "
            "resume it with that space or use a new --study folder"
        )
    return study, storage


def fail_interrupted(study, storage, study_dir: Path) -> int:
    """Trials left RUNNING by a killed search: marked FAIL, their partial runs removed, their settings queued
    again (first in line). Returns how many. Safe because one process searches a study at a time."""
    optuna = _optuna()
    interrupted = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for t in interrupted:
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        shutil.rmtree(trial_dir(study_dir, t.number), ignore_errors=True)
        study.enqueue_trial(dict(t.params), user_attrs={**t.user_attrs, "retry_of": t.number}, skip_if_exists=False)
        logger.info("trial %d was interrupted: marked failed, its settings queued again", t.number)
    return len(interrupted)


def finished_trials(study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED]


def run_search(data: str, space: str, trials: int, study_dir: str | Path, seed: int | None = None) -> TuneResult:
    """Search until the study holds `trials` finished (complete or pruned) trials; write the report and the best
    config after every trial. A study folder that already holds them only gets its report rewritten."""
    from bookmatch.training.data import load_pair_data
    from bookmatch.tuning.report import write_report

    optuna = _optuna()
    study_dir = Path(study_dir)
    search_space = load_space(space)
    load_pair_data(data)  # a bad data folder: one line now, not a failed trial
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    study, storage = open_study(study_dir, search_space, seed)
    fail_interrupted(study, storage, study_dir)
    remaining = trials - len(finished_trials(study))
    if remaining > 0:
        logger.info("study %s: %d trial(s) to run", study_dir, remaining)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log lines say what each trial did
        study.optimize(
            lambda trial: run_trial(trial, search_space, str(data), study_dir),
            n_trials=remaining,
            callbacks=[_after_trial(study_dir)],
        )
    best_config, report = write_report(study, study_dir)
    return TuneResult(study_dir, best_config, report, len(finished_trials(study)))


def _after_trial(study_dir: Path):
    def callback(study, trial) -> None:
        from bookmatch.tuning.report import write_report

        value = "" if trial.value is None else f" validation AUC {trial.value:.4f}"
        logger.info("trial %d %s%s; params %s", trial.number, trial.state.name.lower(), value, _short(trial.params))
        write_report(study, study_dir)

    return callback


def _short(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
