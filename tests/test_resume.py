"""A run killed with SIGKILL and resumed with --resume ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import _synthetic_books, make_pair_dataset

from bookmatch.training.checkpoint import TrainerState, latest_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_pair_dataset(
        tmp_path_factory.mktemp("resume") / "data", _synthetic_books(9, 30, seed=2), n_train=160, n_val=32
    )


def _args(task: str, data: Path, model: Path, out: Path) -> list[str]:
    common = [
        "--data",
        str(data),
        "--model",
        str(model),
        "--out",
        str(out),
        "--cpu",
        "--max-seq-length",
        "40",
        "--lr",
        "1e-3",
        "--eval-steps",
        "4",
        "--save-steps",
        "4",
        "--save-total-limit",
        "2",
        "--patience",
        "0",
        "--seed",
        "7",
    ]
    if task == "contrastive":
        return [
            "train",
            "contrastive",
            *common,
            "--batch-size",
            "8",
            "--max-steps",
            "12",
            "--projection-dim",
            "8",
            "--epochs",
            "2",
        ]
    # the cross-encoder run also checks gradient accumulation: 2 micro-batches per step, 12 steps over 2 epochs
    return ["train", "cross", *common, "--batch-size", "6", "--grad-accum", "2", "--max-steps", "12", "--epochs", "2"]


KILL_LAUNCHER = str(REPO / "tests" / "launch_kill_at_step.py")


def _entry(kill_at: int | None) -> list[str]:
    """How to start the CLI: plainly, or through the launcher that SIGKILLs after step `kill_at`."""
    return ["-m", "bookmatch"] if kill_at is None else [KILL_LAUNCHER, str(kill_at)]


def _run_cli(args: list[str], kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, *_entry(kill_at), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
@pytest.mark.parametrize("task", ["contrastive", "cross"])
def test_resume_after_kill_matches_uninterrupted(task, data_dir, tiny_encoder_dir, tmp_path):
    straight = _run_cli(_args(task, data_dir, tiny_encoder_dir, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    killed = _run_cli(_args(task, data_dir, tiny_encoder_dir, interrupted), kill_at=6)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (interrupted / "train_summary.json").exists()
    assert latest_checkpoint(interrupted).name == "checkpoint-4"  # the kill came after step 6, before a save at 8

    resumed = _run_cli(_args(task, data_dir, tiny_encoder_dir, interrupted) + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    a = json.loads((tmp_path / "straight" / "train_summary.json").read_text())
    b = json.loads((interrupted / "train_summary.json").read_text())
    assert a["global_step"] == b["global_step"] == 12
    assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]] == [4, 8, 12]
    for ha, hb in zip(a["history"], b["history"]):
        for key in ("val_loss", "val_auc", "train_loss"):
            assert hb[key] == pytest.approx(ha[key], rel=1e-5, abs=1e-6), (ha["step"], key)
    assert a["best_step"] == b["best_step"]

    # the last checkpoint holds the weights after step 8 (both runs saved it after the resume point)
    for name in ("final", "checkpoint-8"):
        wa = load_file(str(tmp_path / "straight" / name / "model.safetensors"))
        wb = load_file(str(interrupted / name / "model.safetensors"))
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.allclose(wa[key], wb[key], rtol=1e-5, atol=1e-6), (name, key)
    # training moved the weights between the two kept checkpoints (so equal weights above mean something)
    early = load_file(str(interrupted / "checkpoint-4" / "model.safetensors"))
    later = load_file(str(interrupted / "checkpoint-8" / "model.safetensors"))
    assert any(not torch.allclose(early[k], later[k]) for k in later)


@pytest.mark.slow
def test_ddp_resume_after_kill_matches_uninterrupted(data_dir, tiny_encoder_dir, tmp_path):
    """Two CPU processes (DDP over gloo, SupCon gathered across ranks): a SIGKILL at step 6 and --resume
    still end bit-for-bit where the uninterrupted run ends."""

    def launch(out: Path, *extra: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
        args = _args("contrastive", data_dir, tiny_encoder_dir, out)
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            *_entry(kill_at),
            *args,
            "--batch-size",
            "4",
            *extra,
        ]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    straight = launch(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert launch(tmp_path / "interrupted", kill_at=6).returncode != 0
    assert latest_checkpoint(tmp_path / "interrupted").name == "checkpoint-4"
    assert sorted(p.name for p in (tmp_path / "interrupted" / "checkpoint-4").glob("random_states_*.pkl")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    resumed = launch(tmp_path / "interrupted", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("final", "checkpoint-8"):
        wa = load_file(str(tmp_path / "straight" / name / "model.safetensors"))
        wb = load_file(str(tmp_path / "interrupted" / name / "model.safetensors"))
        for key in wa:
            assert torch.allclose(wa[key], wb[key], rtol=1e-5, atol=1e-6), (name, key)


def test_ddp_without_the_cpu_flag_on_a_machine_without_gpu_runs_two_ranks(data_dir, tiny_encoder_dir, tmp_path):
    """torchrun without --cpu where there is no GPU: accelerate would pick no process-group backend and run each
    process as its own single-process job (both rank 0, each on the whole batch). The trainer forces the CPU."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the launch would use it")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    args = [a for a in _args("contrastive", data_dir, tiny_encoder_dir, tmp_path / "out") if a != "--cpu"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "bookmatch", *args]
    command += ["--max-steps", "3", "--save-steps", "2", "--eval-steps", "2"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # one RNG state per rank: two ranks really trained together
    states = sorted(p.name for p in (tmp_path / "out" / "checkpoint-2").glob("random_states_*.pkl"))
    assert states == ["random_states_0.pkl", "random_states_1.pkl"]


class _Stop(Exception):
    pass


def _stop_at(step: int):
    def on_step(global_step: int) -> None:
        if global_step == step:
            raise _Stop

    return on_step


def test_resume_in_process_matches_uninterrupted(data_dir, tiny_encoder_dir, tmp_path):
    """The fast variant: the run is stopped by an exception instead of SIGKILL, then resumed in-process."""
    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.trainer import train_contrastive

    def config(out: Path, resume: bool = False) -> ContrastiveTrainConfig:
        return ContrastiveTrainConfig(
            data=str(data_dir),
            out=str(out),
            model=str(tiny_encoder_dir),
            cpu=True,
            max_seq_length=32,
            lr=1e-3,
            batch_size=8,
            max_steps=6,
            eval_steps=3,
            save_steps=2,
            patience=0,
            seed=3,
            projection_dim=8,
            epochs=1,
            resume=resume,
        )

    train_contrastive(config(tmp_path / "straight"))
    with pytest.raises(_Stop):
        train_contrastive(config(tmp_path / "stopped"), on_step=_stop_at(3))
    assert latest_checkpoint(tmp_path / "stopped").name == "checkpoint-2"
    train_contrastive(config(tmp_path / "stopped", resume=True))
    a = json.loads((tmp_path / "straight" / "train_summary.json").read_text())
    b = json.loads((tmp_path / "stopped" / "train_summary.json").read_text())
    assert [h["val_loss"] for h in b["history"]] == pytest.approx([h["val_loss"] for h in a["history"]], rel=1e-5)
    for name in ("checkpoint-4", "final"):  # checkpoint-4 was written after the resume point in both runs
        wa = load_file(str(tmp_path / "straight" / name / "model.safetensors"))
        wb = load_file(str(tmp_path / "stopped" / name / "model.safetensors"))
        for key in wa:
            assert torch.allclose(wa[key], wb[key], rtol=1e-5, atol=1e-6), (name, key)


def test_latest_checkpoint_ignores_partial_saves(tmp_path):
    from bookmatch.artifacts import write_commit

    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text(json.dumps(TrainerState(global_step=4).to_json()))
    write_commit(tmp_path / "checkpoint-4")
    (tmp_path / "checkpoint-8").mkdir()  # a folder without its commit is not a checkpoint, even with a state file
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text(json.dumps(TrainerState(global_step=8).to_json()))
    (tmp_path / ".checkpoint-12.tmp-abc").mkdir()  # a save killed half-way (older versions)
    assert latest_checkpoint(tmp_path).name == "checkpoint-4"
    state = TrainerState.from_json(json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text()))
    assert state.global_step == 4 and state.best_metric == float("-inf")
