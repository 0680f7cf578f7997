"""`bookmatch prepare`: books -> passage-pair DatasetDict (train/validation/test) + manifest.json."""

from __future__ import annotations

from pathlib import Path

from bookmatch.prepare.config import PrepareConfig

__all__ = ["PrepareConfig", "run_prepare"]


def run_prepare(config: PrepareConfig) -> Path:
    """Scan every book in-process (with a worker pool), then the same steps 4-8 as `merge_shards`.

    Chunk texts stream to a Parquet file in a work folder beside `out` (removed at the end), exactly as a
    shard stores them, so the in-process run and the sharded run read identical records.
    """
    import shutil
    import tempfile

    from bookmatch.errors import InputError
    from bookmatch.prepare.build import build_dataset
    from bookmatch.prepare.scan import find_book_files
    from bookmatch.prepare.shards import RECORDS_FILE, scan_books
    from bookmatch.prepare.store import ChunkStore, RecordWriter
    from bookmatch.progress import Timer

    if not config.books or not config.out:
        raise InputError("prepare needs both --books DIR and --out DIR")
    root, out = Path(config.books), Path(config.out)
    files = find_book_files(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.work-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))
    try:
        timer = Timer()
        with timer.stage("scan"), RecordWriter(work / RECORDS_FILE) as writer:
            records, skipped = scan_books(files, root, config, writer)
        return build_dataset(records, skipped, len(files), config, out, timer, ChunkStore([work / RECORDS_FILE]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
