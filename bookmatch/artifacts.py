"""A commit manifest for artifact folders that a later run trusts (checkpoints, prepare shards, stage outputs).

Writers put every file of an artifact under its final name, then write `COMMIT.json` last: each file's size and
SHA-256, plus a digest of that table. Readers trust a folder only when `verify` says every listed file is there
with the listed size and checksum, and read only listed files.

Why not a rename or a marker file: on a bucket mount (SkyPilot MOUNT_CACHED, rclone) files upload after close,
in parallel and in any order, and a rename is a copy. A marker can reach the bucket before the files it vouches
for; a manifest that names sizes and checksums cannot vouch for a file that is cut, stale or absent.

Why SHA-256: hashlib's is OpenSSL's, which uses the CPU's SHA extensions (AMD EPYC and recent Intel have them):
roughly 1-2 GB/s on one core, so a 270 MB MiniLM checkpoint verifies in well under a second, and it needs no new
dependency. A faster non-cryptographic hash (xxhash) would add a package for a cost that does not matter here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from bookmatch.storage import atomic_write_bytes

COMMIT_NAME = "COMMIT.json"
FORMAT = "bookmatch-commit/1"
ALGORITHM = "sha256"
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Verdict:
    """`ok`, or the first reason the folder cannot be trusted; `meta` is what the writer recorded."""

    ok: bool
    reason: str = ""
    meta: dict[str, Any] | None = None
    files: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.ok


def file_digest(path: str | os.PathLike) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, ALGORITHM).hexdigest()


def describe_files(folder: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """{relative posix path: {"size", "sha256"}} for `names` (default: every file under `folder`, recursively,
    except commit manifests and hidden temp files such as `.x.tmp` left by atomic writes)."""
    folder = Path(folder)
    if names is None:
        names = sorted(
            path.relative_to(folder).as_posix()
            for path in folder.rglob("*")
            if path.is_file() and not _is_excluded(path.relative_to(folder))
        )
    table = {}
    for name in names:
        path = folder / name
        table[name] = {"size": path.stat().st_size, ALGORITHM: file_digest(path)}
    return table


def _is_excluded(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts) or _is_manifest_name(relative.name)


def _is_manifest_name(name: str) -> bool:
    return name == COMMIT_NAME or (name.startswith("COMMIT.") and name.endswith(".json"))


def _table_digest(files: dict[str, dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def write_commit(
    folder: str | os.PathLike,
    files: dict[str, dict[str, Any]] | None = None,
    meta: dict[str, Any] | None = None,
    name: str = COMMIT_NAME,
) -> Path:
    """Commit `folder`: call after every file of the artifact is written and closed; the manifest is written last.

    `files` (from `describe_files`, possibly merged across ranks) defaults to every file in the folder now.
    `name` lets one folder hold several commits over different files (e.g. `COMMIT.calibrate.json`).
    """
    folder = Path(folder)
    table = describe_files(folder) if files is None else dict(sorted(files.items()))
    body = {
        "format": FORMAT,
        "algorithm": ALGORITHM,
        "created": time.time(),
        "meta": meta or {},
        "files": table,
        "files_digest": _table_digest(table),
    }
    # allow_nan=False: a NaN would make the manifest invalid JSON for strict readers
    text = json.dumps(body, indent=1, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_bytes(folder / name, text.encode("utf-8"))


def uncommit(folder: str | os.PathLike, name: str = COMMIT_NAME) -> None:
    """Withdraw a commit before rewriting files in place: an old manifest must never vouch for new files."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        os.unlink(Path(folder) / name)


def read_commit(folder: str | os.PathLike, name: str = COMMIT_NAME) -> tuple[dict[str, Any] | None, str]:
    """(manifest, "") when it parses and its file table is intact, else (None, reason)."""
    path = Path(folder) / name
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, f"no {name} (its save was cut before the commit, or it was written without one)"
    except OSError as err:
        return None, f"cannot read {name}: {err.strerror or err}"
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, f"{name} is damaged ({len(raw)} bytes, not valid JSON)"
    if not isinstance(body, dict) or body.get("format") != FORMAT or body.get("algorithm") != ALGORITHM:
        return None, f"{name} is not a {FORMAT} manifest with {ALGORITHM} checksums"
    files = body.get("files")
    if not isinstance(files, dict) or body.get("files_digest") != _table_digest(files):
        return None, f"{name} is damaged (its file table does not match its digest)"
    return body, ""


def _safe_relative(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return bool(parts) and not PurePosixPath(name).is_absolute() and ".." not in parts and "\\" not in name


def verify(folder: str | os.PathLike, checksums: bool = True, name: str = COMMIT_NAME) -> Verdict:
    """Whether `folder` holds a whole commit: every listed file present with its size (and checksum, unless
    `checksums=False`, a cheap check for folders already verified once). Files not listed are ignored, and
    readers must not read them."""
    folder = Path(folder)
    if not folder.is_dir():
        return Verdict(False, f"{folder} is not a folder")
    body, reason = read_commit(folder, name)
    if body is None:
        return Verdict(False, reason)
    for relative, entry in body["files"].items():
        if not _safe_relative(relative) or not isinstance(entry, dict):
            return Verdict(False, f"{name} lists an unsafe path {relative!r}")
        path = folder / relative
        try:
            size = path.stat().st_size
        except OSError:
            return Verdict(False, f"{relative} is missing")
        if size != entry.get("size"):
            return Verdict(False, f"{relative} has {size} bytes, the commit says {entry.get('size')}")
        if checksums and file_digest(path) != entry.get(ALGORITHM):
            return Verdict(False, f"{relative} does not match its {ALGORITHM} checksum")
    meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
    return Verdict(True, "", meta, tuple(body["files"]))


def merge_file_tables(tables: Iterable[dict[str, dict[str, Any]]]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Union of per-node file tables; (table, names two nodes saw differently). Nodes that share a folder see the
    same files; a name seen with two sizes or checksums means one node saw a file still being written or uploaded."""
    merged: dict[str, dict[str, Any]] = {}
    conflicts = []
    for table in tables:
        for name, entry in table.items():
            if name in merged and merged[name] != entry:
                conflicts.append(name)
            merged.setdefault(name, entry)
    return merged, sorted(set(conflicts))
