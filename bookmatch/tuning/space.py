"""A search space: the settings every trial trains with, the settings the sampler draws, and the study's knobs.

A space YAML names settings of `bookmatch train contrastive` (ContrastiveTrainConfig) and nothing else:

    preset: cpu-small          # optional: start from that preset's `contrastive:` section
    base: {max_steps: 80}      # fixed for every trial, over the preset
    params:                    # drawn per trial
      lr: {low: 3.0e-5, high: 3.0e-4, log: true}     # a float (log scale)
      lexical_top_k: {low: 16, high: 128}            # whole-number bounds: an int
      max_seq_length: {choices: [64, 128]}           # categorical
    sampler: {seed: 0, startup_trials: 3}            # TPE; random draws for the first startup_trials
    pruner: {kind: median, startup_trials: 2, warmup_steps: 0}   # or `pruner: none`
    enqueue_base: true         # trial 0 trains the base values themselves (the preset: the baseline)

Every value is checked as `bookmatch train contrastive --config` would check it, so a bad space fails before
the first trial, in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from bookmatch.config import ConfigError, build_config, config_to_dict

SPACE_DIR = Path(__file__).resolve().parents[1] / "configs" / "tune"
# set by the search itself (per trial), never by a space
RESERVED = ("data", "out", "resume")
_TOP_KEYS = {"preset", "base", "params", "sampler", "pruner", "enqueue_base"}
PRUNERS = ("median", "none")


@dataclasses.dataclass(frozen=True)
class Param:
    """One drawn setting: a float or int in [low, high] (log scale if `log`), or one of `choices`."""

    name: str
    kind: str  # "float", "int" (the setting's type) or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    base: dict[str, Any]
    params: tuple[Param, ...]
    seed: int = 0
    startup_trials: int = 3
    pruner: str = "median"
    pruner_startup_trials: int = 2
    pruner_warmup_steps: int = 0
    enqueue_base: bool = True
    source: str = ""

    def fingerprint(self) -> str:
        """What a resumed study must still search: base and params (not the seed or the pruner's knobs)."""
        text = json.dumps([self.base, [dataclasses.astuple(p) for p in self.params]], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def trial_settings(self, drawn: dict[str, Any]) -> dict[str, Any]:
        return {**self.base, **drawn}

    def base_point(self) -> dict[str, Any]:
        """The base value of every drawn setting (the preset's, else the config default): the baseline trial."""
        from bookmatch.training.config import ContrastiveTrainConfig

        resolved = config_to_dict(build_config(ContrastiveTrainConfig, settings=self.base))
        point = {p.name: resolved[p.name] for p in self.params}
        outside = [f"{name}={value!r}" for name, value in point.items() if not self._param(name).contains(value)]
        if outside:
            raise ConfigError(
                f"space {self.source}: enqueue_base needs the base value inside each drawn range; outside: "
                f"{', '.join(outside)} (widen params or set enqueue_base: false)"
            )
        return point

    def _param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)


def resolve_space_path(space: str) -> Path:
    """A YAML file, or the name of a shipped space (bookmatch/configs/tune/<name>.yaml)."""
    path = Path(space)
    if path.is_file():
        return path
    shipped = SPACE_DIR / f"{space}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in SPACE_DIR.glob("*.yaml")))
    raise ConfigError(f"search space {space!r} is neither a file nor a shipped space ({names})")


def load_space(space: str) -> SearchSpace:
    path = resolve_space_path(space)
    where = f"space {path}: "
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read search space {path}: {' '.join(str(err).split())[:300]}") from None
    if not isinstance(raw, dict) or set(raw) - _TOP_KEYS:
        unknown = sorted(set(raw) - _TOP_KEYS) if isinstance(raw, dict) else []
        raise ConfigError(f"{where}expected a mapping with keys {', '.join(sorted(_TOP_KEYS))}; unknown: {unknown}")
    base = _base_settings(raw, where)
    specs = _mapping(raw.get("params"), "params", where)
    if not specs:
        raise ConfigError(f"{where}params: name at least one setting to search")
    _check_names([*base, *specs], where)
    params = tuple(_param(str(name), spec, where) for name, spec in specs.items())
    sampler = _mapping(raw.get("sampler"), "sampler", where)
    pruner = raw.get("pruner", {"kind": "median"})
    pruner = {"kind": "none"} if pruner in (None, "none", False) else _mapping(pruner, "pruner", where)
    if pruner.get("kind", "median") not in PRUNERS:
        raise ConfigError(f"{where}pruner.kind must be one of {', '.join(PRUNERS)}, got {pruner.get('kind')!r}")
    space = SearchSpace(
        base=base,
        params=params,
        seed=_whole(sampler.get("seed", 0), "sampler.seed", where),
        startup_trials=_whole(sampler.get("startup_trials", 3), "sampler.startup_trials", where),
        pruner=pruner.get("kind", "median"),
        pruner_startup_trials=_whole(pruner.get("startup_trials", 2), "pruner.startup_trials", where),
        pruner_warmup_steps=_whole(pruner.get("warmup_steps", 0), "pruner.warmup_steps", where),
        enqueue_base=bool(raw.get("enqueue_base", True)),
        source=str(path),
    )
    _check_values(space, where)
    return space


def _base_settings(raw: dict, where: str) -> dict[str, Any]:
    base: dict[str, Any] = {}
    if raw.get("preset"):
        from bookmatch.pipeline import load_stage_options

        base.update(load_stage_options(str(raw["preset"]))["contrastive"])
    base.update(_mapping(raw.get("base"), "base", where))
    return base


def _mapping(value: Any, key: str, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key} must be a mapping, got {value!r}")
    return dict(value)


def _whole(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}{key} must be a whole number >= 0, got {value!r}")
    return value


def _number(value: Any) -> int | float | None:
    """A bound as YAML gave it (an int stays an int); text such as `1e-4` (YAML 1.1 reads it as a string) too."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _param(name: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}params.{name} must be {{low, high[, log]}} or {{choices: [...]}}, got {spec!r}")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices or set(spec) - {"choices"}:
            raise ConfigError(f"{where}params.{name}: choices must be a non-empty list (and alone)")
        return Param(name, "categorical", choices=tuple(choices))
    low, high, log = _number(spec.get("low")), _number(spec.get("high")), spec.get("log", False)
    if low is None or high is None or not low < high or set(spec) - {"low", "high", "log"} or not isinstance(log, bool):
        raise ConfigError(f"{where}params.{name} needs numbers low < high (and optionally log: true/false), got {spec}")
    if log and low <= 0:
        raise ConfigError(f"{where}params.{name}: a log-scale range needs low > 0, got {low}")
    kind = _setting_type(name)
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}params.{name} is not a number setting: give it choices: [...]")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}params.{name} is a whole-number setting: give whole-number low and high")
    return Param(name, kind, low=low, high=high, log=log)


def _setting_type(name: str) -> str:
    from bookmatch.config import _scalar_type, field_types
    from bookmatch.training.config import ContrastiveTrainConfig

    hint = field_types(ContrastiveTrainConfig).get(name)
    scalar = _scalar_type(hint)[0] if hint is not None else None
    return {int: "int", float: "float"}.get(scalar, "other")


def _check_names(names: list[str], where: str) -> None:
    from bookmatch.training.config import ContrastiveTrainConfig

    known = {f.name for f in dataclasses.fields(ContrastiveTrainConfig)}
    reserved = sorted(set(names) & set(RESERVED))
    if reserved:
        raise ConfigError(f"{where}{', '.join(reserved)} are set by `bookmatch tune` itself; remove them")
    unknown = sorted(set(names) - known)
    if unknown:
        raise ConfigError(
            f"{where}unknown setting(s) {', '.join(unknown)}; a space names ContrastiveTrainConfig settings"
        )


def _check_values(space: SearchSpace, where: str) -> None:
    """Build the trial config at the ends of every range (and each choice): a value train would refuse fails now."""
    from bookmatch.training.config import ContrastiveTrainConfig

    build_config(ContrastiveTrainConfig, settings=space.base, where=where + "base: ")
    for p in space.params:
        for value in p.choices if p.kind == "categorical" else (p.low, p.high):
            build_config(ContrastiveTrainConfig, settings=space.trial_settings({p.name: value}), where=where)
