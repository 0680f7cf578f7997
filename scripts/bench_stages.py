#!/usr/bin/env python
"""Mining and teacher-logit throughput, this checkout against an earlier commit, side by side in one run.

    python scripts/bench_stages.py --data DATA --before 1a90515                          # tiny encoder, CPU
    python scripts/bench_stages.py --data DATA --before 1a90515 --miner sentence-transformers/all-MiniLM-L6-v2 \
        --teacher-backbone sentence-transformers/all-MiniLM-L6-v2 --books 12 --pairs 200
    python scripts/bench_stages.py --data DATA --env TOKENIZERS_PARALLELISM=false --env TOKENIZERS_PARALLELISM=true

DATA is a folder written by `bookmatch prepare`. Mining embeds up to 80 chunk texts per book of its train split
(both sides, first `--books` books) with `embed_centroids`, timed as prepare times it (model load included);
teacher logits score the first `--pairs` train pairs with `teacher_logits`, whose own summary line is parsed.
`--miner tiny` / `--teacher-backbone tiny` build the tiny random encoder (`bookmatch.models.tiny`) on the
data's texts; the teacher is a cross-encoder on that backbone with a random head (its cost is the same as a
trained one's). Every measurement runs in a fresh interpreter (imports count, as they do in a real stage),
versions alternate within each repeat, and each line gives wall time and the process's CPU time: on a shared
machine compare ratios measured side by side, not absolute rates. `--json-out` keeps every figure.
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

REPO = Path(__file__).resolve().parents[1]
CHUNKS_PER_BOOK = 80

_MINING_CHILD = r"""
import json, resource, sys, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
import torch, transformers  # prepare has these loaded by the time it mines (datasets imports them)
chunks, model, batch, device = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3]), sys.argv[4]
t, c = time.perf_counter(), cpu()
from bookmatch.prepare.mining import embed_centroids
embed_centroids(chunks, model, batch, device=device, precision="auto")
print(json.dumps({"count": sum(map(len, chunks)), "seconds": time.perf_counter() - t, "cpu": cpu() - c}))
"""

_TEACHER_CHILD = r"""
import json, logging, re, resource, sys, time
from pathlib import Path
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
lines = []
class Keep(logging.Handler):
    def emit(self, record): lines.append(record.getMessage())
logging.getLogger().addHandler(Keep()); logging.getLogger().setLevel(logging.INFO)
from accelerate import Accelerator
from datasets import load_from_disk
from bookmatch.training.config import ContrastiveTrainConfig
try:
    from bookmatch.training.teacher_logits import teacher_logits
except ImportError:  # before the stage had a module of its own
    from bookmatch.training.tasks import teacher_logits
data, teacher, pairs, batch, out, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]), sys.argv[6]
split = load_from_disk(data)["train"]
split = split.select(range(min(pairs, len(split))))
c = cpu()
cuda = device == "cuda"
accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")
teacher_logits(ContrastiveTrainConfig(teacher=teacher, teacher_batch_size=batch), split, accelerator, out)
summary = [l for l in lines if l.startswith("teacher logits: ") and " in " in l][-1]
count, seconds = re.match(r"teacher logits: ([\d,]+) pairs in ([\d.]+) s", summary).groups()
print(json.dumps({"count": int(count.replace(",", "")), "seconds": float(seconds), "cpu": cpu() - c, "line": summary}))
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder written by bookmatch prepare")
    parser.add_argument("--before", default="", help="a git revision to compare with (empty: this checkout only)")
    parser.add_argument("--miner", default="tiny", help="tiny, or a model name / folder")
    parser.add_argument("--teacher-backbone", default="tiny", help="tiny, or a model name / folder")
    parser.add_argument("--teacher-max-length", type=int, default=512)
    parser.add_argument("--books", type=int, default=50, help="books whose chunks are embedded (up to 80 each)")
    parser.add_argument("--pairs", type=int, default=1000, help="train pairs the teacher scores")
    parser.add_argument("--batch-size", type=int, default=64, help="embed_batch_size and teacher_batch_size")
    parser.add_argument("--stages", default="mining,teacher")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 there: the miner's auto, the teacher's run)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE[,NAME=VALUE]: one more setting to run")
    parser.add_argument("--json-out", type=Path, default=None)
    return parser.parse_args(argv)


def chunk_lists(data: Path, books: int) -> list[list[str]]:
    """Up to 80 distinct texts per book of the train split (both sides), the first `books` books by id."""
    from datasets import load_from_disk

    split = load_from_disk(str(data))["train"]
    by_book: dict[str, dict[str, None]] = {}
    for side in ("1", "2"):
        for book, text in zip(split[f"book{side}"], split[f"text{side}"]):
            by_book.setdefault(book, {})[text] = None
    return [list(by_book[book])[:CHUNKS_PER_BOOK] for book in sorted(by_book)[:books]]


def build_models(args, data: Path, scratch: Path) -> tuple[str, str]:
    """(miner, teacher folder): the tiny encoder where asked, and a cross-encoder with a random head."""
    import torch

    from bookmatch.models.cross_encoder import CrossEncoder
    from bookmatch.models.tiny import build_tiny_encoder

    tiny = None
    if "tiny" in (args.miner, args.teacher_backbone):
        texts = [text for chunks in chunk_lists(data, 40) for text in chunks]
        tiny = str(build_tiny_encoder(scratch / "tiny", texts))
    miner = tiny if args.miner == "tiny" else args.miner
    torch.manual_seed(0)
    backbone = tiny if args.teacher_backbone == "tiny" else args.teacher_backbone
    teacher = scratch / "teacher"
    CrossEncoder.from_backbone(backbone, max_seq_length=args.teacher_max_length).save_pretrained(teacher)
    return miner, str(teacher)


def checkout(revision: str, scratch: Path) -> Path:
    """The package as it was at `revision`, unpacked into scratch (git archive: no worktree needed)."""
    target = scratch / f"rev-{revision}"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "bookmatch"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def measure(child: str, argv: list[str], code: Path, env: dict[str, str]) -> dict:
    full_env = dict(os.environ, PYTHONPATH=str(code), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **env)
    done = subprocess.run(
        [sys.executable, "-c", child, *argv], capture_output=True, text=True, env=full_env, cwd=str(code), check=False
    )
    if done.returncode != 0:
        sys.exit(f"measurement failed ({code}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def env_settings(values: list[str]) -> list[dict[str, str]]:
    settings = [dict(item.split("=", 1) for item in value.split(",")) for value in values]
    return settings or [{"TOKENIZERS_PARALLELISM": "false"}]


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="bench_stages_"))
    results = []
    try:
        miner, teacher = build_models(args, args.data, scratch)
        chunks_file = scratch / "chunks.json"
        chunks_file.write_text(json.dumps(chunk_lists(args.data, args.books)))
        versions = [("after", REPO)] + (
            [(f"before {args.before}", checkout(args.before, scratch))] if args.before else []
        )
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        for repeat in range(args.repeat):
            for env in env_settings(args.env):
                for stage in stages:
                    # alternate which version runs first, so drift in the machine's load falls on both
                    for label, code in versions if repeat % 2 == 0 else versions[::-1]:
                        out = scratch / f"out-{len(results)}"
                        if stage == "mining":
                            figures = measure(
                                _MINING_CHILD, [str(chunks_file), miner, str(args.batch_size), args.device], code, env
                            )
                        else:
                            figures = measure(
                                _TEACHER_CHILD,
                                [str(args.data), teacher, str(args.pairs), str(args.batch_size), str(out), args.device],
                                code,
                                env,
                            )
                        row = {"stage": stage, "version": label, "env": env, "repeat": repeat, **figures}
                        results.append(row)
                        unit = "chunks" if stage == "mining" else "pairs"
                        print(
                            f"{stage:<8} {label:<18} {','.join(f'{k}={v}' for k, v in env.items()):<34} "
                            f"{row['count']:>6,} {unit} in {row['seconds']:6.1f} s = {row['count'] / row['seconds']:8.1f} {unit}/s "
                            f"(cpu {row['cpu']:6.1f} s, {row['count'] / max(row['cpu'], 1e-9):8.1f} {unit}/cpu-s)",
                            flush=True,
                        )
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
