"""Typed stage configs: dataclasses with the tuned defaults, loaded from YAML and overridden by the CLI.

Every stage saves its resolved config next to the artifacts it wrote (`save_config`).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from bookmatch.errors import InputError
from bookmatch.storage import atomic_write_text

C = TypeVar("C")


class ConfigError(InputError, ValueError):
    """A config file or option the user can fix (the message says what and where); the CLI prints one line."""


def check_batch_size(batch_size: Any, name: str = "batch_size", error: type[InputError] = ConfigError) -> int:
    """`batch_size` as an int >= 1: 0 crashes the encoder and a negative one silently skips encoding."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise error(f"{name} must be a whole number >= 1, got {batch_size!r}")
    return batch_size


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


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _coerce(name: str, value: Any, hint: Any, where: str) -> Any:
    """`value` as the field's declared scalar type. YAML reads `1e-4` (no dot) as a string and `--set k=v`
    values arrive as YAML too, so numbers and booleans written as text are converted here, once, for every
    config; a value that cannot be converted is a one-line error naming the option."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        scalars = [a for a in args if a is not type(None)]
        return _coerce(name, value, scalars[0], where) if len(scalars) == 1 else value
    try:
        if hint is bool and isinstance(value, str):
            if value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise ValueError(value)
        if hint is int and isinstance(value, str):
            return int(value)
        if hint is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if hint is float and isinstance(value, (str, int)) and not isinstance(value, bool):
            return float(value)
        if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    except ValueError:
        raise ConfigError(f"{where}option {name}: expected {hint.__name__}, got {value!r}") from None
    return value


def build_config(cls: type[C], file: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> C:
    """Defaults of `cls`, then the YAML `file`, then `overrides` whose value is not None (CLI flags); values
    written as text are converted to the fields' declared types."""
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
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
        values.update({k: _coerce(k, v, hints[k], f"config {file}: ") for k, v in loaded.items()})
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in names:
            raise ConfigError(f"unknown option {key} for {cls.__name__}")
        values[key] = _coerce(key, value, hints[key], "")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as err:  # a config's own check of its values (__post_init__): one line for the user
        raise ConfigError(f"{cls.__name__}: {err}") from None


def save_config(config: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically)."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def load_config(cls: type[C], path: str | os.PathLike) -> C:
    return build_config(cls, file=path)
