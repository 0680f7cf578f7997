"""Load benchmark of `bookmatch serve` against `bookmatch infer --input` batch mode, on the same pairs, loopback only.

Batch mode: `bookmatch infer contrastive --input PAIRS --output ...` in a subprocess; its own summary line gives
the scoring time (model loading left out). Service: `bookmatch serve` in a subprocess on 127.0.0.1 with the
embedding cache off (so every level does the work batch mode does); for each client count N, N concurrent
clients send one-pair requests until every pair was sent once or the time bound passes. Reports pairs/s, p50/p99
latency, errors, and the server's resident memory before and after.

    python scripts/bench_serve.py --pairs 128 --clients 1 8 32 [--model BI/final] [--out bench_serve.json]

Without --model, a bi-encoder on all-MiniLM-L6-v2 with the cpu-small preset's shape (128-token windows, lexical
and names signatures) is built in a temp folder: untrained heads score at the same speed as trained ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
PAIRS_FILE = REPO.parent / "shared" / "corpus" / "validation_pairs.jsonl"


def build_model(out: Path) -> Path:
    from bookmatch.models.bi_encoder import BiEncoder

    model = BiEncoder.from_backbone(
        "sentence-transformers/all-MiniLM-L6-v2",
        max_seq_length=128,
        lexical_buckets=4096,
        lexical_top_k=64,
        name_top_k=32,
        pooled_cosine=True,
    )
    model.save_pretrained(out)
    return out


def load_pairs(n: int) -> list[dict[str, str]]:
    rows = []
    with open(PAIRS_FILE, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            rows.append({"text1": row["text1"], "text2": row["text2"]})
            if len(rows) == n:
                break
    return rows


def env() -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        HF_HUB_OFFLINE="1",
        NO_PROXY="127.0.0.1",
        no_proxy="127.0.0.1",
    )


def batch_mode(model: Path, pairs_path: Path, out_dir: Path, precision: str) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bookmatch",
            "infer",
            "contrastive",
            "--model",
            str(model),
            "--input",
            str(pairs_path),
            "--output",
            str(out_dir / "batch.jsonl"),
            "--precision",
            precision,
        ],
        capture_output=True,
        text=True,
        env=env(),
        timeout=3600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"batch mode failed:\n{proc.stderr[-3000:]}")
    match = re.search(r"infer: scored: ([\d,]+) pairs in ([\d.]+) s", proc.stderr)
    pairs, seconds = int(match.group(1).replace(",", "")), float(match.group(2))
    return {"pairs": pairs, "seconds": seconds, "pairs_per_s": round(pairs / seconds, 2)}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def load_level(url: str, pairs: list[dict], clients: int, max_seconds: float) -> dict:
    queue = list(reversed(pairs))
    latencies, errors = [], 0
    deadline = time.perf_counter() + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while queue and time.perf_counter() < deadline:
            pair = queue.pop()
            start = time.perf_counter()
            try:
                answer = await http.post(f"{url}/v1/score", json={"pairs": [pair]})
                ok = answer.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - start
    done = len(latencies)
    return {
        "clients": clients,
        "requests": done,
        "errors": errors,
        "seconds": round(seconds, 2),
        "pairs_per_s": round((done - errors) / seconds, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_levels(model: Path, pairs: list[dict], levels: list[int], args, out_dir: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(out_dir / "server.log", "w", encoding="utf-8")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bookmatch",
            "serve",
            "--model",
            str(model),
            "--port",
            str(port),
            "--precision",
            args.precision,
            "--cache-size",
            "0",
            "--max-wait-ms",
            str(args.max_wait_ms),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env(),
    )
    try:
        deadline = time.time() + 600
        while True:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the server did not start; see {out_dir / 'server.log'}")
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        memory_before = rss_mb(proc.pid)
        results = [asyncio.run(load_level(url, pairs, n, args.max_seconds)) for n in levels]
        memory_after = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()
    return {"levels": results, "server_rss_mb_before": memory_before, "server_rss_mb_after": memory_after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", type=Path, default=None, help="bi-encoder final/ folder [default: untrained MiniLM heads]"
    )
    parser.add_argument("--pairs", type=int, default=128, help="pairs per level (from validation_pairs.jsonl)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-seconds", type=float, default=300.0, help="time bound per level")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        tmp = Path(tmp)
        model = args.model or build_model(tmp / "model" / "final")
        pairs = load_pairs(args.pairs)
        pairs_path = tmp / "pairs.jsonl"
        pairs_path.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
        report = {
            "pairs": len(pairs),
            "model": str(args.model or "all-MiniLM-L6-v2, untrained heads"),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        }
        report["batch_mode"] = batch_mode(model, pairs_path, tmp, args.precision)
        print(json.dumps({"batch_mode": report["batch_mode"]}), flush=True)
        report["service"] = service_levels(model, pairs, args.clients, args, tmp)
        best = report["service"]["levels"][-1]
        report["service_vs_batch"] = round(best["pairs_per_s"] / report["batch_mode"]["pairs_per_s"], 3)
        report["load_average_after"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
