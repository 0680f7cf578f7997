"""Inference throughput: batch mode vs one call at a time, contrastive and two-stage, on the CPU.

Same pairs for every row; the embedding cache is emptied before each timed run so batch mode gains only from
batching and from encoding a repeated text once within the run (as it would on a fresh file). "One at a
time" calls `Matcher.score` per pair with the model already loaded (no process start-up counted): the strict
baseline. With --cli-pairs N, the first N pairs are also scored the way a user without batch mode would, one
`bookmatch infer contrastive --text1 .. --text2 ..` process per pair (start-up and model loading included),
and compared with `bookmatch infer contrastive --input` on the same N pairs, also timed as a process.

    python scripts/bench_infer.py [--pairs 64] [--minilm-pairs 24] [--repeats 3] [--batch-size 32] [--threads 1]
                                  [--precision auto] [--cohort 256] [--cli-pairs 0] [--no-minilm] [--no-tiny]

One torch thread by default: on a shared machine several threads fight for cores and the figures swing;
pass --threads 0 to keep torch's default.

Models: a tiny random 2-layer BERT built on the spot, and (if installed) all-MiniLM-L6-v2 as the backbone
with random heads. Weights are random, so only speed is measured here, never quality.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CORPUS_PAIRS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "validation_pairs.jsonl"


def load_pairs(n: int) -> list[tuple[str, str]]:
    if CORPUS_PAIRS.exists():
        rows = [json.loads(line) for line in CORPUS_PAIRS.read_text(encoding="utf-8").splitlines()[:n]]
        return [(r["text1"], r["text2"]) for r in rows]
    base = "The ship left the harbour at dawn and the coast sank below the horizon by noon."
    return [(f"{base} Passage {i}. " * 8, f"{base} Other {i % 7}. " * 8) for i in range(n)]


def load_cohort_texts(n: int) -> list[str]:
    """Texts for a score cohort, none of them among the scored pairs (taken from the end of the pairs file)."""
    if CORPUS_PAIRS.exists():
        rows = [json.loads(line) for line in CORPUS_PAIRS.read_text(encoding="utf-8").splitlines()[-n:]]
        return [r["text1"] for r in rows]
    return [f"A cohort passage number {i}, about a river, a house and a letter. " * 12 for i in range(n)]


def build_models(root: Path, backbone: str, texts: list[str], max_seq_length: int) -> dict[str, Path]:
    import torch

    from bookmatch.models.bi_encoder import BiEncoder
    from bookmatch.models.cross_encoder import CrossEncoder
    from bookmatch.models.tiny import build_tiny_encoder

    if backbone == "tiny":
        backbone = str(build_tiny_encoder(root / "tiny_encoder", texts))
    from bookmatch.training.config import ContrastiveTrainConfig

    torch.manual_seed(0)
    # the side features a trained model carries (training defaults): style, lexical and names signatures
    defaults = ContrastiveTrainConfig()
    bi = BiEncoder.from_backbone(
        backbone,
        max_seq_length=max_seq_length,
        lexical_buckets=defaults.lexical_buckets,
        lexical_top_k=defaults.lexical_top_k,
        name_top_k=defaults.name_top_k,
        pooled_cosine=defaults.pooled_cosine,
    )
    bi.fit_lexical(texts)
    bi.save_pretrained(root / "bi" / "final")
    torch.manual_seed(1)
    CrossEncoder.from_backbone(backbone, max_seq_length=2 * max_seq_length).save_pretrained(root / "cross" / "final")
    return {"bi": root / "bi" / "final", "cross": root / "cross" / "final"}


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(
    label: str,
    models: dict[str, Path],
    pairs,
    repeats: int,
    batch_size: int,
    tmp: Path,
    precision: str,
    cohort_size: int,
) -> list[dict]:
    from bookmatch.cohort import ScoreCohort
    from bookmatch.inference import Matcher

    source = tmp / "pairs.jsonl"
    source.write_text("".join(json.dumps({"text1": a, "text2": b}) + "\n" for a, b in pairs), encoding="utf-8")
    rows = []
    for mode in ("contrastive", "two-stage"):
        # prefilter 0 sends every pair to the cross-encoder: the worst case for two-stage throughput
        matcher = Matcher.from_pretrained(
            models["bi"],
            cross_model=models["cross"] if mode == "two-stage" else None,
            device="cpu",
            prefilter_threshold=0.0 if mode == "two-stage" else None,
            precision=precision,
        )
        if cohort_size:
            # what calibration gives a bi-encoder by default: margins normalised against a score cohort
            matcher.bi.cohort = ScoreCohort(*matcher.bi.embed(load_cohort_texts(cohort_size)))
        matcher.score(*pairs[0])  # warm-up

        def forget():
            matcher.bi._cache.clear()
            matcher.bi._affinities.clear()

        def batch_mode():
            forget()
            matcher.score_file(source, tmp / "scores.jsonl", batch_size=batch_size, show_progress=False)

        def one_at_a_time():
            for a, b in pairs:
                forget()
                matcher.score(a, b)

        batch_s, single_s = timed(batch_mode, repeats), timed(one_at_a_time, repeats)
        rows.append(
            {
                "model": label,
                "mode": mode,
                "precision": matcher.bi.precision,
                "cohort": cohort_size,
                "pairs": len(pairs),
                "batch_pairs_per_s": len(pairs) / batch_s,
                "single_pairs_per_s": len(pairs) / single_s,
                "ratio": single_s / batch_s,
            }
        )
        print(
            f"{label:>8} {mode:>12} {matcher.bi.precision:>5} {len(pairs):>6} {rows[-1]['batch_pairs_per_s']:>12.1f} {rows[-1]['single_pairs_per_s']:>12.1f} {rows[-1]['ratio']:>7.2f}x",
            flush=True,
        )
    return rows


def bench_cli(label: str, models: dict[str, Path], pairs, tmp: Path, precision: str, threads: int) -> dict:
    """One `bookmatch infer` process per pair against one batch-mode process, wall clock of whole processes."""
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads > 0 else dict(os.environ)
    base = [
        sys.executable,
        "-m",
        "bookmatch",
        "infer",
        "contrastive",
        "--model",
        str(models["bi"]),
        "--device",
        "cpu",
        "--precision",
        precision,
    ]
    source = tmp / "cli_pairs.jsonl"
    source.write_text("".join(json.dumps({"text1": a, "text2": b}) + "\n" for a, b in pairs), encoding="utf-8")
    start = time.perf_counter()
    for a, b in pairs:
        subprocess.run(base + ["--text1", a, "--text2", b], env=env, check=True, capture_output=True)
    per_pair_s = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run(
        base + ["--input", str(source), "--output", str(tmp / "cli_scores.jsonl")],
        env=env,
        check=True,
        capture_output=True,
    )
    batch_s = time.perf_counter() - start
    row = {
        "model": label,
        "mode": "contrastive, CLI processes",
        "pairs": len(pairs),
        "batch_pairs_per_s": len(pairs) / batch_s,
        "single_pairs_per_s": len(pairs) / per_pair_s,
        "ratio": per_pair_s / batch_s,
    }
    print(
        f"{label:>8} {'CLI/process':>12} {precision:>5} {len(pairs):>6} {row['batch_pairs_per_s']:>12.2f} {row['single_pairs_per_s']:>12.2f} {row['ratio']:>7.2f}x",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64, help="Pairs for the tiny model.")
    parser.add_argument("--minilm-pairs", type=int, default=24, help="Pairs for the MiniLM backbone (slow on CPU).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument(
        "--precision", default="auto", help="Encoders' autocast: auto | no | bf16 | fp16 (both modes alike)."
    )
    parser.add_argument(
        "--cli-pairs", type=int, default=0, help="Also time one CLI process per pair on this many pairs (0: skip)."
    )
    parser.add_argument(
        "--cohort", type=int, default=256, help="Score cohort size, as calibrate gives a bi-encoder (0: none)."
    )
    parser.add_argument("--no-minilm", action="store_true", help="Skip the all-MiniLM-L6-v2 backbone.")
    parser.add_argument("--no-tiny", action="store_true", help="Skip the tiny random backbone.")
    args = parser.parse_args(argv)

    import torch

    from bookmatch.errors import ModelLoadError
    from bookmatch.models.resolve import DEFAULT_CPU_BACKBONE, resolve_model_path

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); batch size {args.batch_size}, median of {args.repeats}; cohort {args.cohort}; pairs from {CORPUS_PAIRS if CORPUS_PAIRS.exists() else 'synthetic text'}"
    )
    print(f"{'model':>8} {'mode':>12} {'prec':>5} {'pairs':>6} {'batch/s':>12} {'single/s':>12} {'ratio':>8}")
    backbones = [] if args.no_tiny else [("tiny", "tiny", args.pairs)]
    if not args.no_minilm:
        try:
            resolve_model_path(DEFAULT_CPU_BACKBONE)
            backbones.append(("minilm", DEFAULT_CPU_BACKBONE, args.minilm_pairs))
        except ModelLoadError as err:
            print(f"(all-MiniLM-L6-v2 not available: {err})")
    with tempfile.TemporaryDirectory() as tmp_name:
        for label, backbone, n_pairs in backbones:
            pairs = load_pairs(n_pairs)
            tmp = Path(tmp_name) / label
            models = build_models(tmp, backbone, [t for pair in pairs for t in pair], args.max_seq_length)
            bench(label, models, pairs, args.repeats, args.batch_size, tmp, args.precision, args.cohort)
            if args.cli_pairs > 0:
                bench_cli(label, models, pairs[: args.cli_pairs], tmp, args.precision, args.threads)


if __name__ == "__main__":
    main()
