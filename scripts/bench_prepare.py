"""Benchmark `bookmatch prepare` on CPU and print the figures for BENCHMARKS.md.

    python scripts/bench_prepare.py --books ../shared/corpus/books                 # full run, no mining
    python scripts/bench_prepare.py --books ../shared/corpus/books --mining --limit 40 --num-chunks-for-embed 16 --miner-precision no,auto
    python scripts/bench_prepare.py --books ../shared/corpus/books --memory 100,406

Each measurement runs in a fresh subprocess so peak RSS (ru_maxrss of the process and its workers) belongs
to that run alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, resource, sys, threading, time
from bookmatch.prepare import PrepareConfig, run_prepare
from bookmatch.storage import read_json

# ru_maxrss counts pages of memory-mapped files (the chunk texts are mapped Arrow), which the kernel can drop
# at will; the anonymous part (RssAnon) is the memory the process really holds. Sampled every 20 ms.
peak = {"RssAnon": 0, "RssFile": 0}
def sample(stop):
    while not stop.wait(0.02):
        for line in open("/proc/self/status"):
            key = line.split(":")[0]
            if key in peak:
                peak[key] = max(peak[key], int(line.split()[1]))
stop = threading.Event()
threading.Thread(target=sample, args=(stop,), daemon=True).start()
cfg = PrepareConfig(**json.loads(sys.argv[1]))
start = time.perf_counter()
out = run_prepare(cfg)
wall = time.perf_counter() - start
stop.set()
manifest = read_json(out / "manifest.json")
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"wall_s": wall, "peak_rss_main_mb": self_kb / 1024, "peak_rss_worker_mb": child_kb / 1024,
                  "peak_anon_main_mb": peak["RssAnon"] / 1024, "peak_file_main_mb": peak["RssFile"] / 1024,
                  "timings": manifest["timings"], "books_used": manifest["books_used"],
                  "chunks_embedded": manifest.get("chunks_embedded"),
                  "pairs": {k: v["total"] for k, v in manifest["counts"].items()}}))
"""


def subset(books: Path, limit: int | None, scratch: Path) -> Path:
    """The first `limit` books (sorted), linked into a scratch folder; the whole folder when no limit."""
    if not limit:
        return books
    files = sorted((p for p in books.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(books).as_posix())
    root = scratch / f"books_{limit}"
    for path in files[:limit]:
        target = root / path.relative_to(books)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path.resolve(), target)
    return root


def run_once(config: dict) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(config)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"prepare failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--books", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N books (sorted).")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mining", action="store_true", help="Mine hard negatives (embeds chunks on CPU).")
    parser.add_argument("--num-chunks-for-embed", type=int, default=16)
    parser.add_argument(
        "--miner-precision", default="auto", help="Comma-separated miner precisions to compare, e.g. no,auto."
    )
    parser.add_argument("--memory", default="", help="Comma-separated book counts to compare peak RSS, e.g. 100,406.")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        counts = [int(c) for c in args.memory.split(",") if c] or [args.limit]
        precisions = [p for p in args.miner_precision.split(",") if p] if args.mining else ["auto"]
        for count, precision in ((c, p) for c in counts for p in precisions):
            books = (
                subset(args.books, count, scratch)
                if not (scratch / f"books_{count}").exists()
                else scratch / f"books_{count}"
            )
            config = {
                "books": str(books),
                "out": str(scratch / f"out_{count}_{precision}"),
                "workers": args.workers,
                "hard_negatives": args.mining,
                "num_chunks_for_embed": args.num_chunks_for_embed,
                "miner_precision": precision,
            }
            result = run_once(config)
            label = f"{result['books_used']} books used of {count or 'all'}"
            mining = f"on, miner precision {precision}" if args.mining else "off"
            print(
                f"prepare ({label}, workers={args.workers}, mining={mining}): "
                f"wall {result['wall_s']:.1f} s, pairs {result['pairs']}"
            )
            print("  stage timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result["timings"].items()))
            print(
                f"  peak RSS: main {result['peak_rss_main_mb']:.0f} MB (anonymous {result['peak_anon_main_mb']:.0f} MB, "
                f"mapped files {result['peak_file_main_mb']:.0f} MB), largest worker {result['peak_rss_worker_mb']:.0f} MB"
            )
            if args.mining and result.get("chunks_embedded"):
                seconds = result["timings"].get("mining", 0.0)
                print(
                    f"  mining: {result['chunks_embedded']:,} chunks embedded in {seconds:.1f} s "
                    f"({result['chunks_embedded'] / max(seconds, 1e-9):,.1f} chunks/s incl. model load and k-NN)"
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
