"""Training checkpoints that a resume can trust, also on a bucket mount where files arrive late and in any order.

A checkpoint is `checkpoint-<step>/`: accelerate's state (model, optimizer, grad scaler, per-rank RNG; DeepSpeed
shards), our custom objects as JSON (`custom_state_<i>.json`, e.g. the LR scheduler) and `trainer_state.json`,
every file written under its final name by the rank that owns it, then `COMMIT.json` (bookmatch.artifacts) by
rank 0 once every rank has closed its files, and only when the nodes' listings hold every rank's files (RNG
state; ZeRO shards). A resume takes the newest checkpoint that verifies and logs why it skipped any newer one;
rotation deletes old checkpoints only after the new one verifies.

Nothing here unpickles code: accelerate loads model weights from safetensors and optimizer, scaler and RNG files
with `torch.load(weights_only=True)`; its custom-object loader (`weights_only=False`) is never used, because the
registered objects are taken out of its hands and saved as JSON here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bookmatch.artifacts import (
    COMMIT_NAME,
    describe_files,
    merge_file_tables,
    uncommit,
    verify,
    write_commit,
)
from bookmatch.errors import BookmatchError
from bookmatch.storage import atomic_write_json, read_json

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
FINAL_NAME = "final"
CUSTOM_STATE = "custom_state_{}.json"
RNG_STATE = "random_states_{}.pkl"  # accelerate's name; loaded here with weights_only=True
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_ZERO_RANK = re.compile(r"zero_pp_rank_\d+_")  # DeepSpeed's data-parallel rank in a shard's name


class CheckpointError(BookmatchError):
    """A checkpoint that verified cannot be resumed from as it is (e.g. saved with another number of processes)."""


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
    # Names this run in the commits of its checkpoints and final/, so a resume never pairs a checkpoint with a
    # final/ left by an earlier run in the same folder. Only rank 0 writes commits, so only its value matters.
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["best_metric"] = None if not math.isfinite(self.best_metric) else self.best_metric
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> TrainerState:
        known = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in values.items() if k in known})
        if state.best_metric is None:
            state.best_metric = -math.inf
        return state


def checkpoint_steps(out: Path) -> list[tuple[int, Path]]:
    """Every `checkpoint-<step>` folder in `out`, committed or not, oldest first."""
    found = []
    if Path(out).is_dir():
        for child in Path(out).iterdir():
            match = _CHECKPOINT.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
    return sorted(found)


def resumable_checkpoint(out: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest checkpoint a resume can trust, [(newer checkpoint, why it was skipped)])."""
    skipped: list[tuple[Path, str]] = []
    for _, path in reversed(checkpoint_steps(Path(out))):
        reason = _resume_problem(Path(out), path)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped


def latest_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint that verifies (and that final/ agrees with); None when there is none."""
    return resumable_checkpoint(out)[0]


def _resume_problem(out: Path, path: Path) -> str | None:
    verdict = verify(path)
    if not verdict:
        return verdict.reason
    missing = missing_rank_files(verdict.files, (verdict.meta or {}).get("world_size"))
    if missing:
        return f"its commit does not list {', '.join(missing[:3])} (a rank's files that no process listed)"
    try:
        state = TrainerState.from_json(read_json(path / STATE_NAME))
    except (ValueError, TypeError, OSError) as err:  # listed and whole, yet not a state: written by something else
        return f"{STATE_NAME} is not a trainer state ({type(err).__name__})"
    return _final_problem(out / FINAL_NAME, path, state)


def missing_rank_files(names, world_size: Any) -> list[str]:
    """Per-rank files that a checkpoint saved by `world_size` processes must list and does not: every rank's RNG
    state and, for each kind of DeepSpeed ZeRO shard listed (`[bf16_]zero_pp_rank_<r>_mp_rank_00_optim_states.pt`;
    ZeRO-3's `..._model_states.pt`), that shard of every rank. A commit is written from what each node's lister
    saw; a file absent from every listing would verify and then fail to load, or load another rank's state."""
    if not isinstance(world_size, int) or world_size < 1:
        return []
    names = set(names)
    templates = {RNG_STATE.format("<R>")} | {
        _ZERO_RANK.sub("zero_pp_rank_<R>_", n) for n in names if _ZERO_RANK.search(n)
    }
    expected = [t.replace("<R>", str(rank)) for t in sorted(templates) for rank in range(world_size)]
    return [name for name in expected if name not in names]


def _final_problem(final_dir: Path, path: Path, state: TrainerState) -> str | None:
    """final/ holds the best evaluation's weights, and a resume re-creates it only when it re-runs that evaluation.

    So a checkpoint taken after its best evaluation needs final/ whole and from that evaluation of this run, or
    from a later evaluation (a resume reaches and re-saves it). Otherwise an older checkpoint is the safe start.
    """
    if state.best_step < 0:
        return None
    verdict = verify(final_dir)
    if not verdict:
        return f"final/ from its best evaluation (step {state.best_step}) cannot be trusted: {verdict.reason}"
    meta = verdict.meta or {}
    if meta.get("run_id") != state.run_id:
        return f"final/ was committed by another run than this checkpoint's (run {meta.get('run_id')})"
    step = int(meta.get("step", -1))
    if step == state.best_step or step > int(path.name.split("-")[1]):
        return None
    return f"final/ holds step {step}, but this checkpoint's best evaluation was step {state.best_step}"


def resume_checkpoint(accelerator, out: Path) -> Path | None:
    """Rank 0 picks the checkpoint to resume from (verifying once) and every rank gets the same answer."""
    from accelerate.utils import broadcast_object_list

    chosen: list[str | None] = [None]
    if accelerator.is_main_process:
        path, skipped = resumable_checkpoint(Path(out))
        for bad, reason in skipped:
            logger.warning("not resuming from %s: %s", bad, reason)
        chosen = [str(path) if path is not None else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(chosen)
    return Path(chosen[0]) if chosen[0] else None


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


@contextlib.contextmanager
def _custom_objects_aside(accelerator) -> Iterator[list]:
    """Objects given to `register_for_checkpointing`, kept out of accelerate's hands for the duration: it would
    pickle them, and its loader unpickles with weights_only=False (a planted file could run code)."""
    objects = list(getattr(accelerator, "_custom_objects", []))
    accelerator._custom_objects = []
    try:
        yield objects
    finally:
        accelerator._custom_objects = objects


# DeepSpeed's own plain-data classes inside a ZeRO checkpoint (module, name): allowed for torch.load's
# weights_only unpickler, which rebuilds them from their fields and runs no other code.
_DEEPSPEED_SAFE_GLOBALS = [
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
]


@contextlib.contextmanager
def _deepspeed_loads_weights_only(accelerator) -> Iterator[None]:
    """DeepSpeed (0.19) loads its checkpoint files with torch.load(weights_only=False): a planted shard would run
    code. For the duration of a resume its loader is swapped for torch.load(weights_only=True) that admits only
    DeepSpeed's plain-data classes."""
    if getattr(accelerator.state, "deepspeed_plugin", None) is None:
        yield
        return
    import importlib

    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import (
        TorchCheckpointEngine,
    )

    allowed = []
    for module, name in _DEEPSPEED_SAFE_GLOBALS:
        with contextlib.suppress(ImportError, AttributeError):
            allowed.append(getattr(importlib.import_module(module), name))

    def load(self, path, map_location=None):
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)

    original = TorchCheckpointEngine.load
    TorchCheckpointEngine.load = load
    try:
        yield
    finally:
        TorchCheckpointEngine.load = original


def _write_custom_state(path: Path, index: int, obj) -> None:
    try:
        text = json.dumps(obj.state_dict(), allow_nan=False, indent=1)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"the state of {type(obj).__name__} is not plain JSON ({err}); checkpoints store no pickles"
        ) from None
    (path / CUSTOM_STATE.format(index)).write_text(text + "\n", encoding="utf-8")


def save_checkpoint(accelerator, out: Path, state: TrainerState, save_total_limit: int) -> Path:
    """Every process calls this: each writes its own files (RNG; DeepSpeed shards) under their final names."""
    from accelerate.utils import gather_object

    path = Path(out) / f"checkpoint-{state.global_step}"
    if accelerator.is_main_process:
        # a folder of that name is what a cut run left (a resume starts before it): its commit goes first
        uncommit(path)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with _quiet_accelerate(), _custom_objects_aside(accelerator) as custom:
        accelerator.save_state(str(path))
        if accelerator.is_main_process:
            for index, obj in enumerate(custom):
                _write_custom_state(path, index, obj)
            atomic_write_json(path / STATE_NAME, state.to_json())
    accelerator.wait_for_everyone()  # every rank has closed its files
    # one process per node lists what it sees: nodes with their own cache see their own ranks' files
    table = describe_files(path) if accelerator.is_local_main_process else {}
    tables = gather_object([table]) if accelerator.num_processes > 1 else [table]
    if accelerator.is_main_process:
        _commit(out, path, tables, state, accelerator.num_processes, save_total_limit)
    accelerator.wait_for_everyone()
    return path


def _commit(
    out: Path, path: Path, tables: list[dict], state: TrainerState, world_size: int, save_total_limit: int
) -> None:
    files, conflicts = merge_file_tables(tables)
    if conflicts:
        logger.warning(
            "%s not committed: nodes saw different contents of %s; the previous checkpoint stays",
            path,
            ", ".join(conflicts[:5]),
        )
        return
    missing = missing_rank_files(files, world_size)
    if missing:
        logger.warning(
            "%s not committed: no process listed %s; the previous checkpoint stays", path, ", ".join(missing[:5])
        )
        return
    write_commit(
        path,
        files,
        meta={"kind": "checkpoint", "step": state.global_step, "world_size": world_size, "run_id": state.run_id},
    )
    verdict = verify(path)
    if not verdict:
        logger.warning("%s does not verify after its commit (%s); older checkpoints are kept", path, verdict.reason)
        return
    _rotate(Path(out), save_total_limit, newest=path)
    logger.info("saved %s", path)


def load_checkpoint(accelerator, path: Path) -> TrainerState:
    """Load a checkpoint chosen by `resume_checkpoint` (rank 0 verified its checksums) into the prepared objects."""
    verdict = verify(path, checksums=False)  # every rank: its node sees every listed file whole
    if not verdict:
        raise CheckpointError(f"cannot resume from {path}: {verdict.reason}")
    with _quiet_accelerate(), _custom_objects_aside(accelerator) as custom, _deepspeed_loads_weights_only(accelerator):
        try:
            accelerator.load_state(str(path))
        except Exception as err:  # noqa: BLE001 - a verified checkpoint that still fails to load: one clear line
            raise CheckpointError(
                f"cannot load {path} ({type(err).__name__}: {_first_line(err)}); "
                "remove that checkpoint to resume from an older one, or start over without --resume"
            ) from None
        for index, obj in enumerate(custom):
            custom_path = path / CUSTOM_STATE.format(index)
            try:
                obj.load_state_dict(read_json(custom_path))
            except (OSError, ValueError, TypeError, KeyError) as err:
                raise CheckpointError(
                    f"cannot restore {type(obj).__name__} from {custom_path} ({type(err).__name__}: {_first_line(err)}); "
                    "it was not saved by this version of bookmatch, or is damaged"
                ) from None
    # accelerate goes on silently when the RNG file is missing or unreadable; a resume that differs from the
    # uninterrupted run without a word is worse than an error, so the RNG state is loaded again here, strictly
    _load_rng_state(path, accelerator.process_index, accelerator.num_processes)
    try:
        return TrainerState.from_json(read_json(path / STATE_NAME))
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{path / STATE_NAME} is not a trainer state ({type(err).__name__}); start over without --resume"
        ) from None


def _first_line(err: BaseException) -> str:
    from bookmatch.errors import first_line

    return first_line(err, 200)


def _load_rng_state(path: Path, rank: int, world_size: int) -> None:
    import random

    import numpy as np
    import torch
    from accelerate.utils import (
        load,  # torch.load with weights_only=True and numpy's array types allowed
    )

    file = path / RNG_STATE.format(rank)
    if not file.exists():
        raise CheckpointError(
            f"{path} has no RNG state for rank {rank} ({file.name}): it was saved by another number of processes "
            f"than this run's {world_size}; resume with the same number, or start over without --resume"
        )
    try:
        states = load(file)
        random.setstate(states["random_state"])
        np.random.set_state(states["numpy_random_seed"])
        torch.set_rng_state(states["torch_manual_seed"])
        if torch.cuda.is_available() and "torch_cuda_manual_seed" in states:
            torch.cuda.set_rng_state_all(states["torch_cuda_manual_seed"])
    except Exception as err:  # noqa: BLE001 - any failure means the resume would not be exact
        raise CheckpointError(
            f"cannot restore the RNG state from {file} ({type(err).__name__}: {_first_line(err)}); "
            "start over without --resume"
        ) from None


def commit_final(final_dir: Path, state: TrainerState) -> None:
    """Commit final/ after the model is saved (rank 0): a resume then knows which evaluation it holds."""
    write_commit(final_dir, meta={"kind": "final", "step": state.global_step, "run_id": state.run_id})


def run_complete(out: Path, summary_name: str = "train_summary.json") -> bool:
    """Whether the run in `out` finished: its summary (written last) says so and final/ verifies. A summary that
    arrived in a bucket before final/ did, or was cut, does not count."""
    try:
        complete = bool(read_json(Path(out) / summary_name).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False
    return complete and bool(verify(Path(out) / FINAL_NAME))


def _rotate(out: Path, save_total_limit: int, newest: Path) -> None:
    """Keep the newest `save_total_limit` committed checkpoints; called only once `newest` verifies, and never
    deletes it. Uncommitted folders older than `newest` are what cut saves left: removed too."""
    if save_total_limit <= 0:
        return
    older = [path for _, path in checkpoint_steps(out) if path != newest and _step(path) < _step(newest)]
    committed = [path for path in older if (path / COMMIT_NAME).exists()]
    keep = set(committed[len(committed) - (save_total_limit - 1) :]) if save_total_limit > 1 else set()
    for path in older:
        if path not in keep:
            _remove(path)


def _step(path: Path) -> int:
    return int(path.name.split("-")[1])


def _remove(path: Path) -> None:
    uncommit(path)  # the commit goes first: a half-deleted folder must not look whole to a reader
    shutil.rmtree(path, ignore_errors=True)


def clear_checkpoints(out: Path) -> None:
    """A fresh (not resumed) run must not leave an older run's checkpoints (or final/ commit) for a later --resume."""
    for _, old in checkpoint_steps(Path(out)):
        _remove(old)
    uncommit(Path(out) / FINAL_NAME)
