#!/usr/bin/env python
"""Bi-encoder training throughput and MFU: our training step vs the stock sentence-transformers path.

Both paths train a RANDOM-INIT RoBERTa of the chosen size (no download; random token ids, so no tokenizer is
needed for the model inputs) on the same batch: `--batch-pairs` pairs = 2 * batch-pairs sequences of
`--seq-len` tokens, bf16 autocast, TF32 matmuls, fused AdamW. Each path is driven by the same hand loop
(forward, backward, optimizer step, zero_grad) and timed with a device sync per step; the figure is the
median step time after `--warmup` steps.

  ours: the project's BiEncoder (shared encoder per side, mean pooling, projection head, pair classifier over
        [u, v, |u-v|, u*v, style features]) inside the trainer's ContrastiveModule: pair cross-entropy +
        0.2 * SupCon over the 2B sequences (book labels, several chunks per book) + 0.5 * distillation from
        (random) teacher logits; gradient clipping at 1.0. `--compile` compiles the encoder (torch.compile).
  st:   SentenceTransformer(models.Transformer(same weights) + models.Pooling(mean)) with
        losses.MultipleNegativesRankingLoss on (text1, text2) columns; gradient clipping at 1.0 (the
        SentenceTransformerTrainer default).

FLOPs per step (nanoGPT's estimate_mfu, for fwd + bwd): 6 * N * tokens + 12 * layers * seq^2 * hidden * seqs,
with N the NON-embedding parameter count (embedding lookups are not matmuls; the all-parameter count is
printed as well). MFU = FLOPs per step / step time / (--peak-tflops * 1e12); 989 = H100/H200 bf16 dense.

  python scripts/bench_train.py --device cuda --size base,large --seq-len 512 --batch-pairs 32 --json-out bench_train.json
  python scripts/bench_train.py --device cpu --size tiny --seq-len 64 --steps 3      # smoke test
  python scripts/bench_train.py --device cpu --size minilm --seq-len 128 --batch-pairs 16   # cpu-small's step
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Runnable from a bare checkout (e.g. on a GPU box) without `pip install -e .`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {
    # name: (hidden, layers, heads, intermediate, vocab)
    "tiny": (64, 2, 2, 128, 1000),
    "minilm": (384, 6, 12, 1536, 30522),  # all-MiniLM-L6-v2's shape: the cpu-small backbone
    "base": (768, 12, 12, 3072, 50265),
    "large": (1024, 24, 16, 4096, 50265),
}
TOKENIZER_TEXTS = ["a small text so that sentence-transformers finds a tokenizer beside the model"] * 4


@dataclass
class Result:
    size: str
    path: str
    device: str
    compiled: bool
    batch_pairs: int
    seqs_per_step: int
    seq_len: int
    params: int
    params_non_embedding: int
    median_step_s: float
    seqs_per_s: float
    tokens_per_s: float
    achieved_tflops: float
    mfu: float
    peak_memory_gb: float | None
    steps_timed: int
    attn_implementation: str


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="base,large", help="comma list of tiny, minilm, base, large")
    parser.add_argument("--paths", default="ours,st", help="comma list of ours, st")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-pairs", type=int, default=32, help="pairs per step (2x sequences)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder in our path")
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 (bf16 autocast is the default)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense TFLOP/s of the device")
    parser.add_argument("--projection-dim", type=int, default=256)
    parser.add_argument("--chunks-per-book", type=int, default=4, help="sequences sharing a SupCon label")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.sizes = [s.strip() for s in args.size.split(",") if s.strip()]
    args.path_names = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [s for s in args.sizes if s not in SIZES] + [p for p in args.path_names if p not in ("ours", "st")]
    if unknown:
        parser.error(f"unknown size/path {unknown}; sizes are {sorted(SIZES)}, paths are ours, st")
    return args


def build_random_roberta(size: str, seq_len: int, seed: int):
    import torch
    from transformers import RobertaConfig, RobertaModel

    hidden, layers, heads, intermediate, vocab = SIZES[size]
    config = RobertaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max(514, seq_len + 2),  # RoBERTa positions start after the padding index
        type_vocab_size=1,
    )
    torch.manual_seed(seed)
    return RobertaModel(config, add_pooling_layer=False)


def count_params(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for name, p in model.named_parameters() if "embeddings." in name and "LayerNorm" not in name)
    return total, total - embedding


def step_flops(params_non_embedding: int, layers: int, hidden: int, seqs: int, seq_len: int) -> float:
    tokens = seqs * seq_len
    return 6.0 * params_non_embedding * tokens + 12.0 * layers * seq_len**2 * hidden * seqs


def make_batch(args, vocab: int, device):
    """Random token ids for text1 and text2, pair labels (half positives) and book labels for SupCon."""
    import torch

    generator = torch.Generator().manual_seed(args.seed + 1)
    pairs = args.batch_pairs
    shape = (pairs, args.seq_len)
    text1 = torch.randint(3, vocab, shape, generator=generator)  # ids 0-2 are RoBERTa's <s>, <pad>, </s>
    text2 = torch.randint(3, vocab, shape, generator=generator)
    pair_labels = (torch.arange(pairs) % 2 == 0).long()
    books = torch.arange(2 * pairs) // max(1, args.chunks_per_book)
    books[pairs:] = torch.where(pair_labels.bool(), books[:pairs], books[pairs:] + 10_000)  # positives share a book
    mask = torch.ones(shape, dtype=torch.long)
    return {
        "text1": {"input_ids": text1.to(device), "attention_mask": mask.to(device)},
        "text2": {"input_ids": text2.to(device), "attention_mask": mask.to(device)},
        "pair_labels": pair_labels.to(device),
        "book_labels": books.to(device),
    }


def make_optimizer(params, device):
    import torch

    try:
        return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, fused=True)
    except (RuntimeError, TypeError):  # fused kernels absent for this device/dtype
        return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)


def ours_step_fn(encoder, args, batch, device):
    """Our training step: the project's BiEncoder inside the trainer's ContrastiveModule (pair CE + SupCon +
    distillation from teacher logits, weighted by ContrastiveTrainConfig's defaults)."""
    import torch

    from bookmatch.models.bi_encoder import BiEncoder, BiEncoderConfig
    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.tasks import ContrastiveModule

    train_config = ContrastiveTrainConfig(max_seq_length=args.seq_len, projection_dim=args.projection_dim)
    model_config = BiEncoderConfig(
        backbone=f"random-roberta-{args.current_size}",
        projection_dim=args.projection_dim,
        max_seq_length=args.seq_len,
        pooling=train_config.pooling,
        side_features=train_config.side_features,
    )
    bi_encoder = BiEncoder(model_config, encoder, tokenizer=None)  # token ids are given: no tokenizer needed
    model = ContrastiveModule(bi_encoder, train_config, rank=0, world_size=1, num_topics=0).to(device)
    if args.compile:
        encoder.compile()
    optimizer = make_optimizer(model.parameters(), device)
    pairs, n_side = args.batch_pairs, bi_encoder.side_features.dim
    generator = torch.Generator().manual_seed(args.seed + 2)
    inputs = {
        "input_ids_a": batch["text1"]["input_ids"],
        "attention_mask_a": batch["text1"]["attention_mask"],
        "input_ids_b": batch["text2"]["input_ids"],
        "attention_mask_b": batch["text2"]["attention_mask"],
        "style_a": torch.randn(pairs, n_side, generator=generator).to(device),
        "style_b": torch.randn(pairs, n_side, generator=generator).to(device),
        "label": batch["pair_labels"],
        "work_a": batch["book_labels"][:pairs],
        "work_b": batch["book_labels"][pairs:],
        "teacher_logits": torch.randn(pairs, 2, generator=generator).to(device),
    }

    def step():
        with autocast(device, not args.no_bf16):
            loss = model(inputs)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    return step, (model, optimizer), encoder.config._attn_implementation


def st_step_fn(model_dir: Path, args, batch, device):
    """Stock sentence-transformers: Transformer + mean Pooling, MultipleNegativesRankingLoss, same loop."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6 layout; the old top-level modules still work but warn
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss
        from sentence_transformers.models import Pooling, Transformer

    # Without the unused pooler, so both paths hold the same parameters.
    transformer = Transformer(str(model_dir), max_seq_length=args.seq_len, model_kwargs={"add_pooling_layer": False})
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling], device=str(device))
    loss = MultipleNegativesRankingLoss(model)
    optimizer = make_optimizer(model.parameters(), device)
    # Fresh dicts each step: the modules write their outputs into the features dict.
    columns = [batch["text1"], batch["text2"]]

    def step():
        with autocast(device, not args.no_bf16):
            value = loss([dict(c) for c in columns], labels=None)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the HF/ST trainers clip at 1.0 by default
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    return step, (model, optimizer, loss), transformer.auto_model.config._attn_implementation


def autocast(device, enabled: bool):
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def time_steps(step, args, device) -> list[float]:
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def save_for_sentence_transformers(encoder, out_dir: Path) -> None:
    """The random weights plus a tiny tokenizer: sentence-transformers loads a model folder by path."""
    from bookmatch.models.tiny import train_wordpiece_tokenizer

    encoder.save_pretrained(out_dir)
    train_wordpiece_tokenizer(TOKENIZER_TEXTS, vocab_size=100).save_pretrained(out_dir)


def bench_size(size: str, args, device, work_dir: Path) -> list[Result]:
    import torch

    encoder = build_random_roberta(size, args.seq_len, args.seed)
    params, params_non_embedding = count_params(encoder)
    config = encoder.config
    flops = step_flops(params_non_embedding, config.num_hidden_layers, config.hidden_size, 2 * args.batch_pairs, args.seq_len)
    batch = make_batch(args, config.vocab_size, device)
    model_dir = work_dir / f"roberta-{size}"
    if "st" in args.path_names:
        save_for_sentence_transformers(encoder, model_dir)

    args.current_size = size
    results = []
    for path in args.path_names:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        if path == "ours":
            step, keep, attention = ours_step_fn(build_random_roberta(size, args.seq_len, args.seed).to(device), args, batch, device)
        else:
            step, keep, attention = st_step_fn(model_dir, args, batch, device)
        times = time_steps(step, args, device)
        median = statistics.median(times)
        seqs = 2 * args.batch_pairs
        results.append(
            Result(
                size=size,
                path=path,
                device=str(device),
                compiled=bool(args.compile and path == "ours"),
                batch_pairs=args.batch_pairs,
                seqs_per_step=seqs,
                seq_len=args.seq_len,
                params=params,
                params_non_embedding=params_non_embedding,
                median_step_s=median,
                seqs_per_s=seqs / median,
                tokens_per_s=seqs * args.seq_len / median,
                achieved_tflops=flops / median / 1e12,
                mfu=flops / median / (args.peak_tflops * 1e12),
                peak_memory_gb=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                steps_timed=len(times),
                attn_implementation=str(attention),
            )
        )
        del step, keep
        gc.collect()
    del encoder
    gc.collect()
    return results


def format_table(results: list[Result]) -> str:
    header = f"{'size':<6} {'path':<5} {'params(M)':>9} {'step(ms)':>9} {'seq/s':>9} {'tok/s':>11} {'TFLOP/s':>8} {'MFU':>6} {'mem(GB)':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        memory = "-" if r.peak_memory_gb is None else f"{r.peak_memory_gb:.1f}"
        lines.append(
            f"{r.size:<6} {r.path:<5} {r.params / 1e6:>9.1f} {r.median_step_s * 1e3:>9.1f} {r.seqs_per_s:>9.1f} "
            f"{r.tokens_per_s:>11,.0f} {r.achieved_tflops:>8.2f} {r.mfu:>6.1%} {memory:>8}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("error: --device cuda but no CUDA device is visible; use --device cpu", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as work:
        for size in args.sizes:
            results += bench_size(size, args, device, Path(work))
    print(format_table(results))
    meta = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "bf16": not args.no_bf16,
        "peak_tflops": args.peak_tflops,
        "warmup": args.warmup,
        "flops_formula": "6*N_non_embedding*tokens + 12*layers*seq^2*hidden*seqs per step",
    }
    payload = {"meta": meta, "results": [asdict(r) for r in results]}
    print(json.dumps(payload, indent=1))
    if args.json_out:
        from bookmatch.storage import atomic_write_json

        atomic_write_json(args.json_out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
