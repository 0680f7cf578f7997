#!/usr/bin/env python
"""A bare contrastive training step with and without attention dropout, in fp32 and bf16 autocast, side by side.

    python scripts/bench_attention_dropout.py --data DATA --model MODEL [--batch-pairs 64 --seq-len 128 --steps 15]

The trainer's own module and batches (`TrainingRecipe` set-up), then forward, backward, clipping and AdamW,
without accelerate; the median step of each setting, settings alternating over `--repeat` rounds. On a CPU the
fused attention kernel takes no dropout, so any attention dropout sends the step down the materialised path.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder written by bookmatch prepare")
    parser.add_argument("--model", required=True, help="backbone: a name or a folder")
    parser.add_argument("--batch-pairs", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15, help="steps per setting (the first two are warm-up)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.tasks import ContrastiveTask
    from bookmatch.training.trainer import TrainingRecipe, _optimizer

    config = ContrastiveTrainConfig(
        data=args.data,
        model=args.model,
        out=tempfile.mkdtemp(prefix="bench_dropout_"),
        cpu=True,
        max_steps=args.steps,
        batch_size=args.batch_pairs,
        max_seq_length=args.seq_len,
        epochs=100,
        lr=1e-4,
        attention_dropout=None,  # the backbone's own: the modules are set per setting below
    )
    recipe = TrainingRecipe(ContrastiveTask(config))
    recipe._setup_accelerator()
    recipe._setup_data()
    recipe._setup_model()
    recipe._setup_batches()
    module = recipe.module
    rows = [b for epoch in range(config.epochs) for b in recipe.sampler.batches(epoch)][: args.steps]
    batches = [recipe.train_arrays.batch(r) for r in rows]
    attention = [m for name, m in module.named_modules() if name.endswith("attention.self")]

    def median_step(dropout: float, precision: str) -> float:
        for block in attention:
            block.dropout.p = dropout
        torch.manual_seed(0)
        optimizer = _optimizer(module, config)
        module.train()
        times = []
        for batch in batches:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = module(batch)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        return statistics.median(times[2:])

    print(f"{args.model}: {args.batch_pairs} pairs x {args.seq_len} tokens, {len(attention)} attention layers")
    for round_ in range(args.repeat):
        for precision in ("no", "bf16"):
            with_dropout, without = median_step(0.1, precision), median_step(0.0, precision)
            print(
                f"round {round_ + 1} {precision:>4}: attention dropout 0.1 {with_dropout * 1e3:8.1f} ms, "
                f"0 {without * 1e3:8.1f} ms, ratio {with_dropout / without:.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
