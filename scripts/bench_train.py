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

FLOPs per step (nanoGPT's estimate_mfu, for fwd + bwd): 6 * N * len + 12 * layers * len^2 * hidden per sequence,
summed over the step's sequences at their unpadded lengths, with N the NON-embedding parameter count (embedding
lookups are not matmuls; the all-parameter count is printed as well). MFU = FLOPs per step / step time / (--peak-tflops * 1e12); 989 = H100/H200 bf16 dense.

  python scripts/bench_train.py --device cuda --size base,large --seq-len 512 --batch-pairs 32 --json-out bench_train.json
  python scripts/bench_train.py --device cpu --size tiny --seq-len 64 --steps 3      # smoke test
  python scripts/bench_train.py --device cpu --size minilm --seq-len 128 --batch-pairs 16   # cpu-small's step

`--lengths-from DATA` replaces the fixed-length random batch by batches of real passages: each side's token
count (capped at --seq-len) comes from the train split of a dataset made by `bookmatch prepare`, counted with
`--tokenizer`; the ids stay random. Each path then batches them as it would in training: ours with the trainer's
NoDuplicatesBatchSampler, length-grouped, both sides padded to the batch's longest text (to a multiple of 8 on
CUDA, as the trainer's collator); st with no-duplicates batches in random order (sentence-transformers has no
length grouping), each column padded to its own longest, as its tokenizer does. Figures are then totals over the
timed steps (pairs/s, real tokens/s excluding padding), and FLOPs and MFU count real tokens only: padding is
work the device does for nothing.

  python scripts/bench_train.py --device cpu --size minilm --seq-len 512 --batch-pairs 16 --lengths-from DATA
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
    pairs_per_s: float
    real_tokens_per_s: float  # tokens that are not padding
    pad_fraction: float  # share of the computed token positions that were padding


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
    parser.add_argument("--lengths-from", type=Path, default=None, help="a prepared dataset: real passage lengths")
    parser.add_argument(
        "--tokenizer", default="sentence-transformers/all-MiniLM-L6-v2", help="counts --lengths-from tokens"
    )
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
    embedding = sum(
        p.numel() for name, p in model.named_parameters() if "embeddings." in name and "LayerNorm" not in name
    )
    return total, total - embedding


def sequence_flops(params_non_embedding: int, layers: int, hidden: int, lengths) -> float:
    """fwd + bwd FLOPs of sequences of these (unpadded) lengths."""
    return sum(6.0 * params_non_embedding * n + 12.0 * layers * n**2 * hidden for n in lengths)


def make_batch(args, vocab: int, device):
    """Random token ids for text1 and text2, pair labels (half positives) and book labels for SupCon."""
    import torch

    pairs = args.batch_pairs
    pair_labels = (torch.arange(pairs) % 2 == 0).long()
    books = torch.arange(2 * pairs) // max(1, args.chunks_per_book)
    books[pairs:] = torch.where(pair_labels.bool(), books[:pairs], books[pairs:] + 10_000)  # positives share a book
    full = [args.seq_len] * pairs
    return padded_batch(full, full, args.seq_len, args.seq_len, pair_labels, books, vocab, device, args.seed + 1)


def padded_batch(
    lengths_a, lengths_b, width_a: int, width_b: int, pair_labels, book_labels, vocab: int, device, seed: int
):
    """Random ids (never RoBERTa's <s>, <pad>, </s>: 0-2) for texts of the given lengths, padded with id 1 to
    width_a / width_b, with their attention masks."""
    import torch

    generator = torch.Generator().manual_seed(seed)

    def side(lengths, width):
        ids = torch.randint(3, vocab, (len(lengths), width), generator=generator)
        mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
        ids = ids.masked_fill(mask == 0, 1)
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}

    return {
        "text1": side(lengths_a, width_a),
        "text2": side(lengths_b, width_b),
        "pair_labels": pair_labels.to(device),
        "book_labels": book_labels.to(device),
    }


def real_length_batches(args, vocab: int, device) -> dict[str, list[dict]]:
    """Per path, warmup + steps batches of real passage lengths, batched and padded as that path trains."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from bookmatch.models.resolve import resolve_model_path
    from bookmatch.training.data import label_index
    from bookmatch.training.samplers import NoDuplicatesBatchSampler, text_key_ids

    split = load_from_disk(str(args.lengths_from))["train"]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.tokenizer))
    texts_a, texts_b = list(split["text1"]), list(split["text2"])

    def lengths(texts):
        return [min(len(ids), args.seq_len) for ids in tokenizer(texts, verbose=False)["input_ids"]]

    len_a, len_b = lengths(texts_a), lengths(texts_b)
    labels = torch.tensor(split["label"])
    books1, books2 = list(split["book1"]), list(split["book2"])
    book_index = label_index(books1 + books2)
    books = torch.tensor([[book_index[a], book_index[b]] for a, b in zip(books1, books2)])
    keys = text_key_ids(texts_a, texts_b)
    wanted = args.warmup + args.steps
    multiple = 8 if device.type == "cuda" else 1

    def round_up(n):
        return -(-n // multiple) * multiple

    samplers = {
        "ours": NoDuplicatesBatchSampler(
            keys, args.batch_pairs, args.seed, lengths=[max(a, b) for a, b in zip(len_a, len_b)]
        ),
        "st": NoDuplicatesBatchSampler(keys, args.batch_pairs, args.seed),
    }
    out = {}
    for path, sampler in samplers.items():
        full = [rows for rows in sampler.batches(0) if len(rows) == args.batch_pairs][:wanted]
        if len(full) < wanted:
            raise SystemExit(
                f"error: {args.lengths_from} gives {len(full)} full batches of {args.batch_pairs} pairs; fewer --steps"
            )
        batches = []
        for i, rows in enumerate(full):
            a, b = [len_a[r] for r in rows], [len_b[r] for r in rows]
            if path == "ours":  # both sides stacked into one encoder call, padded to one width
                width_a = width_b = round_up(max(a + b))
            else:
                width_a, width_b = max(a), max(b)
            book_labels = torch.cat([books[rows, 0], books[rows, 1]])
            batches.append(
                padded_batch(a, b, width_a, width_b, labels[rows], book_labels, vocab, device, args.seed + 1 + i)
            )
        out[path] = batches
    return out


def make_optimizer(params, device):
    import torch

    try:
        return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, fused=True)
    except (RuntimeError, TypeError):  # fused kernels absent for this device/dtype
        return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)


def ours_step_fn(encoder, args, device):
    """Our training step: the project's BiEncoder inside the trainer's ContrastiveModule (pair CE + SupCon +
    distillation from teacher logits, weighted by ContrastiveTrainConfig's defaults)."""
    import torch

    from bookmatch.models.bi_encoder import BiEncoder, BiEncoderConfig
    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.tasks import ContrastiveModule, LossWeights

    train_config = ContrastiveTrainConfig(max_seq_length=args.seq_len, projection_dim=args.projection_dim)
    model_config = BiEncoderConfig(
        backbone=f"random-roberta-{args.current_size}",
        projection_dim=args.projection_dim,
        max_seq_length=args.seq_len,
        pooling=train_config.pooling,
        side_features=train_config.side_features,
        lexical_buckets=0,  # the encoder step alone (as measured so far): no signatures, no pooled cosine
        name_top_k=0,
        pooled_cosine=False,
    )
    bi_encoder = BiEncoder(model_config, encoder, tokenizer=None)  # token ids are given: no tokenizer needed
    weights = LossWeights(train_config.ce_weight, train_config.contrastive_weight, train_config.distill_weight)
    model = ContrastiveModule(
        bi_encoder, weights, temperature=train_config.temperature, distill_temperature=train_config.distill_temperature
    ).to(device)
    if args.compile:
        encoder.compile()
    optimizer = make_optimizer(model.parameters(), device)
    pairs, n_side = args.batch_pairs, bi_encoder.side_features.dim
    generator = torch.Generator().manual_seed(args.seed + 2)
    style_a, style_b, teacher_logits = (
        torch.randn(pairs, n, generator=generator).to(device) for n in (n_side, n_side, 2)
    )

    def step(batch):
        inputs = {
            "input_ids_a": batch["text1"]["input_ids"],
            "attention_mask_a": batch["text1"]["attention_mask"],
            "input_ids_b": batch["text2"]["input_ids"],
            "attention_mask_b": batch["text2"]["attention_mask"],
            "style_a": style_a,
            "style_b": style_b,
            "label": batch["pair_labels"],
            "work_a": batch["book_labels"][:pairs],
            "work_b": batch["book_labels"][pairs:],
            "teacher_logits": teacher_logits,
        }
        with autocast(device, not args.no_bf16):
            loss = model(inputs)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    return step, (model, optimizer), encoder.config._attn_implementation


def st_step_fn(model_dir: Path, args, device):
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

    def step(batch):
        # Fresh dicts each step: the modules write their outputs into the features dict.
        columns = [dict(batch["text1"]), dict(batch["text2"])]
        with autocast(device, not args.no_bf16):
            value = loss(columns, labels=None)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the HF/ST trainers clip at 1.0 by default
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    return step, (model, optimizer, loss), transformer.auto_model.config._attn_implementation


def autocast(device, enabled: bool):
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def time_steps(step, batches: list[dict], warmup: int, device) -> list[float]:
    """Seconds of each step after the first `warmup` batches (which run untimed)."""
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for batch in batches[:warmup]:
        step(batch)
    sync()
    times = []
    for batch in batches[warmup:]:
        start = time.perf_counter()
        step(batch)
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
    if args.lengths_from is None:
        batch = make_batch(args, config.vocab_size, device)
        batches = {path: [batch] * (args.warmup + args.steps) for path in args.path_names}
    else:
        batches = real_length_batches(args, config.vocab_size, device)
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
            step, keep, attention = ours_step_fn(
                build_random_roberta(size, args.seq_len, args.seed).to(device), args, device
            )
        else:
            step, keep, attention = st_step_fn(model_dir, args, device)
        times = time_steps(step, batches[path], args.warmup, device)
        timed = batches[path][args.warmup :]
        # fixed batches: the median step (robust to a slow outlier); real lengths: the mean, since steps differ
        step_s = statistics.median(times) if args.lengths_from is None else statistics.fmean(times)
        per_step = len(timed)
        real_lengths = [
            n for b in timed for side in ("text1", "text2") for n in b[side]["attention_mask"].sum(1).tolist()
        ]
        positions = sum(b[side]["input_ids"].numel() for b in timed for side in ("text1", "text2")) / per_step
        real = sum(real_lengths) / per_step
        flops = (
            sequence_flops(params_non_embedding, config.num_hidden_layers, config.hidden_size, real_lengths) / per_step
        )
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
                median_step_s=step_s,
                seqs_per_s=seqs / step_s,
                tokens_per_s=positions / step_s,
                achieved_tflops=flops / step_s / 1e12,
                mfu=flops / step_s / (args.peak_tflops * 1e12),
                peak_memory_gb=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                steps_timed=len(times),
                attn_implementation=str(attention),
                pairs_per_s=args.batch_pairs / step_s,
                real_tokens_per_s=real / step_s,
                pad_fraction=1 - real / positions,
            )
        )
        del step, keep
        gc.collect()
    del encoder
    gc.collect()
    return results


def format_table(results: list[Result]) -> str:
    header = (
        f"{'size':<6} {'path':<5} {'params(M)':>9} {'step(ms)':>9} {'seq/s':>9} {'tok/s':>11} {'real tok/s':>11} "
        f"{'pad':>6} {'TFLOP/s':>8} {'MFU':>6} {'mem(GB)':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        memory = "-" if r.peak_memory_gb is None else f"{r.peak_memory_gb:.1f}"
        lines.append(
            f"{r.size:<6} {r.path:<5} {r.params / 1e6:>9.1f} {r.median_step_s * 1e3:>9.1f} {r.seqs_per_s:>9.1f} "
            f"{r.tokens_per_s:>11,.0f} {r.real_tokens_per_s:>11,.0f} {r.pad_fraction:>6.1%} {r.achieved_tflops:>8.2f} "
            f"{r.mfu:>6.1%} {memory:>8}"
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
        "lengths_from": None if args.lengths_from is None else str(args.lengths_from),
        "step_statistic": "median" if args.lengths_from is None else "mean",
        "flops_formula": "sum over sequences of 6*N_non_embedding*len + 12*layers*len^2*hidden, len without padding",
    }
    payload = {"meta": meta, "results": [asdict(r) for r in results]}
    print(json.dumps(payload, indent=1))
    if args.json_out:
        from bookmatch.storage import atomic_write_json

        atomic_write_json(args.json_out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
