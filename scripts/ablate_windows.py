"""How should a trained bi-encoder read a passage longer than one window: how wide, and overlapping or not?

For each `WIDTH:STRIDE` variant (tokens per window with the special tokens, and the step between window starts
in text tokens; a stride of WIDTH-2 for a [CLS]/[SEP] model is what bookmatch does: consecutive windows),
scores the validation split, the first `--test-pairs` test pairs and, when given, a labelled pairs file the way
a calibrated bi-encoder scores them (margin averaged over both orders, less the texts' mean margins against a
cohort of `--cohort` training passages) and prints ROC AUC overall / on same-author negatives, and seconds.

    python scripts/ablate_windows.py --model RUN/models/book_matcher_contrastive/final --data RUN/data/processed \\
        [--pairs ../shared/corpus/validation_pairs.jsonl] [--variants 128:126,256:254,128:64] [--cohort 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def strided_window_inputs(model, texts, stride: int):
    """`BiEncoder.window_inputs` with windows starting every `stride` tokens (the last one flush with the end)."""
    prefix, suffix = model.special_affixes()
    width = model.config.max_seq_length - len(prefix) - len(suffix)
    pieces = model.tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    inputs, owners = [], []
    for owner, ids in enumerate(pieces):
        last = max(len(ids) - width, 0)
        starts = list(range(0, last + 1, stride))
        if starts[-1] != last:
            starts.append(last)
        for start in starts[: model.config.max_windows]:
            inputs.append(prefix + ids[start : start + width] + suffix)
            owners.append(owner)
    return inputs, owners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="The bi-encoder's final/ folder.")
    parser.add_argument("--data", required=True, help="Prepared dataset (validation and test splits; the cohort's training passages).")
    parser.add_argument("--pairs", default=None, help="A labelled pairs JSONL file (text1, text2, label[, kind]).")
    parser.add_argument("--variants", default="128:126,256:254,128:64", help="WIDTH:STRIDE, comma-separated.")
    parser.add_argument("--cohort", type=int, default=256, help="Cohort size (0: no cohort normalisation).")
    parser.add_argument("--test-pairs", type=int, default=1000)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    args = parser.parse_args()

    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    from bookmatch.calibration import load_labelled_pairs
    from bookmatch.cohort import ScoreCohort, select_cohort_texts
    from bookmatch.inference import BiEncoderScorer, load_bi_encoder

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sets = [load_labelled_pairs(args.data, "validation"), load_labelled_pairs(args.data, "test", max_pairs=args.test_pairs)]
    if args.pairs:
        sets.append(load_labelled_pairs(pairs_file=args.pairs))
    cohort_texts = select_cohort_texts(args.data, args.cohort) if args.cohort > 0 else []
    header = ["width:stride"] + [f"{p.source} ({len(p)} pairs): AUC / same-author" for p in sets] + ["seconds"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    for variant in args.variants.split(","):
        width, stride = (int(v) for v in variant.split(":"))
        model = load_bi_encoder(args.model, "cpu")
        model.config.max_seq_length = width
        if stride != width - sum(map(len, model.special_affixes())):  # else bookmatch's own consecutive windows
            model.window_inputs = types.MethodType(lambda self, texts, s=stride: strided_window_inputs(self, texts, s), model)
        start = time.perf_counter()
        scorer = BiEncoderScorer(model, cache_size=0, precision=args.precision)
        if cohort_texts:
            scorer.cohort = ScoreCohort(*scorer.embed(cohort_texts))
        cells = []
        for pairs in sets:
            score = scorer.raw_scores(pairs.text1, pairs.text2).score
            labels = np.asarray(pairs.labels)
            same_author = (labels == 1) | np.isin(np.asarray(pairs.kinds), ["same_author", "neg_same_author"])
            cells.append(f"{roc_auc_score(labels, score):.4f} / {roc_auc_score(labels[same_author], score[same_author]):.4f}")
        print(f"| {variant} | " + " | ".join(cells) + f" | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
