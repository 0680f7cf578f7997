"""Reading labelled or unlabelled pairs from JSON lines, with one clear error per bad line."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bookmatch.errors import InputError

log = logging.getLogger(__name__)


STDIN = "-"
# Longest JSON line read (characters): far above any passage pair the models read (a bi-encoder reads at most
# max_windows x max_seq_length tokens, ~150 KB of text), low enough that one hostile line cannot fill memory.
MAX_LINE_CHARS = 16 * 1024 * 1024
# Bytes that are not UTF-8, as the surrogateescape reader sees them (one U+DC80-U+DCFF per byte).
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]+")
_NOT_UTF8_SHOWN = 3


def check_pairs_input(path: str | os.PathLike) -> None:
    """InputError unless `path` is `-` (stdin) or something that can be read as a stream: a file, a pipe,
    `/dev/stdin`. Called before any model work so a wrong path fails in seconds."""
    if os.fspath(path) == STDIN:
        return
    path = Path(path)
    if not path.exists():
        raise InputError(f"pairs file {path} does not exist")
    if path.is_dir():
        raise InputError(f"pairs file {path} is a folder: pass a JSONL file (or - for stdin)")


@contextlib.contextmanager
def _open_lines(path: Path) -> Iterator[IO[str]]:
    # surrogateescape keeps bytes that are not UTF-8 visible (as U+DC80-U+DCFF) so each line can be reported;
    # utf-8-sig: a byte-order mark some editors write would otherwise make the first line bad JSON.
    if os.fspath(path) == STDIN:
        stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", errors="surrogateescape")
        try:
            yield stream
        finally:
            stream.detach()  # leave sys.stdin usable
        return
    try:
        handle = open(path, encoding="utf-8-sig", errors="surrogateescape")  # noqa: SIM115 - closed by the with below
    except OSError as err:
        raise InputError(f"cannot read pairs file {path}: {err.strerror or err}") from err
    with handle:
        yield handle


def read_pairs_jsonl(
    path: str | os.PathLike,
    require_label: bool = False,
    skip_bad_lines: bool = False,
    bad_lines: list[str] | None = None,
    skip_hint: str | None = None,
    warnings: list[str] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each JSON line holding non-empty `text1` and `text2` (and `label` if required).

    `path` may be a file, a pipe or `/dev/stdin`, or `-` for stdin. A bad line raises InputError naming the file
    and line, or with `skip_bad_lines` is described in `bad_lines` (when given) and skipped. Blank lines are
    ignored. Bytes that are not UTF-8 are replaced by U+FFFD with a warning per line: appended to `warnings`
    when given, else logged (the first few, then a count).
    `skip_hint`: the caller's flag that skips bad lines (e.g. "--skip-bad-lines"), suggested in the error;
    None where the caller has no such flag, so the message never points at an option that does not exist.
    """
    check_pairs_input(path)
    path = Path(path)
    shown = "stdin" if os.fspath(path) == STDIN else str(path)
    not_utf8 = 0
    with _open_lines(path) as handle:
        for number, line in enumerate(_bounded_lines(handle), start=1):
            if line is None:
                problem = f"longer than {MAX_LINE_CHARS:,} characters (the limit for one pair)"
                if not skip_bad_lines:
                    raise InputError(
                        f"{shown} line {number}: {problem}; shorten the texts"
                        + (f" or pass {skip_hint}" if skip_hint else "")
                    )
                if bad_lines is not None:
                    bad_lines.append(f"{shown} line {number}: {problem}")
                continue
            if _ESCAPED_BYTES.search(line):
                line = _ESCAPED_BYTES.sub(lambda m: "\ufffd" * len(m.group()), line)
                not_utf8 += 1
                _warn_not_utf8(f"{shown} line {number}", not_utf8, warnings)
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
            message = f"{shown} line {number}: {problem}"
            if not skip_bad_lines:
                raise InputError(f"{message}; fix the line" + (f" or pass {skip_hint}" if skip_hint else ""))
            if bad_lines is not None:
                bad_lines.append(message)
    if warnings is None and not_utf8 > _NOT_UTF8_SHOWN:
        log.warning(
            "%s: %d more line(s) held bytes that are not UTF-8 (replaced by U+FFFD)", shown, not_utf8 - _NOT_UTF8_SHOWN
        )


def _bounded_lines(handle: IO[str]) -> Iterator[str | None]:
    """The lines of `handle`, with None in place of a line over MAX_LINE_CHARS (read past in pieces, never whole)."""
    while True:
        line = handle.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        if len(line) <= MAX_LINE_CHARS or line.endswith("\n"):
            yield line
            continue
        while line and not line.endswith("\n"):
            line = handle.readline(MAX_LINE_CHARS)
        yield None


def _warn_not_utf8(where: str, count: int, warnings: list[str] | None) -> None:
    message = f"{where} is not valid UTF-8: undecodable bytes were replaced by U+FFFD"
    if warnings is not None:
        warnings.append(message)
    elif count <= _NOT_UTF8_SHOWN:
        log.warning(message)


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


@dataclass
class LabelledPairs:
    text1: list[str]
    text2: list[str]
    labels: list[int]
    kinds: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)


def load_labelled_pairs(
    data_dir: str | os.PathLike | None = None,
    split: str = "validation",
    pairs_file: str | os.PathLike | None = None,
    max_pairs: int | None = None,
) -> LabelledPairs:
    """Labelled pairs from a prepared DatasetDict split, or from a JSONL file (`text1, text2, label[, kind]`).

    The kind of a dataset pair is its `neg_type` for negatives and "positive" for positives.
    """
    if (data_dir is None) == (pairs_file is None):
        raise InputError("give exactly one of --data (a prepared dataset folder) or --pairs (a JSONL file)")
    if pairs_file is not None:
        rows = []
        for _, row in read_pairs_jsonl(pairs_file, require_label=True):
            rows.append(row)
            if max_pairs is not None and len(rows) >= max_pairs:
                break
        return LabelledPairs(
            [r["text1"] for r in rows],
            [r["text2"] for r in rows],
            [int(r["label"]) for r in rows],
            [str(r.get("kind") or ("positive" if int(r["label"]) == 1 else "negative")) for r in rows],
            str(pairs_file),
        )
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"dataset folder {data_dir} does not exist: pass the folder written by `bookmatch prepare`")
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(str(data_dir))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise InputError(
            f"{data_dir} is not a saved dataset ({err}); pass the folder written by `bookmatch prepare`"
        ) from err
    if split not in dataset:
        raise InputError(f"dataset {data_dir} has no split {split!r} (it has {', '.join(dataset.keys())})")
    part = dataset[split]
    if max_pairs is not None and len(part) > max_pairs:
        part = part.select(range(max_pairs))
    for column in ("text1", "text2", "label"):
        if column not in part.column_names:
            raise InputError(f"dataset {data_dir} split {split!r} lacks the column {column!r}")
    labels = [int(v) for v in part["label"]]
    if "neg_type" in part.column_names:
        kinds = ["positive" if label == 1 else (neg or "negative") for label, neg in zip(labels, part["neg_type"])]
    elif "pair_type" in part.column_names:
        kinds = list(part["pair_type"])
    else:
        kinds = ["positive" if label == 1 else "negative" for label in labels]
    return LabelledPairs(list(part["text1"]), list(part["text2"]), labels, kinds, f"{data_dir}[{split}]")
