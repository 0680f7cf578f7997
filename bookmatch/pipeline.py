"""The whole job in one call: prepare -> teacher -> contrastive (distilled) -> calibrate -> evaluate.

Each stage follows a small protocol (`Stage`: `build` its config, `is_complete`, `run`) and owns its completion
marker. A stage is skipped when its outputs are committed (bookmatch.artifacts: a manifest of sizes and checksums
written after them, which must verify: the prepared data, a training run's final/ with its train_summary.json, the
calibration files, each report folder), and a training stage that was cut resumes from its newest checkpoint
that verifies. Stage settings come from a preset (`bookmatch/configs/presets/<name>.yaml`), then an optional YAML
file of the same shape, then `--set stage.option=value` overrides; every stage's config is built (and so checked)
before the first stage runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from bookmatch.artifacts import COMMIT_NAME, describe_files, verify, write_commit
from bookmatch.config import ConfigError, build_config, check_settings, save_config, setting
from bookmatch.errors import InputError
from bookmatch.storage import atomic_write_json, read_json

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).parent / "configs" / "presets"
STAGES = ("prepare", "cross", "contrastive", "calibrate", "evaluate")


@dataclass
class PipelineConfig:
    books: str = setting("../shared/corpus/books", "Folder of .txt books (searched recursively).")
    out: str = setting("artifacts/cpu-small", "Artifacts folder (data/, models/, reports/).")
    preset: str = setting("cpu-small", "Stage settings: a preset name (bookmatch/configs/presets).")
    eval_pairs: str | None = setting(
        None, "Extra labelled pairs (JSON lines) evaluated after the test split, e.g. the corpus validation file."
    )
    # A teacher whose best validation AUC stays under this is not distilled from: it would only add noise.
    min_teacher_auc: float = setting(0.6, "Best validation AUC a teacher needs to be distilled from.", ge=0, le=1)
    # Per-stage option overrides: {"prepare": {...}, "cross": {...}, ...}.
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_settings(self)


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_stage_options(
    preset: str, file: str | None = None, sets: list[str] | None = None
) -> dict[str, dict[str, Any]]:
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
        if not sep or not dot or not option or stage not in merged:
            raise ConfigError(f"--set {item!r}: expected stage.option=value with stage one of {', '.join(STAGES)}")
        if not raw.strip():
            # YAML reads nothing as null, which used to leave the preset's value in place without a word: an empty
            # value is the empty string, right for a text setting and refused by the check of any other
            merged[stage][option] = ""
            continue
        try:
            merged[stage][option] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(
                f"--set {item!r}: the value is not valid YAML ({_yaml_problem(err)}); quote it, e.g. --set '{key}=\"...\"'"
            ) from None
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


# ------------------------------------------------------------------------------------------------ stages
# Stages import their library modules when called: they pull in torch and datasets (seconds of start-up that
# `bookmatch pipeline --help` and a refused setting need not pay), and a stage finds its function on the module
# when it runs.


class Stage(Protocol):
    """One step of the pipeline: the config it runs with, whether its outputs are complete (its own marker), and
    the run itself. `build` is pure (no files read or written), so the pipeline builds every stage's config before
    any stage runs, exactly as the stage will."""

    name: str

    def build(self) -> Any: ...

    def is_complete(self) -> bool: ...

    def run(self, config: Any) -> None: ...


@dataclass
class _Layout:
    """Where the pipeline's stages read and write, under `out`."""

    out: Path

    @property
    def data(self) -> Path:
        return self.out / "data" / "processed"

    @property
    def teacher(self) -> Path:
        return self.out / "models" / "book_matcher"

    @property
    def student(self) -> Path:
        return self.out / "models" / "book_matcher_contrastive"

    @property
    def reports(self) -> Path:
        return self.out / "reports"


def _build(cls: type, name: str, options: dict[str, Any], fixed: dict[str, Any]) -> Any:
    """A stage config: its options as read from YAML (null is a value), then what the pipeline fixes (paths)."""
    return build_config(cls, settings={**options, **fixed}, where=f"{name}: ")


@dataclass
class PrepareStage:
    options: dict[str, Any]
    books: str
    layout: _Layout
    name: str = "prepare"

    def build(self):
        from bookmatch.prepare.config import PrepareConfig

        return _build(PrepareConfig, "prepare", self.options, {"books": self.books, "out": str(self.layout.data)})

    def is_complete(self) -> bool:
        return _prepare_complete(self.layout.data)

    def run(self, config) -> None:
        import bookmatch.prepare

        bookmatch.prepare.run_prepare(config)


@dataclass
class TrainStage:
    """The teacher (cross-encoder) or the student (the contrastive bi-encoder, distilled from `teacher`)."""

    name: str  # "teacher" or "contrastive"
    options: dict[str, Any]
    layout: _Layout
    teacher: str = ""  # the student's teacher folder ('' = no distillation)

    @property
    def run_dir(self) -> Path:
        return self.layout.teacher if self.name == "teacher" else self.layout.student

    def build(self):
        from bookmatch.training.config import ContrastiveTrainConfig, CrossTrainConfig

        fixed = {"data": str(self.layout.data), "out": str(self.run_dir), "resume": True}
        if self.name == "teacher":
            return _build(CrossTrainConfig, "cross", self.options, fixed)
        return _build(ContrastiveTrainConfig, "contrastive", self.options, {**fixed, "teacher": self.teacher})

    def is_complete(self) -> bool:
        return _training_complete(self.run_dir)

    def run(self, config) -> None:
        import bookmatch.training.trainer as trainer

        (trainer.train_cross if self.name == "teacher" else trainer.train_contrastive)(config)


@dataclass
class CalibrateStage:
    options: dict[str, Any]
    layout: _Layout
    name: str = "calibrate"

    def build(self):
        from bookmatch.calibration import CalibrateConfig

        fixed = {"model_dir": str(self.layout.student / "final"), "data_dir": str(self.layout.data)}
        return _build(CalibrateConfig, "calibrate", self.options, fixed)

    def is_complete(self) -> bool:
        return is_complete(self.layout.student, CALIBRATE_COMMIT)

    def run(self, config) -> None:
        import bookmatch.calibration
        from bookmatch.inference.calibration import CALIBRATION_FILE, STYLE_CALIBRATION_FILE

        bookmatch.calibration.calibrate(config)
        mark_complete(self.layout.student, [CALIBRATION_FILE, STYLE_CALIBRATION_FILE], name=CALIBRATE_COMMIT)


@dataclass
class EvaluateStage:
    """One evaluation: the test split (`source` names data_dir and split) or a labelled pairs file."""

    evaluation: str  # "test" or "eval_pairs"
    source: dict[str, Any]
    options: dict[str, Any]
    layout: _Layout

    @property
    def name(self) -> str:
        return f"evaluate:{self.evaluation}"

    @property
    def report_dir(self) -> Path:
        return self.layout.reports / self.evaluation

    def build(self):
        from bookmatch.evaluation.evaluate import EvaluateConfig

        fixed = {**self.source, "model_dir": str(self.layout.student / "final"), "report_dir": str(self.report_dir)}
        return _build(EvaluateConfig, "evaluate", self.options, fixed)

    def is_complete(self) -> bool:
        from bookmatch.evaluation.evaluate import METRICS_FILE

        if not is_complete(self.report_dir):
            return False
        if "pairs_file" in self.source:  # a report on another pairs file than this run's --eval-pairs is stale
            return read_json(self.report_dir / METRICS_FILE).get("source") == str(self.source["pairs_file"])
        return True

    def run(self, config) -> None:
        import bookmatch.evaluation.evaluate as evaluate_module

        evaluate_module.evaluate(config)
        mark_complete(self.report_dir)

    def metrics(self) -> dict[str, Any]:
        from bookmatch.evaluation.evaluate import METRICS_FILE

        return read_json(self.report_dir / METRICS_FILE)


# ------------------------------------------------------------------------------------------------ the run


def _wants_teacher(options: dict[str, dict[str, Any]]) -> bool:
    return options.get("contrastive", {}).get("teacher", "auto") not in ("", None, False)


def _stages(config: PipelineConfig, layout: _Layout) -> tuple[list[Stage], TrainStage, TrainStage]:
    """Every stage to run, in order; the teacher (in the list only when the settings ask for one) and the student
    are returned too, since the student's teacher is decided once the teacher has trained."""
    options = config.stages
    student_options = {k: v for k, v in options.get("contrastive", {}).items() if k != "teacher"}
    teacher = TrainStage("teacher", options.get("cross", {}), layout)
    student = TrainStage("contrastive", student_options, layout)
    evaluations = {"test": {"data_dir": str(layout.data), "split": "test"}}
    if config.eval_pairs:
        evaluations["eval_pairs"] = {"pairs_file": config.eval_pairs}
    stages: list[Stage] = [PrepareStage(options.get("prepare", {}), config.books, layout)]
    stages += [teacher] if _wants_teacher(options) else []
    stages += [student, CalibrateStage(options.get("calibrate", {}), layout)]
    stages += [EvaluateStage(name, source, options.get("evaluate", {}), layout) for name, source in evaluations.items()]
    return stages, teacher, student


def _distil_from(teacher: TrainStage, min_auc: float) -> str:
    """The teacher's final/ folder, or '' when its best validation AUC is too low to learn from."""
    auc = read_json(teacher.run_dir / "train_summary.json").get("best_val_auc")
    if auc is None or auc < min_auc:
        log.warning(
            "pipeline: the teacher's best validation AUC is %s (< %.2f): training the bi-encoder without "
            "distillation; give the teacher more steps or a larger backbone (the gpu preset) to distil",
            auc,
            min_auc,
        )
        return ""
    return str(teacher.run_dir / "final")


def run_pipeline(config: PipelineConfig) -> dict[str, Any]:
    """Run every unfinished stage; return the test metrics (and eval-pairs metrics when asked)."""
    # Input files too are checked before any work.
    if config.eval_pairs and not Path(config.eval_pairs).is_file():
        raise InputError(
            f"--eval-pairs {config.eval_pairs} does not exist (or is not a file): pass a JSONL file of labelled pairs"
        )
    layout = _Layout(Path(config.out))
    stages, teacher, student = _stages(config, layout)
    # Every stage's config is built before any work, by the stage's own `build`: a bad value late in the list
    # must not cost a prepare and a training run first. (The student is checked without its teacher, which is
    # only known once the teacher has trained; the teacher's settings are checked even when no teacher is trained.)
    with_teacher = _wants_teacher(config.stages)
    for stage in stages if with_teacher else [*stages, teacher]:
        stage.build()
    layout.out.mkdir(parents=True, exist_ok=True)
    save_config(config, layout.out / "pipeline_config.yaml")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for stage in stages:
        if stage is student and with_teacher:
            student.teacher = _distil_from(teacher, config.min_teacher_auc)
        if stage.is_complete():
            log.info("pipeline: %s already complete, skipped", stage.name)
        else:
            log.info("pipeline: %s ...", stage.name)
            t0 = time.perf_counter()
            stage.run(stage.build())
            timings[stage.name] = round(time.perf_counter() - t0, 1)
            log.info("pipeline: %s done in %.1f s", stage.name, timings[stage.name])
        if isinstance(stage, EvaluateStage):
            results[stage.evaluation] = stage.metrics()
    atomic_write_json(
        layout.out / "pipeline_summary.json",
        {"timings": timings, "total_seconds": round(time.perf_counter() - started, 1), "complete": True},
    )
    return results


def metrics_table(results: dict[str, Any]) -> str:
    """A plain-text table of the headline metrics per evaluation (calibrated where available)."""
    keys = ("auc", "accuracy", "f1", "average_precision", "brier", "ece", "c_at_1", "f05u")
    lines = [f"{'evaluation':<22}" + "".join(f"{k:>10}" for k in keys)]
    for name, metrics in results.items():
        for variant in ("uncalibrated", "calibrated"):
            figures = metrics.get(variant)
            if isinstance(figures, dict):
                lines.append(
                    f"{name + ' ' + variant[:5]:<22}" + "".join(f"{_num(figures.get(k)):>10.3f}" for k in keys)
                )
        by_kind = (
            (metrics.get("by_kind") or {}).get("calibrated") or (metrics.get("by_kind") or {}).get("uncalibrated") or {}
        )
        for kind, figures in by_kind.items():
            lines.append(f"{'  ' + str(kind):<22}" + "".join(f"{_num(figures.get(k)):>10.3f}" for k in keys))
    return "\n".join(lines)


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)
