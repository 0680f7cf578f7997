"""DeepSpeed ZeRO-2 (the cloud contrastive stage) under the commit protocol, on 2 CPU processes: both ranks'
optimizer shards are in the checkpoint's manifest, and a checkpoint that a preemption left damaged on the bucket
(a rank's shard cut or absent while the manifest landed, or the manifest absent) is skipped with a logged reason;
the resume from the older checkpoint ends with the uninterrupted run's weights and optimizer state."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import random
import re
from pathlib import Path

import pytest
import torch
from bucket_sim import lost_upload, materialize, snapshot
from safetensors.torch import load_file
from test_resume import data_dir  # noqa: F401  (a fixture)

from bookmatch.artifacts import COMMIT_NAME, verify, write_commit
from bookmatch.training import checkpoint as ckpt
from bookmatch.training.checkpoint import _DEEPSPEED_SAFE_GLOBALS, missing_rank_files, resumable_checkpoint

# Not a dev dependency (see tests/test_deepspeed.py): without it there is no ZeRO to run.
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed (pip install deepspeed; it comes with the gpu extra)",
)

ENGINE = "pytorch_model"  # accelerate's tag: DeepSpeed writes its files in checkpoint-<step>/pytorch_model/
SHARD = ENGINE + "/zero_pp_rank_{}_mp_rank_00_optim_states.pt"
MODEL_STATES = ENGINE + "/mp_rank_00_model_states.pt"
KILL_AT = 10  # after checkpoint-8 (saves every 4 steps, 12 steps in all), before the run ends


def _deepspeed_file(path: Path) -> dict:
    """A DeepSpeed checkpoint file, read as the resume reads it (weights_only, DeepSpeed's data classes allowed)."""
    allowed = [getattr(importlib.import_module(module), name) for module, name in _DEEPSPEED_SAFE_GLOBALS]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def _tensors(value, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested checkpoint structure, by its path."""
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list | tuple) else ()
    found: dict[str, torch.Tensor] = {}
    for key, item in items:
        found |= _tensors(item, f"{prefix}/{key}")
    return found


def _engine_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The module weights and each rank's fp32 master partition and Adam moments of a ZeRO checkpoint."""
    state = {f"module{k}": v for k, v in _tensors(_deepspeed_file(checkpoint / MODEL_STATES)["module"]).items()}
    for rank in (0, 1):
        optimizer = _deepspeed_file(checkpoint / SHARD.format(rank))["optimizer_state_dict"]
        state |= {f"rank{rank}{k}": v for k, v in _tensors(optimizer).items()}
    return state


def _damaged_views(view: dict[str, bytes]) -> dict[str, tuple[dict[str, bytes], str]]:
    """What a preemption during checkpoint-8's upload leaves: {case: (bucket, what the skip reason names)}."""
    newest = "checkpoint-8/"
    return {
        "rank 1's shard cut": (
            lost_upload(view, newest + SHARD.format(1), random.Random(1)),
            re.escape(SHARD.format(1)) + r" has \d+ bytes, the commit says \d+",
        ),
        "rank 0's shard absent": (
            lost_upload(view, newest + SHARD.format(0)),
            re.escape(SHARD.format(0)) + " is missing",
        ),
        "manifest absent": (lost_upload(view, newest + COMMIT_NAME), "no " + re.escape(COMMIT_NAME)),
    }


@needs_deepspeed
@pytest.mark.slow  # four ZeRO-2 launches of 2 processes each: minutes on 2 cores
def test_zero2_resume_falls_back_past_a_damaged_checkpoint(data_dir, tiny_encoder_dir, tmp_path):  # noqa: F811
    from test_deepspeed import _launch, _zero_on_two_cpu_processes

    config = _zero_on_two_cpu_processes(tmp_path, 2)
    straight = tmp_path / "straight"
    run = _launch(config, data_dir, tiny_encoder_dir, straight)
    assert run.returncode == 0, run.stderr[-3000:]
    killed = tmp_path / "killed"
    run = _launch(config, data_dir, tiny_encoder_dir, killed, kill_at=KILL_AT)
    assert run.returncode != 0 and not (killed / "train_summary.json").exists()

    # the protocol on the ZeRO path: both ranks' shards and RNG states, and DeepSpeed's own files, are committed
    assert resumable_checkpoint(killed) == (killed / "checkpoint-8", [])
    listed = set(verify(killed / "checkpoint-8").files)
    written = set(snapshot(killed / "checkpoint-8"))
    assert {SHARD.format(0), SHARD.format(1), MODEL_STATES, "random_states_0.pkl", "random_states_1.pkl"} <= listed
    assert listed == written - {COMMIT_NAME}

    view = snapshot(killed)
    for case, (damaged, reason) in _damaged_views(view).items():
        bucket = materialize(damaged, tmp_path / "bucket")
        chosen, skipped = resumable_checkpoint(bucket)
        assert chosen == bucket / "checkpoint-4", case
        assert [path for path, _ in skipped] == [bucket / "checkpoint-8"], case
        assert re.search(reason, skipped[0][1]), (case, skipped[0][1])

    _assert_planted_shard_runs_no_code(lambda out: _launch(config, data_dir, tiny_encoder_dir, out, "--resume"), killed)

    # one of them resumed for real (the shard of the rank that does not write the manifest)
    bucket = materialize(_damaged_views(view)["rank 1's shard cut"][0], tmp_path / "bucket")
    run = _launch(config, data_dir, tiny_encoder_dir, bucket, "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"not resuming from \S+checkpoint-8: " + re.escape(SHARD.format(1)) + " has", run.stderr)
    assert re.search(r"resumed from \S+checkpoint-4 \(step 4,", run.stderr)
    _assert_same_end(straight, bucket)


def _assert_planted_shard_runs_no_code(resume, killed: Path) -> None:
    """DeepSpeed 0.19 unpickles its shards with weights_only=False; a resume swaps in weights_only=True. Someone
    who can write to the bucket replaces rank 1's shard with a pickle that runs code, and re-commits."""
    from test_commit_protocol import _plant

    attacked = materialize(snapshot(killed), killed.parent / "attacked")
    marker = killed.parent / "code_ran"
    _plant(attacked / "checkpoint-8" / SHARD.format(1), marker)
    write_commit(attacked / "checkpoint-8", meta=verify(killed / "checkpoint-8").meta)
    assert resumable_checkpoint(attacked)[0] == attacked / "checkpoint-8"  # it verifies: only the loader stands
    run = resume(attacked)
    assert run.returncode != 0 and not marker.exists()
    assert re.search(r"error: cannot load \S+checkpoint-8 \(UnpicklingError", run.stderr), run.stderr[-3000:]


def _assert_same_end(straight: Path, resumed: Path) -> None:
    """Bit for bit: on 2 CPU processes gloo reduces in a fixed order, so ZeRO-2's reduce-scatter and all-gather
    give the same sums in the resumed run as in the uninterrupted one."""
    a = json.loads((straight / "train_summary.json").read_text())
    b = json.loads((resumed / "train_summary.json").read_text())
    assert a["global_step"] == b["global_step"] == 12 and a["best_step"] == b["best_step"]
    assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]] == [4, 8, 12]
    for ha, hb in zip(a["history"], b["history"]):
        for key in ("val_loss", "val_auc", "train_loss"):
            assert hb[key] == ha[key], (ha["step"], key)
    wa = load_file(str(straight / "final" / "model.safetensors"))
    wb = load_file(str(resumed / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # checkpoint-8 was written again after the resume point: same weights, master partitions and Adam moments
    ea, eb = _engine_state(straight / "checkpoint-8"), _engine_state(resumed / "checkpoint-8")
    assert ea.keys() == eb.keys() and any("exp_avg_sq" in k for k in ea) and any(k.startswith("rank1") for k in ea)
    assert [k for k in ea if not torch.equal(ea[k], eb[k])] == []
    # training moved the state between the kept checkpoints, so equality above means something
    early = _engine_state(resumed / "checkpoint-4")
    assert sum(not torch.equal(early[k], eb[k]) for k in eb) > len(eb) // 2


# ---------------------------------------------------------------------------------------------------------------
# every rank's files in the commit (fast, no DeepSpeed needed)
# ---------------------------------------------------------------------------------------------------------------


def test_missing_rank_files_names_each_ranks_rng_state_and_zero_shards():
    optim, bf16 = SHARD, ENGINE + "/bf16_zero_pp_rank_{}_mp_rank_00_optim_states.pt"
    whole = ["random_states_0.pkl", "random_states_1.pkl", optim.format(0), optim.format(1), MODEL_STATES]
    assert missing_rank_files(whole, 2) == []
    assert missing_rank_files(whole, 3) == [optim.format(2), "random_states_2.pkl"]
    assert missing_rank_files([n for n in whole if n != optim.format(1)], 2) == [optim.format(1)]
    assert missing_rank_files(["random_states_1.pkl", bf16.format(0)], 2) == [bf16.format(1), "random_states_0.pkl"]
    assert missing_rank_files(["random_states_0.pkl"], 1) == []
    assert missing_rank_files([], None) == []  # a commit without a recorded world size (not a checkpoint's)


def _fake_checkpoint(out: Path, step: int, names: list[str], world_size: int = 2) -> Path:
    path = out / f"checkpoint-{step}"
    for name in names:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(name.encode())
    (path / ckpt.STATE_NAME).write_text(json.dumps(ckpt.TrainerState(global_step=step).to_json()))
    write_commit(path, meta={"kind": "checkpoint", "step": step, "world_size": world_size})
    return path


def test_a_commit_that_lacks_a_ranks_shard_is_not_resumed_from(tmp_path):
    """E.g. a node whose lister saw none of its ranks' files: the commit verifies, yet rank 1 has nothing to load."""
    whole = ["random_states_0.pkl", "random_states_1.pkl", SHARD.format(0), SHARD.format(1), MODEL_STATES]
    _fake_checkpoint(tmp_path, 4, whole)
    _fake_checkpoint(tmp_path, 8, [n for n in whole if n != SHARD.format(1)])
    chosen, skipped = resumable_checkpoint(tmp_path)
    assert chosen == tmp_path / "checkpoint-4"
    assert skipped == [
        (
            tmp_path / "checkpoint-8",
            f"its commit does not list {SHARD.format(1)} (a rank's files that no process listed)",
        )
    ]


def test_a_save_whose_listing_lacks_a_ranks_file_is_not_committed(tmp_path, monkeypatch, caplog):
    from test_commit_protocol import _step, _training_objects

    accelerator, *objects = _training_objects()
    state = ckpt.TrainerState(global_step=2)
    _step(accelerator, *objects)
    ckpt.save_checkpoint(accelerator, tmp_path, state, save_total_limit=1)
    real_describe = ckpt.describe_files

    def listing_without_rng(path, *args, **kwargs):
        return {k: v for k, v in real_describe(path, *args, **kwargs).items() if k != "random_states_0.pkl"}

    monkeypatch.setattr(ckpt, "describe_files", listing_without_rng)
    state.global_step = 4
    _step(accelerator, *objects)
    with caplog.at_level(logging.WARNING, logger="bookmatch.training.checkpoint"):
        ckpt.save_checkpoint(accelerator, tmp_path, state, save_total_limit=1)
    assert not (tmp_path / "checkpoint-4" / COMMIT_NAME).exists()
    assert any("not committed: no process listed random_states_0.pkl" in r.message for r in caplog.records)
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"  # kept: rotation waits for a verified one
