"""Does cohort score normalisation help a trained bi-encoder on unseen books, and how large a cohort does it need?

Scores the validation split, the first `--test-pairs` test pairs (as `bookmatch evaluate` reads them) and, when
given, a labelled pairs file, and prints ROC AUC (overall and on same-author negatives) of: the margin in one
order (the classifier reads its sides in order), the margin averaged over both orders (what the scorer uses),
and that average less the mean of its texts' cohort affinities (bookmatch.cohort) for cohorts of each size,
drawn from the training split as `bookmatch calibrate` draws them.

    python scripts/ablate_cohort.py --model RUN/models/book_matcher_contrastive/final --data RUN/data/processed \
        [--pairs ../shared/corpus/validation_pairs.jsonl] [--sizes 64,128,256,512] [--test-pairs 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--pairs", default=None, help="Labelled JSONL pairs (text1, text2, label[, kind]) to score too.")
    parser.add_argument("--sizes", default="64,128,256,512", help="Cohort sizes, comma-separated.")
    parser.add_argument("--test-pairs", type=int, default=1000)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from bookmatch.calibration import load_labelled_pairs, logit_margin
    from bookmatch.cohort import ScoreCohort, normalized_margin, select_cohort_texts
    from bookmatch.inference import BiEncoderScorer, load_bi_encoder
    from bookmatch.models.bi_encoder import TextEmbeddings

    scorer = BiEncoderScorer(load_bi_encoder(args.model, "cpu"), precision=args.precision)
    model = scorer.model
    sizes = sorted(int(v) for v in args.sizes.split(","))
    cohort_texts = select_cohort_texts(args.data, sizes[-1])
    start = time.perf_counter()
    cohort_all = ScoreCohort(*scorer.embed(cohort_texts))
    print(f"cohort: {len(cohort_texts)} training passages encoded in {time.perf_counter() - start:.1f} s", flush=True)
    cohorts = {size: ScoreCohort(*(t[:size] for t in cohort_all.embeddings())) for size in sizes if size <= len(cohort_texts)}

    sets = [load_labelled_pairs(args.data, "validation"), load_labelled_pairs(args.data, "test", max_pairs=args.test_pairs)]
    if args.pairs:
        sets.append(load_labelled_pairs(pairs_file=args.pairs))
    rows: dict[str, list[str]] = {}
    for pairs in sets:
        texts = sorted(set(pairs.text1) | set(pairs.text2))
        position = {text: i for i, text in enumerate(texts)}
        emb = scorer.embed(texts)
        index1 = np.asarray([position[t] for t in pairs.text1])
        index2 = np.asarray([position[t] for t in pairs.text2])
        side1 = TextEmbeddings(*(t[index1] for t in emb))
        side2 = TextEmbeddings(*(t[index2] for t in emb))
        forward = logit_margin(model.pair_logits(side1, side2))
        both = 0.5 * (forward + logit_margin(model.pair_logits(side2, side1)))
        scores = {"margin, one order": forward, "margin, both orders": both}
        for size, cohort in cohorts.items():
            start = time.perf_counter()
            affinity = cohort.affinities(model, emb)
            ms = 1000 * (time.perf_counter() - start) / len(texts)
            scores[f"both orders - cohort {size} ({ms:.1f} ms/text)" if pairs is sets[0] else f"both orders - cohort {size}"] = normalized_margin(both, affinity[index1], affinity[index2])
        labels = np.asarray(pairs.labels)
        same_author = np.asarray([k in ("positive", "same_author", "neg_same_author") for k in pairs.kinds])
        for number, (name, score) in enumerate(scores.items()):
            cell = f"{roc_auc_score(labels, score):.4f}"
            if same_author.sum() < len(labels) and len(set(labels[same_author])) == 2:
                cell += f" / {roc_auc_score(labels[same_author], score[same_author]):.4f}"
            rows.setdefault(number, [name]).append(cell)
    header = ["score"] + [f"{p.source} ({len(p)} pairs): AUC / same-author" for p in sets]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for cells in rows.values():
        print("| " + " | ".join(cells) + " |")
    print(json.dumps({"cohort_sizes": list(cohorts), "model": args.model}))


if __name__ == "__main__":
    main()
