"""Temp files and folders a killed run leaves behind, removed by the next run of the same command.

Temp names carry the writer's process ID (`.<name>.<kind>-<pid>...`), so a later run removes only what a dead
process left and never the temp files of a run still going beside it. (A dead run's ID reused by a live
process keeps its leftover until that process ends: harmless, and removed by a later run.)
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Is a process with this ID running on this machine?"""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists, under another user
    return True


def sweep_dead(folder: str | os.PathLike, pattern: str) -> list[Path]:
    """Remove the entries of `folder` whose name fully matches `pattern` and whose named group `pid` is not a
    running process (a match without a `pid` group, or with an empty one, is an older unnamed leftover and goes
    too). Returns what was removed; entries that vanish meanwhile or cannot be removed are left alone."""
    folder = Path(folder)
    compiled = re.compile(pattern)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = compiled.fullmatch(entry.name)
        if match is None:
            continue
        pid = match.groupdict().get("pid")
        if pid and pid_alive(int(pid)):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def temp_name(name: str, kind: str) -> str:
    """`.<name>.<kind>-<pid>.tmp`: a temp name `sweep_dead` can trace to the process that wrote it."""
    return f".{name}.{kind}-{os.getpid()}.tmp"
