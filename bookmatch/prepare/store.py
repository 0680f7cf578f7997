"""Chunk texts on disk: books stream into Parquet as they are scanned, and only the texts that end up in
pairs (or in the mining sample) are read back. Main-process memory then follows the size of the output,
not of the corpus.

One Parquet row per book: path, author, title, chunks (list of texts), chunk_starts, chunk_topics,
sentence_hashes. Shard folders and the single-machine work folder use the same file, so both paths read
identical records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from bookmatch.prepare.records import BookRecord

ROWS_PER_GROUP = 16
_META_COLUMNS = ["path", "author", "title", "chunk_starts", "chunk_topics", "sentence_hashes"]


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("path", pa.string()), ("author", pa.string()), ("title", pa.string()),
        ("chunks", pa.list_(pa.large_string())), ("chunk_starts", pa.list_(pa.int64())),
        ("chunk_topics", pa.list_(pa.string())), ("sentence_hashes", pa.list_(pa.uint64())),
    ])


class RecordWriter:
    """Append BookRecords to a Parquet file in row groups; `add` returns the record without its texts."""

    def __init__(self, path: str | Path) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        self._writer = pq.ParquetWriter(str(self.path), _schema())
        self._pending: list[BookRecord] = []

    def add(self, record: BookRecord) -> BookRecord:
        self._pending.append(record)
        if len(self._pending) >= ROWS_PER_GROUP:
            self._flush()
        return BookRecord(record.path, record.author, record.title, None, record.chunk_starts,
                          record.chunk_topics, record.sentence_hashes)

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._pending:
            return
        rows = self._pending
        self._writer.write_table(pa.table({
            "path": [r.path for r in rows], "author": [r.author for r in rows], "title": [r.title for r in rows],
            "chunks": [r.chunks for r in rows], "chunk_starts": [r.chunk_starts for r in rows],
            "chunk_topics": [r.chunk_topics for r in rows],
            "sentence_hashes": [np.asarray(r.sentence_hashes, dtype=np.uint64) for r in rows],
        }, schema=_schema()))
        self._pending = []

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_records(path: str | Path, with_texts: bool = False) -> list[BookRecord]:
    """The records of one Parquet file; chunk texts only when `with_texts`."""
    import pyarrow.parquet as pq

    columns = _META_COLUMNS + (["chunks"] if with_texts else [])
    records = []
    for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=ROWS_PER_GROUP, columns=columns):
        data = batch.to_pydict() if with_texts else {n: batch.column(n) for n in columns}
        for row in range(batch.num_rows):
            if with_texts:
                hashes = np.asarray(data["sentence_hashes"][row], dtype=np.uint64)
                get = lambda name: data[name][row]  # noqa: E731
            else:
                hashes = np.asarray(data["sentence_hashes"][row].values.to_numpy(zero_copy_only=False), dtype=np.uint64)
                get = lambda name: data[name][row].as_py()  # noqa: E731
            records.append(BookRecord(
                path=get("path"), author=get("author"), title=get("title"),
                chunks=get("chunks") if with_texts else None,
                chunk_starts=get("chunk_starts"), chunk_topics=get("chunk_topics"), sentence_hashes=hashes,
            ))
    return records


class ChunkStore:
    """Reads chunk texts by (book path, stored chunk position) from one or more record files."""

    def __init__(self, files: Iterable[str | Path]) -> None:
        self.files = [Path(f) for f in files]

    def fetch(self, wanted: dict[str, set[int]]) -> dict[tuple[str, int], str]:
        import pyarrow.parquet as pq

        texts: dict[tuple[str, int], str] = {}
        for file in self.files:
            for batch in pq.ParquetFile(str(file)).iter_batches(batch_size=ROWS_PER_GROUP, columns=["path", "chunks"]):
                paths = batch.column("path").to_pylist()
                chunks = batch.column("chunks")
                for row, path in enumerate(paths):
                    positions = wanted.get(path)
                    if not positions:
                        continue
                    book_chunks = chunks[row].values
                    for position in positions:
                        texts[(path, position)] = book_chunks[position].as_py()
        missing = sum(len(p) for p in wanted.values()) - len(texts)
        if missing:
            raise RuntimeError(f"{missing} wanted chunk texts are missing from {', '.join(map(str, self.files))}")
        return texts
