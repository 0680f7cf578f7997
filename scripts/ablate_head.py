"""Is a trained bi-encoder limited by its pair classifier or by its encoder? Refit the classifier on many more pairs.

The training run shows the classifier only the pairs of its steps (cpu-small: 4,800). This script encodes up to
`--texts-per-book` training texts of every training book once (whole passages, as inference reads them), forms
every same-book pair among them and two random plus two same-author negatives per text, and refits the classifier
on those fixed embeddings (from the trained weights, and from fresh ones). It prints ROC AUC of the model's own
margin and of each refit on the validation and test splits and, when given, a labelled pairs file.

    python scripts/ablate_head.py --model RUN/models/book_matcher_contrastive/final --data RUN/data/processed \
        [--pairs ../shared/corpus/validation_pairs.jsonl] [--texts-per-book 9] [--test-pairs 1000] [--precision auto]

Book ids are `author/title`, so same-author negatives come from the id's first part.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import random
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
    parser.add_argument("--texts-per-book", type=int, default=9)
    parser.add_argument("--test-pairs", type=int, default=1000)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    import torch
    from datasets import load_from_disk
    from sklearn.metrics import roc_auc_score

    from bookmatch.inference import BiEncoderScorer, load_bi_encoder
    from bookmatch.models.bi_encoder import TextEmbeddings

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    scorer = BiEncoderScorer(load_bi_encoder(args.model, "cpu"), precision=args.precision)
    model = scorer.model
    data = load_from_disk(args.data)

    def embed(texts):
        start = time.perf_counter()
        emb = scorer.embed(texts, batch_size=32)
        print(f"encoded {len(texts)} texts in {time.perf_counter() - start:.1f} s ({scorer.precision})", flush=True)
        return emb

    def pair_set(name, text1, text2, labels, kinds):
        emb = embed(list(text1) + list(text2))
        n = len(text1)
        return name, TextEmbeddings(*(t[:n] for t in emb)), TextEmbeddings(*(t[n:] for t in emb)), np.asarray(labels), list(kinds)

    sets = []
    for split, limit in (("validation", None), ("test", args.test_pairs)):
        part = data[split]
        if limit is not None and limit < len(part):
            part = part.select(sorted(random.Random(1).sample(range(len(part)), limit)))
        sets.append(pair_set(split, part["text1"], part["text2"], part["label"], part["neg_type"]))
    if args.pairs:
        rows = [json.loads(line) for line in Path(args.pairs).read_text(encoding="utf-8").splitlines() if line.strip()]
        sets.append(pair_set(Path(args.pairs).name, [r["text1"] for r in rows], [r["text2"] for r in rows], [r["label"] for r in rows], [r.get("kind", "") for r in rows]))

    texts_by_book: dict[str, set[str]] = collections.defaultdict(set)
    for row in data["train"]:
        texts_by_book[row["book1"]].add(row["text1"])
        texts_by_book[row["book2"]].add(row["text2"])
    texts, books = [], []
    for book in sorted(texts_by_book):
        chosen = sorted(texts_by_book[book])
        rng.shuffle(chosen)
        for text in chosen[: args.texts_per_book]:
            texts.append(text)
            books.append(book)
    train = embed(texts)
    index_by_book = collections.defaultdict(list)
    for i, book in enumerate(books):
        index_by_book[book].append(i)
    books_by_author = collections.defaultdict(list)
    for book in index_by_book:
        books_by_author[book.split("/")[0]].append(book)
    all_books = list(index_by_book)
    positives = [(i, j) for ix in index_by_book.values() for k, i in enumerate(ix) for j in ix[k + 1 :]]
    negatives = []
    for book, ix in index_by_book.items():
        same_author = [other for other in books_by_author[book.split("/")[0]] if other != book]
        for i in ix:
            for pool in (all_books, all_books) + ((same_author, same_author) if same_author else ()):
                other = rng.choice(pool)
                if other != book:
                    negatives.append((i, rng.choice(index_by_book[other])))
    pairs = torch.tensor(positives + negatives)
    labels = torch.tensor([1] * len(positives) + [0] * len(negatives))
    side_a = TextEmbeddings(*(t[pairs[:, 0]] for t in train))
    side_b = TextEmbeddings(*(t[pairs[:, 1]] for t in train))
    print(f"refit pairs: {len(positives)} positive, {len(negatives)} negative, from {len(texts)} texts of {len(all_books)} books")

    def margins(head, a, b):
        head.eval()
        with torch.no_grad():
            logits = head.classify(a.pooled, b.pooled, a.style, b.style)
        return (logits[:, 1] - logits[:, 0]).numpy()

    def report(tag, head):
        cells = []
        for name, a, b, y, kinds in sets:
            m = margins(head, a, b)
            cells.append(f"{name} {roc_auc_score(y, m):.4f}")
            if "neg_same_author" in kinds:
                keep = np.array([k in ("positive", "neg_same_author") for k in kinds])
                cells.append(f"same-author {roc_auc_score(y[keep], m[keep]):.4f}")
        print(f"{tag:<34} " + " | ".join(cells), flush=True)

    report("trained classifier", model)
    for init in ("trained", "fresh"):
        for lr, epochs in ((1e-4, 3), (3e-4, 6)):
            head = copy.deepcopy(model)
            if init == "fresh":
                for layer in head.classifier:
                    if hasattr(layer, "reset_parameters"):
                        layer.reset_parameters()
            optimizer = torch.optim.AdamW(head.classifier.parameters(), lr=lr, weight_decay=0.01)
            for epoch in range(epochs):
                head.train()
                order = torch.randperm(len(labels))
                for start in range(0, len(order), 256):
                    ix = order[start : start + 256]
                    logits = head.classify(side_a.pooled[ix], side_b.pooled[ix], side_a.style[ix], side_b.style[ix])
                    loss = torch.nn.functional.cross_entropy(logits, labels[ix])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                report(f"refit from {init}, lr {lr:g}, epoch {epoch + 1}", head)


if __name__ == "__main__":
    main()
