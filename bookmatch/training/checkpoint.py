"""Training checkpoints: accelerate's full state (model, optimizer, scheduler, scaler, RNG) + the loop position.

A checkpoint folder appears in one rename (built as a temp folder beside it), so a run killed during a save
still has its previous checkpoint, and `latest_checkpoint` never sees a half-written one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bookmatch.storage import atomic_directory, atomic_write_json, read_json

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainerState:
    """Where the loop is; saved in every checkpoint so a resumed run continues exactly there."""

    global_step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches done (differs from global_step with gradient accumulation)
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    best_metric: float = -math.inf
    best_step: int = -1
    evals_since_best: int = 0
    stopped_early: bool = False
    sequences_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["best_metric"] = None if not math.isfinite(self.best_metric) else self.best_metric
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "TrainerState":
        known = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in values.items() if k in known})
        if state.best_metric is None:
            state.best_metric = -math.inf
        return state


def checkpoint_steps(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in `out`, oldest first."""
    found = []
    if out.is_dir():
        for child in out.iterdir():
            match = _CHECKPOINT.match(child.name)
            if match and child.is_dir() and (child / STATE_NAME).exists():
                found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(out: Path) -> Path | None:
    steps = checkpoint_steps(out)
    return steps[-1][1] if steps else None


@contextlib.contextmanager
def _quiet_accelerate() -> Iterator[None]:
    """accelerate logs one INFO line per file it saves; one line per checkpoint (ours) is enough."""
    accelerate_logger = logging.getLogger("accelerate")
    level = accelerate_logger.level
    accelerate_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        accelerate_logger.setLevel(level)


def save_checkpoint(accelerator, out: Path, state: TrainerState, save_total_limit: int) -> Path:
    """Every process calls this (accelerate writes per-rank RNG files; DeepSpeed per-rank shards)."""
    from accelerate.utils import broadcast_object_list

    path = out / f"checkpoint-{state.global_step}"
    with _quiet_accelerate():
        if accelerator.is_main_process:
            with atomic_directory(path) as tmp:
                shared = [str(tmp)]
                broadcast_object_list(shared)
                accelerator.save_state(str(tmp))
                # the state file marks the folder complete, so it is written after everything else
                atomic_write_json(tmp / STATE_NAME, state.to_json())
                accelerator.wait_for_everyone()
            _rotate(out, save_total_limit)
            logger.info("saved %s", path)
        else:
            shared = [None]
            broadcast_object_list(shared)
            accelerator.save_state(shared[0])
            accelerator.wait_for_everyone()
        accelerator.wait_for_everyone()
    return path


def load_checkpoint(accelerator, path: Path) -> TrainerState:
    with _quiet_accelerate():
        accelerator.load_state(str(path))
    return TrainerState.from_json(read_json(path / STATE_NAME))


def _rotate(out: Path, save_total_limit: int) -> None:
    if save_total_limit <= 0:
        return
    for _, old in checkpoint_steps(out)[:-save_total_limit]:
        shutil.rmtree(old, ignore_errors=True)


def clear_checkpoints(out: Path) -> None:
    """A fresh (not resumed) run must not leave an older run's checkpoints for a later --resume to pick up."""
    for _, old in checkpoint_steps(out):
        shutil.rmtree(old, ignore_errors=True)
