"""The whole job in one call: prepare -> teacher -> contrastive (distilled) -> calibrate -> evaluate.

A stage is skipped when its outputs are committed (bookmatch.artifacts: a manifest of sizes and checksums written
after them, which must verify: the prepared data, a training run's final/ with its train_summary.json, the
calibration files, each report folder), and a training stage that was cut resumes from its newest checkpoint
that verifies. Stage settings come from a preset (`bookmatch/configs/presets/<name>.yaml`), then an optional YAML
file of the same shape, then `--set stage.option=value` overrides.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bookmatch.artifacts import COMMIT_NAME, describe_files, verify, write_commit
from bookmatch.config import ConfigError, build_config, save_config
from bookmatch.errors import InputError
from bookmatch.storage import atomic_write_json, read_json

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).parent / "configs" / "presets"
STAGES = ("prepare", "cross", "contrastive", "calibrate", "evaluate")


@dataclass
class PipelineConfig:
    books: str = "../shared/corpus/books"
    out: str = "artifacts/cpu-small"
    preset: str = "cpu-small"
    # Extra labelled pairs (JSON lines) evaluated after the test split, e.g. the corpus validation file.
    eval_pairs: str | None = None
    # A teacher whose best validation AUC stays under this is not distilled from: it would only add noise.
    min_teacher_auc: float = 0.6
    # Per-stage option overrides: {"prepare": {...}, "cross": {...}, ...}.
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_stage_options(preset: str, file: str | None = None, sets: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Merge preset, YAML file and `stage.option=value` overrides into {stage: {option: value}}."""
    path = PRESET_DIR / f"{preset}.yaml"
    if not path.exists():
        raise InputError(f"unknown preset {preset!r}; choose one of: {', '.join(available_presets())}")
    merged: dict[str, dict[str, Any]] = {stage: {} for stage in STAGES}

    def merge(source: dict, where: str) -> None:
        for stage, options in (source or {}).items():
            if stage not in merged or not isinstance(options, dict):
                raise ConfigError(f"{where}: top-level keys must be stages ({', '.join(STAGES)}) mapping to options")
            merged[stage].update(options)

    merge(_read_yaml(path, "preset"), str(path))
    if file:
        merge(_read_yaml(Path(file), "--config"), file)
    for item in sets or []:
        key, sep, raw = item.partition("=")
        stage, dot, option = key.partition(".")
        if not sep or not dot or stage not in merged:
            raise ConfigError(f"--set {item!r}: expected stage.option=value with stage one of {', '.join(STAGES)}")
        try:
            merged[stage][option] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({_yaml_problem(err)}); quote it, e.g. --set '{key}=\"...\"'") from None
    return merged


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text; save it as UTF-8 YAML") from None
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML ({_yaml_problem(err)}); fix the file") from None


def _yaml_problem(err: Exception) -> str:
    """PyYAML messages span several lines (with a caret picture); the CLI prints one: the problem and where."""
    problem, mark = getattr(err, "problem", None), getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())[:300]


# Stage completion: a stage's outputs count only once a commit manifest (bookmatch.artifacts) written after them
# verifies, so an output cut by a kill, or one that reached a bucket before the files it names, is redone.
CALIBRATE_COMMIT = "COMMIT.calibrate.json"


def _training_complete(run_dir: Path) -> bool:
    from bookmatch.training.checkpoint import run_complete

    return run_complete(run_dir)


def is_complete(folder: Path, name: str = COMMIT_NAME) -> bool:
    """Whether `folder` holds a commit `name` that verifies."""
    return verify(folder, name=name).ok


def mark_complete(folder: Path, files: list[str] | None = None, name: str = COMMIT_NAME, **meta: Any) -> None:
    """Commit `files` of `folder` (default: all): call when the stage that wrote them has returned."""
    write_commit(folder, describe_files(folder, files) if files is not None else None, meta=meta, name=name)


def _prepare_complete(data_dir: Path) -> bool:
    return is_complete(data_dir) and bool(read_json(data_dir / "manifest.json").get("complete"))


def run_pipeline(config: PipelineConfig) -> dict[str, Any]:
    """Run every unfinished stage; return the test metrics (and eval-pairs metrics when asked)."""
    from bookmatch.calibration import CALIBRATION_FILE, STYLE_CALIBRATION_FILE, CalibrateConfig, calibrate
    from bookmatch.evaluation.evaluate import METRICS_FILE, EvaluateConfig, evaluate
    from bookmatch.prepare import run_prepare
    from bookmatch.prepare.config import PrepareConfig
    from bookmatch.training.config import ContrastiveTrainConfig, CrossTrainConfig
    from bookmatch.training.trainer import train_contrastive, train_cross

    options = config.stages
    # Input files too are checked before any work.
    if config.eval_pairs and not Path(config.eval_pairs).is_file():
        raise InputError(f"--eval-pairs {config.eval_pairs} does not exist (or is not a file): pass a JSONL file of labelled pairs")
    # Every stage's options are checked before any work: a bad value late in the list must not cost a prepare
    # and a training run first. Paths and the teacher are filled in per stage below.
    for stage_name, cls in (("prepare", PrepareConfig), ("cross", CrossTrainConfig), ("contrastive", ContrastiveTrainConfig),
                            ("calibrate", CalibrateConfig), ("evaluate", EvaluateConfig)):
        stage_options = dict(options.get(stage_name, {}))
        if stage_name == "contrastive":
            stage_options["teacher"] = ""
        try:
            build_config(cls, overrides=stage_options)
        except (ValueError, TypeError) as err:  # ConfigError, or a config's own check of its values
            raise ConfigError(f"{stage_name}: {err}") from None
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "pipeline_config.yaml")
    data_dir = out / "data" / "processed"
    teacher_dir = out / "models" / "book_matcher"
    student_dir = out / "models" / "book_matcher_contrastive"
    reports = out / "reports"
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def stage(name: str, done: bool, action) -> None:
        if done:
            log.info("pipeline: %s already complete, skipped", name)
            return
        log.info("pipeline: %s ...", name)
        t0 = time.perf_counter()
        action()
        timings[name] = round(time.perf_counter() - t0, 1)
        log.info("pipeline: %s done in %.1f s", name, timings[name])

    stage(
        "prepare",
        _prepare_complete(data_dir),
        lambda: run_prepare(build_config(PrepareConfig, overrides={**options.get("prepare", {}), "books": config.books, "out": str(data_dir)})),
    )
    use_teacher = options.get("contrastive", {}).get("teacher", "auto") not in ("", None, False)
    if use_teacher:
        cross = {**options.get("cross", {}), "data": str(data_dir), "out": str(teacher_dir), "resume": True}
        stage("teacher", _training_complete(teacher_dir), lambda: train_cross(build_config(CrossTrainConfig, overrides=cross)))
    if use_teacher:
        teacher_auc = read_json(teacher_dir / "train_summary.json").get("best_val_auc")
        if teacher_auc is None or teacher_auc < config.min_teacher_auc:
            log.warning(
                "pipeline: the teacher's best validation AUC is %s (< %.2f): training the bi-encoder without "
                "distillation; give the teacher more steps or a larger backbone (the gpu preset) to distil",
                teacher_auc, config.min_teacher_auc,
            )
            use_teacher = False
    contrastive = {**options.get("contrastive", {}), "data": str(data_dir), "out": str(student_dir), "resume": True}
    contrastive["teacher"] = str(teacher_dir / "final") if use_teacher else ""
    stage(
        "contrastive",
        _training_complete(student_dir),
        lambda: train_contrastive(build_config(ContrastiveTrainConfig, overrides=contrastive)),
    )
    calib = options.get("calibrate", {})
    calibrated = [student_dir]

    def calibrate_and_commit(run: Path) -> None:
        calibrate(build_config(CalibrateConfig, overrides={**calib, "model_dir": str(run / "final"), "data_dir": str(data_dir)}))
        mark_complete(run, [CALIBRATION_FILE, STYLE_CALIBRATION_FILE], name=CALIBRATE_COMMIT)

    stage(
        "calibrate",
        all(is_complete(run, CALIBRATE_COMMIT) for run in calibrated),
        lambda: [calibrate_and_commit(run) for run in calibrated],
    )
    evaluations = {"test": {"data_dir": str(data_dir), "split": "test"}}
    if config.eval_pairs:
        evaluations["eval_pairs"] = {"pairs_file": config.eval_pairs}
    results: dict[str, Any] = {}
    for name, source in evaluations.items():
        report_dir = reports / name
        metrics_file = report_dir / METRICS_FILE
        evaluation = {**options.get("evaluate", {}), **source, "model_dir": str(student_dir / "final"), "report_dir": str(report_dir)}
        done = is_complete(report_dir)
        if done and "pairs_file" in source:  # a report on another pairs file than this run's --eval-pairs is stale
            done = read_json(metrics_file).get("source") == str(source["pairs_file"])

        def evaluate_and_commit(evaluation=evaluation, report_dir=report_dir) -> None:
            evaluate(build_config(EvaluateConfig, overrides=evaluation))
            mark_complete(report_dir)

        stage(f"evaluate:{name}", done, evaluate_and_commit)
        results[name] = read_json(metrics_file)
    atomic_write_json(out / "pipeline_summary.json", {"timings": timings, "total_seconds": round(time.perf_counter() - started, 1), "complete": True})
    return results


def metrics_table(results: dict[str, Any]) -> str:
    """A plain-text table of the headline metrics per evaluation (calibrated where available)."""
    keys = ("auc", "accuracy", "f1", "average_precision", "brier", "ece", "c_at_1", "f05u")
    lines = [f"{'evaluation':<22}" + "".join(f"{k:>10}" for k in keys)]
    for name, metrics in results.items():
        for variant in ("uncalibrated", "calibrated"):
            figures = metrics.get(variant)
            if isinstance(figures, dict):
                lines.append(f"{name + ' ' + variant[:5]:<22}" + "".join(f"{_num(figures.get(k)):>10.3f}" for k in keys))
        by_kind = (metrics.get("by_kind") or {}).get("calibrated") or (metrics.get("by_kind") or {}).get("uncalibrated") or {}
        for kind, figures in by_kind.items():
            lines.append(f"{'  ' + str(kind):<22}" + "".join(f"{_num(figures.get(k)):>10.3f}" for k in keys))
    return "\n".join(lines)


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)
