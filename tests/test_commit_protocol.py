"""The commit protocol (bookmatch/artifacts.py) and the checkpoints built on it: a reader trusts only what a commit
manifest lists and verifies, a resume falls back past damaged checkpoints and ends where an uninterrupted run
ends (on a simulated bucket mount, 1 and 2 processes), and nothing in a checkpoint or model folder runs code."""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
import socket
from pathlib import Path

import pytest
import torch
from bucket_sim import Recorder, bucket_view, interesting_kill_points, materialize
from safetensors.torch import load_file
from test_resume import data_dir  # noqa: F401  (a fixture)

from bookmatch.artifacts import (
    COMMIT_NAME,
    describe_files,
    merge_file_tables,
    verify,
    write_commit,
)

# ---------------------------------------------------------------------------------------------------------------
# the manifest itself
# ---------------------------------------------------------------------------------------------------------------


def _artifact(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(os.urandom(5000))
    (folder / "sub" / "b.json").write_text('{"x": 1}\n')
    (folder / ".a.bin.123.tmp").write_bytes(b"left by an atomic write")
    write_commit(folder, meta={"kind": "test", "step": 3})
    return folder


def test_commit_lists_every_file_and_verifies(tmp_path):
    folder = _artifact(tmp_path / "art")
    verdict = verify(folder)
    assert verdict.ok and verdict.meta == {"kind": "test", "step": 3}
    assert sorted(verdict.files) == ["a.bin", "sub/b.json"]  # no temp file, no manifest
    body = json.loads((folder / COMMIT_NAME).read_text())
    assert body["files"]["a.bin"]["size"] == 5000


@pytest.mark.parametrize(
    "damage",
    ["truncate", "remove", "same_size_other_bytes", "manifest_cut", "manifest_edited", "no_manifest", "unsafe_path"],
)
def test_verify_names_what_is_wrong(tmp_path, damage):
    folder = _artifact(tmp_path / "art")
    manifest = folder / COMMIT_NAME
    if damage == "truncate":
        (folder / "a.bin").write_bytes((folder / "a.bin").read_bytes()[:100])
        expected = "a.bin has 100 bytes"
    elif damage == "remove":
        (folder / "sub" / "b.json").unlink()
        expected = "sub/b.json is missing"
    elif damage == "same_size_other_bytes":  # e.g. a stale upload of an earlier save under the same name
        (folder / "a.bin").write_bytes(os.urandom(5000))
        expected = "a.bin does not match its sha256"
    elif damage == "manifest_cut":
        manifest.write_bytes(manifest.read_bytes()[:-40])
        expected = "COMMIT.json is damaged"
    elif damage == "manifest_edited":
        manifest.write_text(manifest.read_text().replace('"size": 5000', '"size": 100'))
        expected = "does not match its digest"
    elif damage == "no_manifest":
        manifest.unlink()
        expected = "no COMMIT.json"
    else:
        write_commit(folder, files={"../outside": {"size": 1, "sha256": "0"}})
        expected = "unsafe path"
    verdict = verify(folder)
    assert not verdict and expected in verdict.reason, verdict.reason


def test_unlisted_files_are_ignored_and_sizes_only_check_is_cheap(tmp_path):
    folder = _artifact(tmp_path / "art")
    (folder / "planted.pkl").write_bytes(b"not listed")
    assert verify(folder).ok and "planted.pkl" not in verify(folder).files
    (folder / "a.bin").write_bytes(os.urandom(5000))
    assert verify(folder, checksums=False).ok and not verify(folder).ok


def test_merge_file_tables_flags_conflicts(tmp_path):
    folder = _artifact(tmp_path / "art")
    table = describe_files(folder)
    merged, conflicts = merge_file_tables([table, {"c.bin": {"size": 1, "sha256": "x"}}, {"a.bin": table["a.bin"]}])
    assert sorted(merged) == ["a.bin", "c.bin", "sub/b.json"] and conflicts == []
    _, conflicts = merge_file_tables([table, {"a.bin": {"size": 1, "sha256": "y"}}])
    assert conflicts == ["a.bin"]


# ---------------------------------------------------------------------------------------------------------------
# checkpoints with a small accelerate setup (no transformer: fast)
# ---------------------------------------------------------------------------------------------------------------


def _training_objects(seed: int = 0):
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = get_linear_schedule_with_warmup(optimizer, 2, 20)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    return accelerator, model, optimizer, scheduler


def _step(accelerator, model, optimizer, scheduler) -> None:
    loss = model(torch.randn(5, 6)).square().mean()
    accelerator.backward(loss)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def two_checkpoints(tmp_path):
    """checkpoint-2 and checkpoint-4 of a small model; (out, objects, weights at step 2, weights at step 4)."""
    from bookmatch.training.checkpoint import TrainerState, save_checkpoint

    objects = _training_objects()
    out = tmp_path / "run"
    state = TrainerState()
    weights = {}
    for step in (1, 2, 3, 4):
        _step(*objects)
        state.global_step = step
        if step % 2 == 0:
            save_checkpoint(objects[0], out, state, save_total_limit=3)
            weights[step] = _weights(objects[1])
    return out, objects, weights


def _assert_weights(model, expected) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_checkpoint_round_trip_restores_weights_scheduler_and_rng(two_checkpoints):
    from bookmatch.training.checkpoint import load_checkpoint, resumable_checkpoint

    out, (accelerator, model, optimizer, scheduler), weights = two_checkpoints
    path, skipped = resumable_checkpoint(out)
    assert path.name == "checkpoint-4" and skipped == []
    assert sorted(p.name for p in path.iterdir()) == [
        "COMMIT.json",
        "custom_state_0.json",
        "model.safetensors",
        "optimizer.bin",
        "random_states_0.pkl",
        "trainer_state.json",
    ]
    expected_draw = None
    # the RNG state saved with checkpoint-4 is the one right after step 4: reload it and draw twice
    state = load_checkpoint(accelerator, path)
    expected_draw = torch.rand(4)
    for _ in range(3):
        _step(accelerator, model, optimizer, scheduler)
    assert scheduler.last_epoch == 7
    state = load_checkpoint(accelerator, path)
    assert state.global_step == 4 and scheduler.last_epoch == 4
    _assert_weights(model, weights[4])
    assert torch.equal(torch.rand(4), expected_draw)


# the table: a cut model.safetensors / optimizer.bin / trainer_state.json crashed --resume, a cut
# random_states_0.pkl was silently ignored; each must now make the resume fall back to the older checkpoint
@pytest.mark.parametrize(
    "name",
    [
        "model.safetensors",
        "optimizer.bin",
        "trainer_state.json",
        "random_states_0.pkl",
        "custom_state_0.json",
        "COMMIT.json",
    ],
)
def test_damaged_newest_checkpoint_falls_back_to_the_previous(two_checkpoints, name, caplog):
    from bookmatch.training.checkpoint import load_checkpoint, resume_checkpoint

    out, (accelerator, model, *_), weights = two_checkpoints
    file = out / "checkpoint-4" / name
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="bookmatch.training.checkpoint"):
        path = resume_checkpoint(accelerator, out)
    assert path.name == "checkpoint-2"
    assert any(
        "not resuming from" in r.message and "checkpoint-4" in r.message and name in r.message for r in caplog.records
    )
    assert load_checkpoint(accelerator, path).global_step == 2
    _assert_weights(model, weights[2])


def test_missing_or_unreadable_rng_state_is_an_error_not_silence(two_checkpoints):
    from bookmatch.training.checkpoint import CheckpointError, load_checkpoint

    out, (accelerator, *_), _ = two_checkpoints
    path = out / "checkpoint-4"
    # whole and committed, but saved by another process count (no file for this rank)
    (path / "random_states_0.pkl").rename(path / "random_states_1.pkl")
    write_commit(path)
    with pytest.raises(CheckpointError, match="no RNG state for rank 0"):
        load_checkpoint(accelerator, path)
    torch.save({"step": 4}, path / "random_states_0.pkl")  # a committed file that is not an RNG state
    write_commit(path)
    with pytest.raises(CheckpointError, match="cannot restore the RNG state"):
        load_checkpoint(accelerator, path)


def test_rotation_keeps_the_newest_verified_until_a_newer_one_verifies(tmp_path, monkeypatch):
    from bookmatch.training import checkpoint as ckpt

    accelerator, *objects = _training_objects()
    out = tmp_path / "run"
    state = ckpt.TrainerState()
    for step in (2, 4):
        _step(accelerator, *objects)
        state.global_step = step
        ckpt.save_checkpoint(accelerator, out, state, save_total_limit=1)
    assert [p.name for _, p in ckpt.checkpoint_steps(out)] == ["checkpoint-4"]
    # a save whose commit does not verify (a file changed while it was being listed) must leave checkpoint-4 in place
    real_describe = ckpt.describe_files

    def describe_then_change(path, *args, **kwargs):
        table = real_describe(path, *args, **kwargs)
        if path.name == "checkpoint-6":
            (path / "optimizer.bin").write_bytes(b"changed")
        return table

    monkeypatch.setattr(ckpt, "describe_files", describe_then_change)
    state.global_step = 6
    ckpt.save_checkpoint(accelerator, out, state, save_total_limit=1)
    assert [p.name for _, p in ckpt.checkpoint_steps(out)] == ["checkpoint-4", "checkpoint-6"]
    monkeypatch.setattr(ckpt, "describe_files", real_describe)
    assert ckpt.latest_checkpoint(out).name == "checkpoint-4"
    state.global_step = 8
    ckpt.save_checkpoint(accelerator, out, state, save_total_limit=1)
    assert [p.name for _, p in ckpt.checkpoint_steps(out)] == ["checkpoint-8"]  # and the uncommitted 6 is swept


# ---------------------------------------------------------------------------------------------------------------
# nothing in an artifact folder runs code
# ---------------------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates `marker` (what a real attack would replace with any code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": _Payload(str(marker))}, path)


def test_payload_really_runs_when_unpickled(tmp_path):
    """Guards the tests below: the planted file does run code under a plain torch.load."""
    _plant(tmp_path / "x.pkl", tmp_path / "ran")
    torch.load(tmp_path / "x.pkl", weights_only=False)
    assert (tmp_path / "ran").exists()


CHECKPOINT_PLANTS = [
    "custom_checkpoint_0.pkl",
    "scheduler.bin",
    "scaler.pt",
    "sampler.bin",
    "pytorch_model.bin",
    "dl_state_dict.bin",
]


def test_no_code_runs_from_any_checkpoint_file(two_checkpoints, tmp_path):
    """An attacker with write access to the artifacts bucket replaces each file in turn (and re-commits, as
    they could), or adds the files accelerate would unpickle: the resume refuses or ignores them, never runs them."""
    from bookmatch.errors import BookmatchError
    from bookmatch.training.checkpoint import load_checkpoint

    out, (accelerator, *_), _ = two_checkpoints
    source = out / "checkpoint-4"
    names = sorted(p.name for p in source.iterdir()) + CHECKPOINT_PLANTS
    marker = tmp_path / "code_ran"
    outcomes = {}
    for name in names:
        path = tmp_path / "attacked" / name.replace(".", "_")
        shutil.copytree(source, path)
        _plant(path / name, marker)
        if name != COMMIT_NAME:
            write_commit(path)
        try:
            load_checkpoint(accelerator, path)
            outcomes[name] = "ignored"
        except BookmatchError:
            outcomes[name] = "refused"
        assert not marker.exists(), f"code ran from a planted {name}"
    # files accelerate would have unpickled are ignored (custom_checkpoint_*.pkl: refused by its own count check)
    assert all(outcomes[n] == "ignored" for n in CHECKPOINT_PLANTS if n != "custom_checkpoint_0.pkl"), outcomes
    assert outcomes["optimizer.bin"] == outcomes["random_states_0.pkl"] == outcomes["model.safetensors"] == "refused"


def test_no_code_runs_from_any_model_folder_file(models, tmp_path):
    from bookmatch.errors import BookmatchError
    from bookmatch.inference.loading import load_bi_encoder, load_cross_encoder

    marker = tmp_path / "code_ran"
    tried = 0
    for kind, load in (("bi", load_bi_encoder), ("cross", load_cross_encoder)):
        source = models[kind]
        names = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
        for name in [*names, "pytorch_model.bin", "training_args.bin", "optimizer.pt"]:
            path = tmp_path / kind / name.replace(".", "_").replace("/", "_")
            shutil.copytree(source, path)
            _plant(path / name, marker)
            try:
                load(path, "cpu")
            except BookmatchError:
                pass
            assert not marker.exists(), f"code ran from a planted {kind}/{name}"
            tried += 1
        # the .bin fallback: no safetensors, a planted pytorch_model.bin is refused, not run
        path = tmp_path / kind / "bin_only"
        shutil.copytree(source, path)
        (path / "model.safetensors").unlink()
        _plant(path / "pytorch_model.bin", marker)
        with pytest.raises(BookmatchError):
            load(path, "cpu")
        assert not marker.exists(), f"code ran from {kind}/pytorch_model.bin"
    assert tried >= 10


# ---------------------------------------------------------------------------------------------------------------
# the bucket-mount simulator: resume ends with the uninterrupted weights
# ---------------------------------------------------------------------------------------------------------------


def _sim_config(data: Path, model: Path, out: Path, resume: bool = False, batch_size: int = 8):
    from bookmatch.training.config import ContrastiveTrainConfig

    return ContrastiveTrainConfig(
        data=str(data),
        out=str(out),
        model=str(model),
        cpu=True,
        max_seq_length=32,
        lr=1e-3,
        batch_size=batch_size,
        max_steps=6,
        eval_steps=2,
        save_steps=2,
        save_total_limit=2,
        patience=0,
        seed=3,
        projection_dim=8,
        epochs=1,
        resume=resume,
    )


@pytest.fixture(scope="module")
def straight_run(data_dir, tiny_encoder_dir, tmp_path_factory):  # noqa: F811
    from bookmatch.training.trainer import train_contrastive

    out = tmp_path_factory.mktemp("bucket") / "straight"
    recorder = Recorder(out)
    train_contrastive(_sim_config(data_dir, tiny_encoder_dir, out), on_step=recorder.on_step)
    recorder.finish()
    return out, recorder


def _assert_same_run(straight: Path, resumed: Path) -> None:
    a = json.loads((straight / "train_summary.json").read_text())
    b = json.loads((resumed / "train_summary.json").read_text())
    assert a["global_step"] == b["global_step"] and a["best_step"] == b["best_step"]
    assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]]
    for ha, hb in zip(a["history"], b["history"]):
        assert hb["val_loss"] == pytest.approx(ha["val_loss"], rel=1e-5, abs=1e-6), ha["step"]
    wa, wb = (
        load_file(str(straight / "final" / "model.safetensors")),
        load_file(str(resumed / "final" / "model.safetensors")),
    )
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=1e-5, atol=1e-6), key
    assert verify(resumed / "final").ok


def _chosen_checkpoint_is_whole(recorder: Recorder, folder: Path) -> str:
    """The checkpoint a resume would take holds, for every listed file, exactly the bytes its save wrote."""
    from bookmatch.training.checkpoint import latest_checkpoint

    chosen = latest_checkpoint(folder)
    if chosen is None:
        return "scratch"
    step = int(chosen.name.split("-")[1])
    written = recorder.snapshots[recorder.steps.index(step)]
    for name in verify(chosen).files:
        assert (chosen / name).read_bytes() == written[f"{chosen.name}/{name}"], (chosen, name)
    return chosen.name


def _simulated_trials(straight_run, data, model, tmp_path, seeds, run) -> dict[str, int]:
    straight, recorder = straight_run
    points = interesting_kill_points(recorder)
    assert len(points) >= 3  # checkpoints at 2 and 4, final/ at the evaluations, the summary at the end
    starts: dict[str, int] = {}
    for seed in seeds:
        rng = random.Random(seed)
        folder = materialize(bucket_view(recorder.snapshots, rng.choice(points), rng), tmp_path / f"trial-{seed}")
        start = _chosen_checkpoint_is_whole(recorder, folder)
        starts[start] = starts.get(start, 0) + 1
        run(folder)
        _assert_same_run(straight, folder)
        shutil.rmtree(folder)
    return starts


def _resume_in_process(data, model):
    from bookmatch.training.trainer import train_contrastive

    return lambda folder: train_contrastive(_sim_config(data, model, folder, resume=True))


def test_bucket_mount_kills_resume_to_the_uninterrupted_weights(straight_run, data_dir, tiny_encoder_dir, tmp_path):  # noqa: F811
    starts = _simulated_trials(
        straight_run, data_dir, tiny_encoder_dir, tmp_path, [11, 12, 13], _resume_in_process(data_dir, tiny_encoder_dir)
    )
    assert sum(starts.values()) == 3


@pytest.mark.slow  # 24 resumed training runs: minutes on 2 cores
def test_bucket_mount_kills_resume_to_the_uninterrupted_weights_many_trials(
    straight_run,
    data_dir,
    tiny_encoder_dir,
    tmp_path,  # noqa: F811
):
    starts = _simulated_trials(
        straight_run,
        data_dir,
        tiny_encoder_dir,
        tmp_path,
        range(100, 124),
        _resume_in_process(data_dir, tiny_encoder_dir),
    )
    print("resumed from:", starts)
    assert sum(starts.values()) == 24
    assert len(starts) >= 2  # the trials reached more than one kind of start (a checkpoint, an older one, scratch)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, config_args: tuple, record_to: str | None) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    from bookmatch.training.trainer import train_contrastive

    config = _sim_config(*config_args)
    recorder = Recorder(Path(config.out)) if rank == 0 and record_to else None
    train_contrastive(config, on_step=recorder.on_step if recorder else None)
    if recorder is not None:
        recorder.finish()
        with open(record_to, "wb") as handle:
            pickle.dump((recorder.snapshots, recorder.steps), handle)


def _ddp_run(data, model, out: Path, resume: bool, record_to: Path | None = None) -> None:
    import torch.multiprocessing as mp

    mp.spawn(
        _ddp_worker,
        args=(2, _free_port(), (data, model, out, resume, 4), str(record_to) if record_to else None),
        nprocs=2,
        join=True,
    )


@pytest.mark.slow  # two processes per run, 7 runs: minutes on 2 cores
def test_bucket_mount_kills_resume_to_the_uninterrupted_weights_ddp(data_dir, tiny_encoder_dir, tmp_path):  # noqa: F811
    straight = tmp_path / "straight"
    _ddp_run(data_dir, tiny_encoder_dir, straight, resume=False, record_to=tmp_path / "record.pkl")
    recorder = Recorder(tmp_path / "unused")
    with open(tmp_path / "record.pkl", "rb") as handle:
        recorder.snapshots, recorder.steps = pickle.load(handle)
    assert sorted(n for n in recorder.snapshots[recorder.steps.index(2)] if "random_states" in n) == [
        "checkpoint-2/random_states_0.pkl",
        "checkpoint-2/random_states_1.pkl",
    ]  # both ranks' files are committed
    starts = _simulated_trials(
        (straight, recorder),
        data_dir,
        tiny_encoder_dir,
        tmp_path,
        range(200, 206),
        lambda folder: _ddp_run(data_dir, tiny_encoder_dir, folder, resume=True),
    )
    print("resumed from:", starts)
    assert sum(starts.values()) == 6


def test_a_committed_model_folder_that_does_not_verify_is_refused(models, tmp_path):
    from bookmatch.errors import ModelLoadError
    from bookmatch.inference.loading import load_bi_encoder

    folder = tmp_path / "final"
    shutil.copytree(models["bi"], folder)
    write_commit(folder, meta={"kind": "final"})
    assert load_bi_encoder(folder, "cpu") is not None
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ModelLoadError, match="model.safetensors has"):
        load_bi_encoder(folder, "cpu")
