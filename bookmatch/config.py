"""Typed stage configs: dataclasses with the tuned defaults, loaded from YAML and overridden by the CLI.

Every stage saves its resolved config next to the artifacts it wrote (`save_config`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from bookmatch.storage import atomic_write_text

C = TypeVar("C")


class ConfigError(ValueError):
    """A config file or option the user can fix (the message says what and where)."""


def config_to_dict(config: Any) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return value

    return plain(config)


def build_config(cls: type[C], file: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> C:
    """Defaults of `cls`, then the YAML `file`, then `overrides` whose value is not None (CLI flags)."""
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    if file is not None:
        try:
            loaded = yaml.safe_load(Path(file).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config {file}: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {file} must be a mapping of option names to values")
        unknown = sorted(set(loaded) - names)
        if unknown:
            raise ConfigError(f"config {file}: unknown option(s) {', '.join(unknown)} for {cls.__name__}")
        values.update(loaded)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in names:
            raise ConfigError(f"unknown option {key} for {cls.__name__}")
        values[key] = value
    return cls(**values)


def save_config(config: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically)."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def load_config(cls: type[C], path: str | os.PathLike) -> C:
    return build_config(cls, file=path)
