"""A bucket-mount simulator: what an object-store bucket holds when the VM writing to it through a cached mount
(SkyPilot MOUNT_CACHED, rclone) dies.

Such a mount uploads a file some time after it is closed, several files at a time and in any order; a rename is
a copy then a delete; a delete can reach the bucket before the uploads that preceded it. So the bucket after a
preemption is: everything written long enough ago, plus, for each change of the last moments, that change or not
(a new file absent, an overwritten file still old, a deleted file still there), and a file being written or
uploaded cut short.

`Recorder` snapshots the training folder after every optimizer step (the trainer's `on_step` hook runs after
the step's evaluation and checkpoint, once every rank has closed its files) and once at the end. `bucket_view`
turns snapshot k into the bucket of a VM killed during the next interval, i.e. at a random moment of the writes
that lead to snapshot k+1 (a checkpoint save, a final/ save), with uploads lagging by up to `lag` intervals.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Recorder:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.snapshots: list[dict[str, bytes]] = [snapshot(self.folder) if self.folder.exists() else {}]
        self.steps: list[int] = [0]

    def on_step(self, global_step: int) -> None:
        self.snapshots.append(snapshot(self.folder))
        self.steps.append(global_step)

    def finish(self) -> None:
        self.on_step(-1)  # the state after the run's last writes (final/, the summary)


def bucket_view(
    snapshots: list[dict[str, bytes]], kill_after: int, rng: random.Random, lag: int = 1
) -> dict[str, bytes]:
    """The bucket when the writer dies between snapshots `kill_after` and `kill_after + 1`."""
    base = snapshots[max(0, kill_after - rng.randint(0, lag))]
    target = snapshots[min(kill_after + 1, len(snapshots) - 1)]
    view = dict(base)
    for name in sorted(set(base) | set(target)):
        old, new = base.get(name), target.get(name)
        if old == new:
            continue
        draw = rng.random()
        if draw < 0.35:
            continue  # this change has not reached the bucket: a new file absent, an old one unchanged or undeleted
        if new is None:
            view.pop(name, None)
        elif draw < 0.55 and len(new) > 1:
            view[name] = new[: rng.randrange(1, len(new))]  # written or uploaded only in part
        else:
            view[name] = new
    return view


def materialize(view: dict[str, bytes], folder: Path) -> Path:
    """Write a bucket view into `folder` (what a new VM sees through the mount)."""
    if folder.exists():
        shutil.rmtree(folder)
    for name, data in view.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def interesting_kill_points(recorder: Recorder) -> list[int]:
    """Snapshot indices whose next interval writes a checkpoint or final/ (the moments worth killing in)."""
    points = []
    for k in range(len(recorder.snapshots) - 1):
        before, after = recorder.snapshots[k], recorder.snapshots[k + 1]
        changed = {n for n in set(before) | set(after) if before.get(n) != after.get(n)}
        if any(n.startswith(("checkpoint-", "final/")) or n == "train_summary.json" for n in changed):
            points.append(k)
    return points


def lost_upload(view: dict[str, bytes], name: str, rng: random.Random | None = None) -> dict[str, bytes]:
    """The bucket when the preemption stopped the upload of `name`: without `rng` the file is absent; with it,
    only a random first part of it landed. Every other file is as in `view` (e.g. a checkpoint's small manifest,
    closed last, uploaded before a large optimizer shard finished: parallel transfers end in any order)."""
    damaged = dict(view)
    data = damaged.pop(name)
    if rng is not None:
        damaged[name] = data[: rng.randrange(1, len(data))]
    return damaged
