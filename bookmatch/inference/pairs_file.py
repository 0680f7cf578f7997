"""Reading labelled or unlabelled pairs from JSON lines, with one clear error per bad line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from bookmatch.errors import InputError


def read_pairs_jsonl(
    path: str | os.PathLike,
    require_label: bool = False,
    skip_bad_lines: bool = False,
    bad_lines: list[str] | None = None,
    skip_hint: str | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each JSON line holding non-empty `text1` and `text2` (and `label` if required).

    A bad line raises InputError naming the file and line, or with `skip_bad_lines` is described in
    `bad_lines` (when given) and skipped. Blank lines are ignored. Bytes that are not UTF-8 are replaced.
    `skip_hint`: the caller's flag that skips bad lines (e.g. "--skip-bad-lines"), suggested in the error;
    None where the caller has no such flag, so the message never points at an option that does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pairs file {path} does not exist")
    # utf-8-sig: a byte-order mark some editors write would otherwise make the first line bad JSON
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            problem = None
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                problem = f"not valid JSON ({err.msg})"
            else:
                problem = _pair_problem(row, require_label)
            if problem is None:
                yield number, row
                continue
            message = f"{path} line {number}: {problem}"
            if not skip_bad_lines:
                raise InputError(f"{message}; fix the line" + (f" or pass {skip_hint}" if skip_hint else ""))
            if bad_lines is not None:
                bad_lines.append(message)


def _pair_problem(row: Any, require_label: bool) -> str | None:
    if not isinstance(row, dict):
        return "expected a JSON object with text1 and text2"
    for key in ("text1", "text2"):
        if key not in row:
            return f"missing field {key!r}"
        if not isinstance(row[key], str):
            return f"field {key!r} must be a string"
        if not row[key].strip():
            return f"field {key!r} is empty"
        if not is_valid_unicode(row[key]):
            return f"field {key!r} holds a lone surrogate (e.g. \\ud800), which is not valid Unicode text; re-encode the line as UTF-8"
    if require_label:
        if "label" not in row:
            return "missing field 'label'"
        if row["label"] not in (0, 1, True, False):
            return f"label must be 0 or 1, got {row['label']!r}"
    return None


def is_valid_unicode(text: str) -> bool:
    """False for text holding lone surrogates (a JSON "\\ud800", or argv bytes that were not UTF-8): the
    tokenizer cannot take them, so they are bad input rather than something to score."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
