"""Ablation of two inference choices on a trained bi-encoder: how long texts are read, and how it is calibrated.

For each `long_texts` mode (truncate: the first max_seq_length tokens; windows: the whole text, 128-token
windows averaged), the model's raw margins on the validation and test splits of a prepared dataset and on a
labelled pairs file give ROC AUC; then calibrations fitted on the validation split (temperature alone, and
temperature + offset) give ECE on each set. Same model, same pairs, one run.

    python scripts/ablate_inference.py --model RUN/models/book_matcher_contrastive/final --data RUN/data/processed \\
        --pairs ../shared/corpus/validation_pairs.jsonl [--max-pairs 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="The bi-encoder's final/ folder.")
    parser.add_argument("--data", required=True, help="Prepared dataset (validation split fits the calibration).")
    parser.add_argument("--pairs", default=None, help="A labelled pairs JSONL file (text1, text2, label[, kind]).")
    parser.add_argument("--max-pairs", type=int, default=1000, help="At most this many pairs per set.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    args = parser.parse_args()

    import numpy as np
    import torch

    from bookmatch.calibration import fit_temperature, load_labelled_pairs, probability_from_margin
    from bookmatch.evaluation.metrics import compute_metrics, expected_calibration_error
    from bookmatch.inference import BiEncoderScorer, load_bi_encoder

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sets = {"validation": load_labelled_pairs(args.data, "validation", max_pairs=args.max_pairs),
            "test": load_labelled_pairs(args.data, "test", max_pairs=args.max_pairs)}
    if args.pairs:
        sets["pairs file"] = load_labelled_pairs(pairs_file=args.pairs, max_pairs=args.max_pairs)
    model = load_bi_encoder(args.model, "cpu")
    print(f"{'long_texts':<10} {'set':<11} {'pairs':>6} {'AUC':>6} {'same-author AUC':>16} {'ECE raw':>8} {'ECE T':>8} {'ECE T+offset':>13} {'seconds':>8}")
    for mode in ("truncate", "windows"):
        model.config.long_texts = mode
        scorer = BiEncoderScorer(model, cache_size=0)
        margins, seconds = {}, {}
        for name, pairs in sets.items():
            start = time.perf_counter()
            margins[name] = scorer.raw_scores(pairs.text1, pairs.text2).margin
            seconds[name] = time.perf_counter() - start
        fit_labels = np.asarray(sets["validation"].labels)
        t_alone, _ = fit_temperature(margins["validation"], fit_labels)
        t_platt, offset = fit_temperature(margins["validation"], fit_labels, fit_offset=True)
        for name, pairs in sets.items():
            labels, margin = np.asarray(pairs.labels), margins[name]
            kinds = np.asarray(pairs.kinds)
            same_author = (labels == 1) | np.isin(kinds, ["same_author", "neg_same_author"])
            same_author_auc = compute_metrics(labels[same_author], probability_from_margin(margin[same_author]))["auc"] if (labels[same_author] == 0).any() else float("nan")
            eces = [expected_calibration_error(labels, probability_from_margin(margin, *c)) for c in ((1.0, 0.0), (t_alone, 0.0), (t_platt, offset))]
            auc = compute_metrics(labels, probability_from_margin(margin))["auc"]
            print(f"{mode:<10} {name:<11} {len(pairs):>6} {auc:>6.3f} {same_author_auc:>16.3f} {eces[0]:>8.3f} {eces[1]:>8.3f} {eces[2]:>13.3f} {seconds[name]:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
