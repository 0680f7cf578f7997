"""DeepSpeed ZeRO-2 and ZeRO-3 through accelerate with the shipped configs, on 2 CPU processes (gloo), train as DDP does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_resume import _args, _entry, data_dir  # noqa: F401  (data_dir is a fixture)

# Not a dev dependency: DeepSpeed builds a C++ op at first use on CPU, and CI machines need not have a compiler.
pytest.importorskip(
    "deepspeed", reason="deepspeed is not installed (pip install deepspeed; it comes with the gpu extra)"
)

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu"
    )
    return env


def _zero_on_two_cpu_processes(tmp_path: Path, stage: int, **deepspeed_config) -> Path:
    """The shipped ZeRO accelerate config with only the machine shape changed (and `deepspeed_config` entries,
    where given): what a GPU node would launch."""
    config = yaml.safe_load(
        (REPO / "configs" / "accelerate" / f"deepspeed_zero{stage}.yaml").read_text(encoding="utf-8")
    )
    config["num_processes"] = 2
    config["deepspeed_config"]["deepspeed_config_file"] = str(REPO / "configs" / "deepspeed" / f"zero{stage}.json")
    config["deepspeed_config"].update(deepspeed_config)
    path = tmp_path / f"zero{stage}_cpu.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _launch(
    config: Path,
    data: Path,
    model: Path,
    out: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    kill_at: int | None = None,
) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file CONFIG -m bookmatch train contrastive ...` (the resume tests' arguments);
    with `kill_at`, through the launcher that SIGKILLs after that step."""
    args = [a for a in _args("contrastive", data, model, out) if a != "--cpu"]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        *_entry(kill_at),
        *args,
        *extra,
    ]
    return subprocess.run(command, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_on_two_cpu_processes_matches_ddp(stage, data_dir, tiny_encoder_dir, models, tmp_path):  # noqa: F811
    """Distilling from a teacher too: under ZeRO-3 the teacher must load whole (it is never wrapped by an engine)."""
    teacher = ["--teacher", str(models["cross"])]
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "bookmatch",
            *_args("contrastive", data_dir, tiny_encoder_dir, tmp_path / "ddp"),
            *teacher,
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    zero = _launch(_zero_on_two_cpu_processes(tmp_path, stage), data_dir, tiny_encoder_dir, tmp_path / "zero", *teacher)
    assert zero.returncode == 0, zero.stderr[-3000:]

    # DeepSpeed really ran, on both ranks: a ZeRO checkpoint holds one optimizer shard per rank
    shards = sorted(p.name for p in (tmp_path / "zero" / "checkpoint-8").rglob("zero_pp_rank_*_optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]

    a = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    b = json.loads((tmp_path / "zero" / "train_summary.json").read_text())
    assert a["global_step"] == b["global_step"] == 12
    for ha, hb in zip(a["history"], b["history"]):
        for key in ("val_loss", "val_auc", "train_loss", "train_contrastive_global", "train_distill_loss"):
            assert hb[key] == pytest.approx(ha[key], rel=1e-3, abs=1e-4), (ha["step"], key)

    wa = load_file(str(tmp_path / "ddp" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "zero" / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=1e-3, atol=1e-4), key
    # the runs moved (every evaluation saw other weights), so agreeing at each one means something
    assert len({h["val_loss"] for h in a["history"]}) == len({h["train_loss"] for h in a["history"]}) == 3


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_resume_after_kill_matches_uninterrupted(stage, data_dir, tiny_encoder_dir, tmp_path):  # noqa: F811
    """The spot-GPU path (sky/train_contrastive.yaml): ZeRO killed with SIGKILL at step 6, then --resume.

    The evaluations after the kill (steps 8 and 12) are the proof: they see the resumed weights, optimizer shards
    and data position; final/ is the best evaluation's weights, which may predate the kill.
    """
    config = _zero_on_two_cpu_processes(tmp_path, stage)

    def launch(out: Path, *extra: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
        return _launch(config, data_dir, tiny_encoder_dir, out, *extra, kill_at=kill_at)

    straight = launch(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert launch(tmp_path / "interrupted", kill_at=6).returncode != 0
    assert not (tmp_path / "interrupted" / "train_summary.json").exists()
    resumed = launch(tmp_path / "interrupted", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    a = json.loads((tmp_path / "straight" / "train_summary.json").read_text())
    b = json.loads((tmp_path / "interrupted" / "train_summary.json").read_text())
    assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]] == [4, 8, 12]
    for ha, hb in zip(a["history"], b["history"]):
        for key in ("val_loss", "val_auc", "train_loss"):
            assert hb[key] == pytest.approx(ha[key], rel=1e-5, abs=1e-6), (ha["step"], key)
    wa = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "interrupted" / "final" / "model.safetensors"))
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=1e-5, atol=1e-6), key


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_bf16_final_weights_are_the_fp32_masters(stage, data_dir, tiny_encoder_dir, tmp_path):  # noqa: F811
    """Under DeepSpeed bf16 the module computes in bf16; final/ must hold the optimizer's fp32 master weights."""
    run = _launch(
        _zero_on_two_cpu_processes(tmp_path, stage),
        data_dir,
        tiny_encoder_dir,
        tmp_path / "zero",
        "--max-steps",
        "4",
        "--bf16",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    weights = load_file(str(tmp_path / "zero" / "final" / "model.safetensors"))
    assert {str(w.dtype) for w in weights.values()} == {"torch.float32"}
    # bf16-rounded copies would survive a round trip through bf16 unchanged; the masters do not
    beyond_bf16 = [name for name, w in weights.items() if not torch.equal(w, w.bfloat16().float())]
    assert len(beyond_bf16) > 0.8 * len(weights)


def test_zero3_init_flag_true_is_one_clear_line(data_dir, tiny_encoder_dir, tmp_path):  # noqa: F811
    run = _launch(
        _zero_on_two_cpu_processes(tmp_path, 3, zero3_init_flag=True), data_dir, tiny_encoder_dir, tmp_path / "zero"
    )
    assert run.returncode != 0
    assert "error: zero3_init_flag: true is not supported" in run.stderr
    # the launcher reports its failed children with a traceback of its own; the ranks print none
    assert "/bookmatch/" not in run.stderr and "[rank0]: Traceback" not in run.stderr
