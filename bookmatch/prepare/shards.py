"""Sharded prepare: N machines scan every N-th book into `shard-0000i-of-0000N/`, one machine merges.

A shard folder holds `books.parquet` (one row per book: chunks, chunk starts, topics, sentence hashes),
`manifest.json` and, written last, a commit (`COMMIT.json`, bookmatch.artifacts): merge takes only shards that
verify, so a shard whose manifest reached a bucket before its parquet (no atomic rename there) is waited for. Each manifest carries a
fingerprint of the whole book list: a rerun over other books (or another shard count) in the same folder leaves
the earlier run's shards in place until its own replace them, and merge takes only shards of the newest run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from pathlib import Path

from bookmatch.artifacts import verify, write_commit
from bookmatch.config import config_to_dict
from bookmatch.errors import BookmatchError, InputError
from bookmatch.prepare.config import PrepareConfig
from bookmatch.prepare.records import BookRecord
from bookmatch.prepare.scan import ChunkingOptions, find_book_files, iter_book_records
from bookmatch.prepare.store import ChunkStore, RecordWriter, read_records
from bookmatch.progress import Timer, progress, summary_line
from bookmatch.storage import atomic_directory, atomic_write_json, read_json

log = logging.getLogger(__name__)

RECORDS_FILE = "books.parquet"
_SHARD_NAME = re.compile(r"^shard-(\d{5})-of-(\d{5})$")


def shard_name(shard_index: int, num_shards: int) -> str:
    return f"shard-{shard_index:05d}-of-{num_shards:05d}"


def chunking_options(config: PrepareConfig) -> ChunkingOptions:
    return ChunkingOptions(
        chunk_size=config.chunk_size,
        overlap=config.overlap,
        max_chunks_per_book=config.max_chunks_per_book,
        splitter=config.splitter,
        shingle_min_words=config.shingle_min_words,
        gram_words=config.gram_words,
        gram_keep_one_in=config.gram_keep_one_in,
        seed=config.seed,
    )


def scan_books(
    files: list[Path], root: Path, config: PrepareConfig, writer: RecordWriter | None = None
) -> tuple[list[BookRecord], list[dict[str, str]]]:
    """Load and chunk `files` with `config.workers` processes; (records, skipped) in file order.

    With a `writer`, each book's chunk texts go to disk as it arrives and the returned records carry none.
    """
    records: list[BookRecord] = []
    skipped: list[dict[str, str]] = []
    started = time.perf_counter()
    chunks = 0
    results = iter_book_records(files, root, chunking_options(config), config.workers)
    for result in progress(results, desc="books", total=len(files), unit="book"):
        if isinstance(result, BookRecord):
            chunks += result.num_chunks
            records.append(writer.add(result) if writer is not None else result)
        else:
            skipped.append({"path": result[0], "reason": result[1]})
    log.info(
        summary_line(
            f"scanned books ({chunks:,} chunks, {len(skipped)} skipped)",
            len(files),
            time.perf_counter() - started,
            "books",
        )
    )
    return records, skipped


def books_fingerprint(files: list[Path], root: Path) -> str:
    """SHA-256 of the sorted book list (path under `root`, size): the shards of one run agree on it."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(
            f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode("utf-8", "surrogateescape")
        )
    return digest.hexdigest()


def prepare_shard(
    books: str | Path, shards_dir: str | Path, shard_index: int, num_shards: int, config: PrepareConfig
) -> Path:
    """Scan the books `i % num_shards == shard_index` of the sorted list into one shard folder."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise InputError(
            f"shard index {shard_index} is not in 0..{num_shards - 1}: pass 0 <= --shard-index < --num-shards"
        )
    root = Path(books)
    files = find_book_files(root)
    mine = files[shard_index::num_shards]
    timer = Timer()
    target = Path(shards_dir) / shard_name(shard_index, num_shards)
    with atomic_directory(target) as tmp:
        with timer.stage("scan"), RecordWriter(tmp / RECORDS_FILE) as writer:
            records, skipped = scan_books(mine, root, config, writer)
        atomic_write_json(
            tmp / "manifest.json",
            {
                "shard_index": shard_index,
                "num_shards": num_shards,
                "books_found_total": len(files),
                "books_fingerprint": books_fingerprint(files, root),
                "created": time.time(),
                "books_in_shard": len(mine),
                "books_used": len(records),
                "skipped": skipped,
                "chunking": dataclasses.asdict(chunking_options(config)),
                "config": config_to_dict(config),
                "timings": timer.timings,
                "complete": True,
            },
        )
        write_commit(tmp, meta={"kind": "prepare-shard", "shard_index": shard_index, "num_shards": num_shards})
    return target


def _complete_shards(shards_dir: Path) -> list[tuple[Path, dict]]:
    found = []
    for folder in sorted(shards_dir.glob("shard-*-of-*")):
        if not _SHARD_NAME.match(folder.name):
            continue
        verdict = verify(folder)
        if not verdict or "manifest.json" not in verdict.files or RECORDS_FILE not in verdict.files:
            log.debug("shard %s not complete: %s", folder, verdict.reason or "its commit lists no manifest/records")
            continue
        manifest = read_json(folder / "manifest.json")
        if manifest.get("complete"):
            found.append((folder, manifest))
    return found


def _run_of(manifest: dict) -> tuple[int, str | None]:
    return int(manifest["num_shards"]), manifest.get("books_fingerprint")


def wait_for_shards(
    shards_dir: str | Path, wait_timeout: float = 0.0, poll_interval: float = 5.0
) -> list[tuple[Path, dict]]:
    """All N shards of the newest run (N, and the book list, read from the newest shard manifest), polling up
    to `wait_timeout` seconds for the rest. Shards of an earlier run over other books or another N are ignored:
    on a rerun they are the ones its nodes are about to replace."""
    shards_dir = Path(shards_dir)
    deadline = time.monotonic() + wait_timeout
    while True:
        found = _complete_shards(shards_dir) if shards_dir.is_dir() else []
        missing: list[int] = []
        stale: list[str] = []
        if found:
            run = _run_of(max(found, key=lambda shard: shard[1].get("created", 0.0))[1])
            current = {int(m["shard_index"]): (folder, m) for folder, m in found if _run_of(m) == run}
            stale = [folder.name for folder, m in found if _run_of(m) != run]
            missing = [i for i in range(run[0]) if i not in current]
            if not missing:
                if stale:
                    log.warning(
                        "ignoring %d shard(s) of an earlier run over other books or another shard count: %s",
                        len(stale),
                        ", ".join(stale[:5]),
                    )
                return [current[i] for i in range(run[0])]
        if time.monotonic() >= deadline:
            what = f"shards {missing[:10]} missing" if missing else "no complete shard found"
            if stale:
                what += (
                    f" ({len(stale)} shard(s) there are from an earlier run over other books or another shard count)"
                )
            raise BookmatchError(
                f"{what} in {shards_dir} after waiting {wait_timeout:.0f} s: "
                "run `bookmatch prepare shard` for them or raise --wait-timeout"
            )
        log.info("waiting for shards %s in %s", missing[:10] or "(none yet)", shards_dir)
        time.sleep(min(poll_interval, max(deadline - time.monotonic(), 0.01)))


def merge_shards(
    shards_dir: str | Path,
    out: str | Path,
    config: PrepareConfig,
    wait_timeout: float = 0.0,
    poll_interval: float = 5.0,
) -> Path:
    """Wait for every shard, then run dedup, mining, splits, pairs and save (steps 4-8) on their books."""
    from bookmatch.prepare.build import build_dataset

    timer = Timer()
    with timer.stage("wait"):
        shards = wait_for_shards(shards_dir, wait_timeout, poll_interval)
    expected = dataclasses.asdict(chunking_options(config))
    records: list[BookRecord] = []
    skipped: list[dict[str, str]] = []
    with timer.stage("read_shards"):
        for folder, manifest in shards:
            if manifest["chunking"] != expected:
                raise InputError(
                    f"shard {folder} was chunked with {manifest['chunking']}, but merge is configured with {expected}: "
                    "pass the same chunking options (or --config) to shard and merge"
                )
            records.extend(read_records(folder / RECORDS_FILE))
            skipped.extend(manifest["skipped"])
    books_found = shards[0][1]["books_found_total"]
    store = ChunkStore(folder / RECORDS_FILE for folder, _ in shards)
    return build_dataset(records, skipped, books_found, config, out, timer, store)
