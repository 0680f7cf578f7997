#!/usr/bin/env python
"""The training loop's own overhead, before/after side by side: `bookmatch train contrastive` start-up and steps/s.

For each code tree (`--before` an older checkout, and this one) it runs the CLI in a fresh process on the same
data, model and teacher, and reads its summary: start-up = wall - training seconds (imports, data, model,
tokens/features, teacher logits, final evaluation and save); steps/s from the `train contrastive:` line. Each tree
runs twice: with the data's cache emptied, then a second run (another OUT) that finds what the first left there.
A bare loop (the same module and batches; forward, backward, clip, AdamW step; no accelerate, scheduler,
evaluation or logging) gives the overhead ratio: bare steps/s / trainer steps/s. Runs alternate between trees so machine load hits both alike.

  python scripts/bench_train_loop.py --data DATA --model TINY_ENCODER --teacher TEACHER/final --before /tmp/old
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_BARE = r"""
import json, sys, time, torch
from bookmatch.training.config import ContrastiveTrainConfig
from bookmatch.training.tasks import ContrastiveTask
from bookmatch.training.trainer import TrainingRecipe, _optimizer
config = ContrastiveTrainConfig(**json.loads(sys.argv[1]))
recipe = TrainingRecipe(ContrastiveTask(config))
recipe._setup_accelerator(); recipe._setup_data(); recipe._setup_model(); recipe._setup_batches()
module = recipe.module
optimizer = _optimizer(module, config)
rows = [b for epoch in range(config.epochs) for b in recipe.sampler.batches(epoch)][: config.max_steps]
batches = [recipe.train_arrays.batch(r) for r in rows]
module.train()
start = time.perf_counter()
for batch in batches:
    module(batch)["loss"].backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
print(json.dumps({"steps": len(batches), "seconds": time.perf_counter() - start}))
"""


def train_args(args, out: Path) -> list[str]:
    return [
        "train",
        "contrastive",
        "--data",
        str(args.data),
        "--model",
        str(args.model),
        "--out",
        str(out),
        "--cpu",
        "--max-steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_pairs),
        "--max-seq-length",
        str(args.seq_len),
        "--eval-steps",
        "100000",
        "--save-steps",
        "100000",
        "--epochs",
        "100",
        "--lr",
        "1e-4",
        *(["--teacher", str(args.teacher)] if args.teacher else []),
    ]


def imported_package(tree: Path, env: dict[str, str]) -> str:
    """The folder `python -m bookmatch` imports from when started in `tree` with `env`."""
    done = subprocess.run(
        [sys.executable, "-c", "import bookmatch; print(bookmatch.__file__)"],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return str(Path(done.stdout.strip()).parent)


def run_cli(tree: Path, args, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # started in the tree: `python -m` puts the working folder before PYTHONPATH, so a run started from another
    # checkout's root would import that checkout's package instead
    package = imported_package(tree, env)
    if Path(package).parent.resolve() != tree.resolve():
        raise SystemExit(f"error: a run of {tree} would import bookmatch from {package}")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bookmatch", *train_args(args, out)], env=env, cwd=tree, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"error: {tree}: {done.stderr[-2000:]}")
    summary = json.loads((out / "train_summary.json").read_text())
    steps = summary["global_step"]
    return {
        "wall_s": round(wall, 2),
        "train_s": summary["train_seconds"],
        "startup_s": round(wall - summary["train_seconds"], 2),
        "steps_per_s": round(steps / summary["train_seconds"], 3),
        "summary": summary["summary"],
        "package": package,
    }


def run_bare(args) -> dict:
    values = {
        "data": str(args.data),
        "model": str(args.model),
        "out": tempfile.mkdtemp(prefix="bare_"),
        "cpu": True,
        "max_steps": args.steps,
        "batch_size": args.batch_pairs,
        "max_seq_length": args.seq_len,
        "epochs": 100,
        "lr": 1e-4,
    }
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, "-c", _BARE, json.dumps(values)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: bare loop: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"steps_per_s": round(result["steps"] / result["seconds"], 3)}


def clear_feature_cache(data: Path) -> None:
    shutil.rmtree(data / "cache", ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, default=None)
    parser.add_argument("--before", type=Path, default=None, help="an older checkout (its root folder)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-pairs", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    for name in ("data", "model", "teacher", "before"):  # the runs start in their own trees
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_loop_") as work:
        work = Path(work)
        if args.before:
            clear_feature_cache(args.data)
            results["before"] = run_cli(args.before, args, work / "before")
            results["before_cached"] = run_cli(args.before, args, work / "before_cached")
        clear_feature_cache(args.data)
        results["after_cold"] = run_cli(REPO, args, work / "after_cold")
        results["after_cached"] = run_cli(REPO, args, work / "after_cached")
        results["bare_loop"] = run_bare(args)
    results["overhead_ratio"] = round(results["bare_loop"]["steps_per_s"] / results["after_cached"]["steps_per_s"], 3)
    with open("/proc/loadavg") as handle:
        results["loadavg"] = handle.read().split()[:3]
    print(json.dumps(results, indent=1))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
