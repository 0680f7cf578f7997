#!/usr/bin/env python
"""Training step time of the bi-encoder on a tiny decoder (frozen base + LoRA) vs a tiny encoder of the same shape.

For each width it builds a random BERT and a random Llama (same hidden size, layers, heads and MLP width, the same
texts for their tokenizers), wraps each in the bi-encoder with its contrastive module (CE + SupCon), and times the
bare step (forward, backward, clip, AdamW; no accelerate, evaluation or logging) on the same real pairs, rounds
alternating between the two so machine load hits both alike. Prints one JSON line per model and a table.

  python scripts/bench_decoder.py --pairs ../shared/corpus/validation_pairs.jsonl --sizes 32,256 --steps 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def load_pairs(path: Path, count: int) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            rows.append(json.loads(line))
            if len(rows) >= count:
                break
    return rows


def build(kind: str, folder: Path, texts: list[str], hidden: int, layers: int, base_dtype: str):
    from bookmatch.models.bi_encoder import BiEncoder
    from bookmatch.models.tiny import build_tiny_decoder, build_tiny_encoder

    builder = build_tiny_decoder if kind == "decoder" else build_tiny_encoder
    heads = max(2, hidden // 64)
    path = builder(
        folder / kind, texts, hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=4 * hidden
    )
    extra = {"base_dtype": base_dtype} if kind == "decoder" else {}
    return BiEncoder.from_backbone(str(path), projection_dim=64, max_seq_length=128, **extra)


def module_and_batches(model, pairs: list[dict], batch_size: int, steps: int):
    import numpy as np
    import torch

    from bookmatch.training.features import bi_encoder_arrays
    from bookmatch.training.tasks import ContrastiveModule, LossWeights

    torch.manual_seed(0)
    model.fit_lexical([p["text1"] for p in pairs] + [p["text2"] for p in pairs])
    module = ContrastiveModule(model, LossWeights())
    arrays = bi_encoder_arrays([p["text1"] for p in pairs], [p["text2"] for p in pairs], model)
    books = {b: i for i, b in enumerate(sorted({p["book1"] for p in pairs} | {p["book2"] for p in pairs}))}
    arrays.add_column("label", np.asarray([p["label"] for p in pairs], dtype=np.int64))
    arrays.add_column("work_a", np.asarray([books[p["book1"]] for p in pairs], dtype=np.int64))
    arrays.add_column("work_b", np.asarray([books[p["book2"]] for p in pairs], dtype=np.int64))
    batches = [arrays.batch(list(range(i * batch_size, (i + 1) * batch_size))) for i in range(steps)]
    return module, batches


def time_steps(module, batches, optimizer) -> list[tuple[float, float]]:
    """(wall, process CPU) seconds per step: on a shared machine the CPU time is the steadier figure."""
    import torch

    module.train()
    times = []
    for batch in batches:
        start, cpu = time.perf_counter(), time.process_time()
        module(batch)["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return times


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, required=True, help="JSON lines with text1, text2, label, book1, book2")
    parser.add_argument("--sizes", default="32,256", help="comma list of hidden sizes")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round (after one warm-up step)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base-dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()

    pairs = load_pairs(args.pairs, args.batch_size * (args.steps + 1))
    texts = [p["text1"] for p in pairs] + [p["text2"] for p in pairs]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for hidden in (int(s) for s in args.sizes.split(",")):
            runs = {}
            for kind in ("encoder", "decoder"):
                model = build(kind, Path(tmp) / str(hidden), texts, hidden, args.layers, args.base_dtype)
                module, batches = module_and_batches(model, pairs, args.batch_size, args.steps + 1)
                optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
                time_steps(module, batches[:1], optimizer)  # warm-up
                trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
                runs[kind] = dict(
                    module=module, batches=batches[1:], optimizer=optimizer, times=[], trainable=trainable
                )
                runs[kind]["total"] = sum(p.numel() for p in module.parameters())
            for _ in range(args.rounds):
                for run in runs.values():
                    run["times"] += time_steps(run["module"], run["batches"], run["optimizer"])
            for kind, run in runs.items():
                row = {
                    "hidden": hidden,
                    "layers": args.layers,
                    "kind": kind,
                    "base_dtype": args.base_dtype if kind == "decoder" else "float32",
                    "ms_per_step_median": round(1000 * statistics.median(t[0] for t in run["times"]), 1),
                    "cpu_ms_per_step_median": round(1000 * statistics.median(t[1] for t in run["times"]), 1),
                    "trainable_params": run["trainable"],
                    "total_params": run["total"],
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("| hidden | kind | wall ms/step | CPU ms/step | trainable / total params |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['hidden']} | {r['kind']} | {r['ms_per_step_median']} | {r['cpu_ms_per_step_median']} | {r['trainable_params']:,} / {r['total_params']:,} |"
        )


if __name__ == "__main__":
    main()
