"""Typed stage configs: dataclasses with the tuned defaults, loaded from YAML and overridden by the CLI.

Each setting is declared once, with `setting(default, help, ...)`: its type (the annotation), its default, its
help text and the values it allows. From that one declaration come the checks every config runs when it is built
(`check_settings`, called by each config's `__post_init__`), the text-to-type conversion of YAML and `--set`
values (`build_config`) and the CLI options (`bookmatch.cli.options.config_options`). Every stage saves its
resolved config next to the artifacts it wrote (`save_config`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bookmatch.errors import InputError
from bookmatch.storage import atomic_write_text

C = TypeVar("C")


class ConfigError(InputError, ValueError):
    """A config file or option the user can fix (the message says what and where); the CLI prints one line."""


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: Sequence[str] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    cli: bool = True,
) -> Any:
    """A config field declared once: its default, its help (shown by `--help`), the values it allows (`choices`,
    the bounds `ge`/`gt`/`le`), and whether the stage's command offers it as an option (`cli`)."""
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "ge": ge, "gt": gt, "le": le, "cli": cli}
    return dataclasses.field(default=default, metadata=metadata)


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


def section_values(config: Any, section: type) -> dict[str, Any]:
    """The values of `config` that belong to the settings section `section` (a dataclass `config`'s class
    inherits from), as keyword arguments for the module that takes that section."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(section)}


# ------------------------------------------------------------------------------------------------ checks

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_TYPE_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML terms (true, null, {"a": 1}), for error lines."""
    try:
        return json.dumps(value, default=str, ensure_ascii=False)[:120]
    except (TypeError, ValueError):
        return repr(value)[:120]


def _scalar_type(hint: Any) -> tuple[Any, bool]:
    """(the field's type without None, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        others = [a for a in args if a is not type(None)]
        return (others[0] if len(others) == 1 else hint), type(None) in args
    return hint, hint is type(None) or hint is Any


def _allowed(scalar: Any, meta: Mapping[str, Any], nullable: bool) -> str:
    """The allowed values of a field in words: 'one of a, b', 'a number > 0', 'a whole number >= 1 or null'."""
    if meta.get("choices"):
        text = "one of " + ", ".join(meta["choices"])
    else:
        text = _TYPE_WORDS.get(scalar, getattr(scalar, "__name__", str(scalar)))
        limits = ((">=", meta.get("ge")), (">", meta.get("gt")), ("<=", meta.get("le")))
        bounds = [f"{op} {bound:g}" for op, bound in limits if bound is not None]
        if bounds:
            text += " " + " and ".join(bounds)
    return text + (" or null" if nullable else "")


def _convert(value: Any, scalar: Any, meta: Mapping[str, Any]) -> Any:
    """`value` as `scalar`, converting only what is exact: numbers and booleans written as text (YAML reads `1e-4`
    as a string; `--set` and CLI values arrive as text), 2.0 for an int, an int for a float, and YAML's
    `no`/`off` (read as false) where a string choice `no` is meant. Anything else is returned unchanged for
    the type check to refuse."""
    if isinstance(value, str) and scalar in (int, float, bool):
        text = value.strip().lower()
        if scalar is bool:
            return text in _TRUE if text in _TRUE | _FALSE else value
        try:
            number = float(text) if scalar is float or any(c in text for c in ".en") else int(text)
        except ValueError:
            return value
        value = number
    if isinstance(value, bool):
        if scalar is str and value is False and "no" in (meta.get("choices") or ()):
            return "no"  # YAML 1.1 reads an unquoted `no` / `off` as false
        return value
    if scalar is str and isinstance(value, (int, float)):
        return str(value)  # a name that YAML read as a number (a device index, a split called 2020)
    if scalar is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if scalar is float and isinstance(value, int):
        return float(value)
    return value


def check_value(name: str, value: Any, hint: Any, meta: Mapping[str, Any], convert: bool = False) -> Any:
    """`value` checked against a field's type, nullability, choices and bounds (converted first when `convert`,
    for values read from text); a ConfigError naming the setting and the allowed values otherwise."""
    scalar, nullable = _scalar_type(hint)
    if convert and nullable and isinstance(value, str) and value.strip().lower() in ("null", "~"):
        value = None  # as YAML reads it: a CLI flag's or `--set`'s way to ask for a nullable setting's null
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{name} must be {_allowed(scalar, meta, nullable)}, got null")
    if scalar not in _TYPE_WORDS:  # containers (lists, dicts of stage options): their own code checks them
        return value
    if convert:
        value = _convert(value, scalar, meta)
    ok = isinstance(value, scalar) and (scalar is bool or not isinstance(value, bool))
    if scalar is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if ok and scalar is float and not math.isfinite(value):
        ok = False
    hint_text = ""
    if not ok and scalar is str and isinstance(value, bool):
        hint_text = " (YAML reads unquoted yes/no/on/off as true/false: quote the value)"
    choices, ge, gt, le = (meta.get(key) for key in ("choices", "ge", "gt", "le"))
    if ok and choices and value not in choices:
        ok = False
    if (
        ok
        and scalar in (int, float)
        and ((ge is not None and value < ge) or (gt is not None and value <= gt) or (le is not None and value > le))
    ):
        ok = False
    if not ok:
        raise ConfigError(f"{name} must be {_allowed(scalar, meta, nullable)}, got {_show(value)}{hint_text}")
    return value


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config class (resolving them costs milliseconds: done once per class)."""
    return typing.get_type_hints(cls)


def check_settings(config: Any) -> None:
    """Check every field of the dataclass `config` that was declared with `setting(...)` (and the type of every
    other scalar field): the first bad one raises a ConfigError naming it. Configs call this in `__post_init__`,
    so a config built from Python is checked as strictly as one built from YAML or the CLI."""
    hints = field_types(type(config))
    for f in dataclasses.fields(config):
        value = check_value(f.name, getattr(config, f.name), hints[f.name], f.metadata)
        object.__setattr__(config, f.name, value)  # an int given for a float field is stored as a float


def setting_help(f: dataclasses.Field) -> str:
    return str(f.metadata.get("help", ""))


# ------------------------------------------------------------------------------------------------ building


def build_config(
    cls: type[C],
    file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    settings: Mapping[str, Any] | None = None,
    where: str = "",
) -> C:
    """Defaults of `cls`, then the YAML `file`, then `settings` (a mapping read from YAML, where null is a value),
    then `overrides` whose value is not None (CLI flags: None means "not given"). Values written as text are
    converted to the fields' declared types; every value is checked before the config exists, and a bad one is
    a ConfigError of one line: `where`, the setting, the values it allows."""
    values: dict[str, Any] = {}
    if file is not None:
        values.update(_read_mapping(cls, file))
        where = where or f"config {file}: "
    if settings is not None:
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{where}expected a mapping of option names to values, got {_show(settings)}")
        values.update(settings)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(k if isinstance(k, str) and k.isidentifier() else _show(k) for k in set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}unknown option(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(fields)}"
        )
    hints = field_types(cls)
    try:
        checked = {k: check_value(k, v, hints[k], fields[k].metadata, convert=True) for k, v in values.items()}
        return cls(**checked)
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None
    except (ValueError, TypeError) as err:  # a config's own check across its values (__post_init__)
        raise ConfigError(f"{where}{cls.__name__}: {err}") from None


def _read_mapping(cls: type, file: str | os.PathLike) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(file).read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config {file} is not UTF-8 text; save it as UTF-8 YAML") from None
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {file}: {' '.join(str(err).split())[:300]}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {file} must be a mapping of {cls.__name__} option names to values")
    return loaded


def save_config(config: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically)."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def load_config(cls: type[C], path: str | os.PathLike) -> C:
    return build_config(cls, file=path)
