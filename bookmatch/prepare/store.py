"""Chunk texts on disk: books stream into Parquet as they are scanned, and only the texts that end up in
pairs (or in the mining sample) are read back. Main-process memory then follows the size of the output,
not of the corpus.

One Parquet row per book: path, author, title, chunks (list of texts), chunk_starts, chunk_topics,
sentence_hashes, gram_shingles. Shard folders and the single-machine work folder use the same file, so both paths read
identical records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from bookmatch.prepare.records import BookRecord
from bookmatch.text.names import unicode_name

ROWS_PER_GROUP = 16
_META_COLUMNS = ["path", "author", "title", "chunk_starts", "chunk_topics", "sentence_hashes", "gram_shingles"]


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("author", pa.string()),
            ("title", pa.string()),
            ("chunks", pa.list_(pa.large_string())),
            ("chunk_starts", pa.list_(pa.int64())),
            ("chunk_topics", pa.list_(pa.string())),
            ("sentence_hashes", pa.list_(pa.uint64())),
            ("gram_shingles", pa.list_(pa.uint64())),
            ("removed", pa.string()),
        ]
    )


def _row_groups(path: str | Path, columns: list[str]):
    """Record batches of a Parquet file, one row group in memory at a time.

    pre_buffer=False: with Arrow's default read-ahead, iterating a file buffered all of it (measured: a 97 MB
    records file peaked at 110 MB of Arrow memory, 30 MB without), so memory grew with the corpus.
    """
    import pyarrow.parquet as pq

    return pq.ParquetFile(str(path), pre_buffer=False).iter_batches(
        batch_size=ROWS_PER_GROUP, columns=columns, use_threads=False
    )


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
        return BookRecord(
            record.path,
            record.author,
            record.title,
            None,
            record.chunk_starts,
            record.chunk_topics,
            record.sentence_hashes,
            gram_shingles=record.gram_shingles,
            removed=record.removed,
        )

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._pending:
            return
        rows = self._pending
        # Names read from disk may hold bytes that are not UTF-8 (surrogate escapes): Arrow strings cannot.
        self._writer.write_table(
            pa.table(
                {
                    "path": [unicode_name(r.path) for r in rows],
                    "author": [unicode_name(r.author) for r in rows],
                    "title": [unicode_name(r.title) for r in rows],
                    "chunks": [r.chunks for r in rows],
                    "chunk_starts": [r.chunk_starts for r in rows],
                    "chunk_topics": [r.chunk_topics for r in rows],
                    "sentence_hashes": [np.asarray(r.sentence_hashes, dtype=np.uint64) for r in rows],
                    "gram_shingles": [np.asarray(r.gram_shingles, dtype=np.uint64) for r in rows],
                    "removed": [json.dumps(r.removed, sort_keys=True) for r in rows],
                },
                schema=_schema(),
            )
        )
        self._pending = []

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _column_names(path: str | Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.ParquetFile(str(path)).schema_arrow.names


def read_records(path: str | Path, with_texts: bool = False) -> list[BookRecord]:
    """The records of one Parquet file; chunk texts only when `with_texts`."""
    columns = _META_COLUMNS + (["chunks"] if with_texts else [])
    if "removed" in _column_names(path):  # records files written before the removal counts have none
        columns = columns + ["removed"]
    records = []
    for batch in _row_groups(path, columns):
        data = batch.to_pydict() if with_texts else {n: batch.column(n) for n in columns}
        for row in range(batch.num_rows):
            if with_texts:
                get = lambda name: data[name][row]  # noqa: E731
                as_hashes = lambda name: np.asarray(data[name][row], dtype=np.uint64)  # noqa: E731
            else:
                get = lambda name: data[name][row].as_py()  # noqa: E731
                as_hashes = lambda name: np.asarray(  # noqa: E731
                    data[name][row].values.to_numpy(zero_copy_only=False), dtype=np.uint64
                )
            records.append(
                BookRecord(
                    path=get("path"),
                    author=get("author"),
                    title=get("title"),
                    chunks=get("chunks") if with_texts else None,
                    chunk_starts=get("chunk_starts"),
                    chunk_topics=get("chunk_topics"),
                    sentence_hashes=as_hashes("sentence_hashes"),
                    gram_shingles=as_hashes("gram_shingles"),
                    removed=json.loads(get("removed") or "{}") if "removed" in columns else {},
                )
            )
    return records


class ChunkStore:
    """Reads chunk texts by (book path, stored chunk position) from one or more record files."""

    def __init__(self, files: Iterable[str | Path]) -> None:
        self.files = [Path(f) for f in files]

    def iter_texts(self, wanted: dict[str, set[int]]) -> Iterator[tuple[str, int, str]]:
        """(book path, stored position, text) for every wanted chunk, in file order, one row group at a time."""
        for file in self.files:
            for batch in _row_groups(file, ["path", "chunks"]):
                paths = batch.column("path").to_pylist()
                chunks = batch.column("chunks")
                for row, path in enumerate(paths):
                    positions = wanted.get(path)
                    if not positions:
                        continue
                    book_chunks = chunks[row].values
                    for position in sorted(positions):
                        yield path, position, book_chunks[position].as_py()

    def fetch(self, wanted: dict[str, set[int]]) -> dict[tuple[str, int], str]:
        texts = {(path, position): text for path, position, text in self.iter_texts(wanted)}
        missing = sum(len(p) for p in wanted.values()) - len(texts)
        if missing:
            raise RuntimeError(f"{missing} wanted chunk texts are missing from {', '.join(map(str, self.files))}")
        return texts


class TextTable:
    """Chosen chunk texts spilled to an Arrow file and read back memory-mapped.

    Keys are (book index, chunk index) pairs; `row(keys)` maps them to rows with two sorted int64 arrays (16 bytes
    a text, where a dict of tuples costs ~150), and `texts` is a memory-mapped Arrow column: the page cache holds
    the texts, not the heap, so the process stays small however many texts a large corpus chooses.
    """

    _BATCH = 4096

    def __init__(self, items: Iterable[tuple[int, int, str]], path: str | Path) -> None:
        import pyarrow as pa

        self.path = Path(path)
        schema = pa.schema([("text", pa.large_string())])
        keys: list[int] = []
        buffer: list[str] = []
        with pa.OSFile(str(self.path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for book, chunk, text in items:
                keys.append(text_key(book, chunk))
                buffer.append(text)
                if len(buffer) >= self._BATCH:
                    writer.write_batch(pa.record_batch([pa.array(buffer, pa.large_string())], schema=schema))
                    buffer = []
            if buffer:
                writer.write_batch(pa.record_batch([pa.array(buffer, pa.large_string())], schema=schema))
        key_array = np.asarray(keys, dtype=np.int64)
        self._order = np.argsort(key_array, kind="stable")
        self._sorted_keys = key_array[self._order]
        if len(self._sorted_keys) > 1 and (np.diff(self._sorted_keys) == 0).any():
            raise ValueError("a chunk was spilled twice")
        # Kept as the file's record batches: combining them, or a take over the chunked column (Arrow
        # concatenates its chunks first), would copy every text out of the map onto the heap.
        self._batches = pa.ipc.open_file(pa.memory_map(str(self.path))).read_all().column("text").chunks
        self._batch_starts = np.cumsum([0] + [len(b) for b in self._batches])

    def __len__(self) -> int:
        return len(self._sorted_keys)

    def rows(self, keys: Sequence[int]) -> np.ndarray:
        """Row numbers of `text_key(book, chunk)` keys; KeyError for a key that was never spilled."""
        query = np.asarray(keys, dtype=np.int64)
        if len(query) == 0:
            return np.zeros(0, dtype=np.int64)
        found = np.minimum(np.searchsorted(self._sorted_keys, query), max(len(self._sorted_keys) - 1, 0))
        if len(self._sorted_keys) == 0 or (self._sorted_keys[found] != query).any():
            raise KeyError("chunk texts missing from the text table")
        return self._order[found]

    def take(self, keys: Sequence[int]):
        """The texts of `keys` as an Arrow array (copied out of the map for these rows only)."""
        import pyarrow as pa

        rows = self.rows(keys)
        if len(rows) == 0:
            return pa.array([], pa.large_string())
        batch_of = np.searchsorted(self._batch_starts, rows, side="right") - 1
        order = np.argsort(batch_of, kind="stable")
        batches, firsts = np.unique(batch_of[order], return_index=True)
        pieces = []
        for batch, first, end in zip(batches.tolist(), firsts.tolist(), [*firsts[1:].tolist(), len(order)]):
            local = rows[order[first:end]] - self._batch_starts[batch]
            pieces.append(self._batches[batch].take(pa.array(local, type=pa.int64())))
        # pieces hold the rows in `order`; put them back in the order asked for
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return pa.concat_arrays(pieces).take(pa.array(inverse, type=pa.int64()))

    def book_texts(self, book: int, chunks: Sequence[int]) -> list[str]:
        return self.take([text_key(book, c) for c in chunks]).to_pylist()


def text_key(book: int, chunk: int) -> int:
    """One int64 per (book index, chunk index)."""
    return book * (1 << 32) + chunk
