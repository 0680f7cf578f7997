"""The stock sentence-transformers recipe on our data: the baseline bookmatch's bi-encoder must beat.

Fine-tunes a SentenceTransformer (default all-MiniLM-L6-v2) with MultipleNegativesRankingLoss on the positive
pairs of a `bookmatch prepare` train split, with sentence-transformers' own trainer and no-duplicates batches,
then scores pairs by the cosine of the two embeddings (what a user of the stock recipe would threshold) and
prints ROC AUC on the validation and test splits and, when given, a labelled pairs file (overall and per
`kind`). The untrained model is scored too (zero-shot). Budget defaults match the cpu-small preset: 300 steps
of 16 pairs (32 texts, as our step), 128 tokens in training.

    python scripts/baseline_st.py --data RUN/data/processed [--pairs ../shared/corpus/validation_pairs.jsonl] \
        [--model sentence-transformers/all-MiniLM-L6-v2] [--steps 300] [--batch-size 16] [--lr 5e-5] \
        [--train-seq-length 128] [--eval-seq-length 128,256] [--test-pairs 1000] [--out DIR] [--json-out FILE]

`--lr` defaults to the trainer's own default (5e-5); `--eval-seq-length` lists the reading lengths to score at
(256 is the model's own default: the first 256 tokens of each text). bf16 autocast where the CPU computes it
natively (as our cpu-small training does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def auc_table(model, sets: dict, seq_lengths: list[int], batch_size: int = 32) -> dict[str, float]:
    """ROC AUC of the embeddings' cosine per set (`LabelledPairs`), and per negative kind against all positives
    (as `bookmatch evaluate` reports it), per reading length."""
    from bookmatch.evaluation.metrics import compute_metrics, metrics_by_kind
    from bookmatch.evaluation.st_recipe import cosine_scores

    results = {}
    for seq_length in seq_lengths:
        for name, pairs in sets.items():
            cosine = cosine_scores(model, pairs.text1, pairs.text2, seq_length, batch_size)
            score = (cosine + 1) / 2  # into [0, 1], as the metrics expect; AUC is unchanged by it
            results[f"{name}@{seq_length}"] = float(compute_metrics(pairs.labels, score)["auc"])
            for kind, figures in metrics_by_kind(pairs.labels, score, pairs.kinds).items():
                if figures["auc_against"] == "all positives":
                    results[f"{name}/{kind}@{seq_length}"] = float(figures["auc"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="A `bookmatch prepare` output (DatasetDict folder).")
    parser.add_argument(
        "--pairs", default=None, help="Labelled JSONL pairs (text1, text2, label[, kind]) to score too."
    )
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16, help="Pairs per step (MNRL: 2x texts).")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--train-seq-length", type=int, default=128)
    parser.add_argument("--eval-seq-length", default="128,256")
    parser.add_argument("--test-pairs", type=int, default=1000, help="Score the first N test pairs (0: all).")
    parser.add_argument("--precision", default="auto", choices=["auto", "no", "bf16"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=None, help="Where the trainer writes (default: a temporary folder).")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    import torch

    from bookmatch.evaluation.st_recipe import RecipeSettings, load_sentence_transformer, train_stock_recipe
    from bookmatch.inference.pairs_file import load_labelled_pairs
    from bookmatch.precision import autocast, resolve_mixed_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    precision = resolve_mixed_precision(args.precision, use_cuda=False)
    sets = {
        "validation": load_labelled_pairs(args.data, "validation"),
        "test": load_labelled_pairs(args.data, "test", max_pairs=args.test_pairs or None),
    }
    if args.pairs:
        sets["pairs"] = load_labelled_pairs(pairs_file=args.pairs)
    seq_lengths = [int(x) for x in args.eval_seq_length.split(",")]
    settings = RecipeSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_ratio=args.warmup_ratio,
        train_seq_length=args.train_seq_length,
        seed=args.seed,
    )

    model = load_sentence_transformer(args.model, device="cpu")
    results: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    with autocast(precision, "cpu"):
        results["zero-shot"] = auc_table(model, sets, seq_lengths)
    print(f"zero-shot scored in {time.perf_counter() - start:.0f} s", flush=True)

    train_seconds = train_stock_recipe(model, args.data, settings, precision, out_dir=args.out)
    print(f"trained {args.steps} steps in {train_seconds:.0f} s", flush=True)
    with autocast(precision, "cpu"):
        results["fine-tuned"] = auc_table(model, sets, seq_lengths)

    keys = list(results["zero-shot"])
    print(f"\n{'set@tokens':<40} {'zero-shot':>10} {'fine-tuned':>11}")
    for key in keys:
        print(f"{key:<40} {results['zero-shot'][key]:>10.3f} {results['fine-tuned'][key]:>11.3f}")
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {"args": vars(args), "precision": precision, "train_seconds": train_seconds, "auc": results}, indent=2
            ),
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
