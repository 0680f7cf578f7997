"""Download Project Gutenberg books by ID: bounded concurrency, retries with backoff, atomic writes.

Each ID tries the mirror's URL layouts in turn (`cache/epub/{id}/pg{id}.txt`, `files/{id}/{id}-0.txt`,
`files/{id}/{id}.txt`); a 404 moves on to the next one. Timeouts, connection errors, 5xx answers and truncated
bodies (fewer bytes than Content-Length) are retried with exponential backoff and full jitter. A book lands as
`out/<author>/<title>.txt` (from its own header) through a temp file and a rename, so a failed or killed fetch
leaves nothing half-written; `out/.ingest_index.json` records ID -> file so a rerun skips what it has.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from bookmatch.ingest import IngestIndex, book_destination
from bookmatch.storage import atomic_write_text

URL_TEMPLATES = (
    "{mirror}/cache/epub/{id}/pg{id}.txt",
    "{mirror}/files/{id}/{id}-0.txt",
    "{mirror}/files/{id}/{id}.txt",
)


@dataclass
class GutenbergConfig:
    mirror: str = "https://www.gutenberg.org"
    concurrency: int = 8
    # Seconds one request may take from connect to last byte (a slow-drip server counts as a timeout).
    timeout: float = 60.0
    retries: int = 4
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    skip_existing: bool = True
    seed: int | None = None


@dataclass
class FetchReport:
    fetched: dict[int, Path] = field(default_factory=dict)
    skipped: dict[int, Path] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    retries: dict[int, int] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0


class _Retryable(Exception):
    """A transient failure: the same URL is worth another try."""


class _NotThere(Exception):
    """This URL does not have the book (404 and other client errors): try the next layout."""


class _Unusable(Exception):
    """The book was fetched but cannot be used (not text): no retry."""


def parse_ids(text: str) -> list[int]:
    """IDs from "1342,84 11" or a file's lines; '#' starts a comment."""
    from bookmatch.errors import InputError

    ids: list[int] = []
    for line in text.splitlines():
        for token in line.split("#", 1)[0].replace(",", " ").split():
            if not token.isdigit():
                raise InputError(f"not a Gutenberg ID: {token!r} (IDs are whole numbers like 1342)")
            ids.append(int(token))
    return list(dict.fromkeys(ids))


async def _get_once(client, url: str, timeout: float) -> bytes:
    import httpx

    async def attempt() -> bytes:
        async with client.stream("GET", url) as response:
            if response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                raise _NotThere(f"HTTP {response.status_code}")
            body = await response.aread()
            expected = response.headers.get("content-length")
            # Raw byte counts only compare when the server sent no content coding.
            if expected and expected.isdigit() and not response.headers.get("content-encoding"):
                if len(body) != int(expected):
                    raise _Retryable(f"truncated body ({len(body)} of {expected} bytes)")
            return body

    try:
        return await asyncio.wait_for(attempt(), timeout)
    except asyncio.TimeoutError as err:
        raise _Retryable(f"timed out after {timeout:g} s") from err
    except httpx.TimeoutException as err:
        raise _Retryable(f"timed out after {timeout:g} s") from err
    except httpx.TransportError as err:
        # Connection refused/reset, and a body cut before Content-Length (h11 raises RemoteProtocolError).
        raise _Retryable(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__) from err


async def _get_with_retries(client, url: str, config: GutenbergConfig, rng: random.Random) -> tuple[bytes, int]:
    """The body of `url` and the number of retries it took."""
    for attempt in range(config.retries + 1):
        try:
            return await _get_once(client, url, config.timeout), attempt
        except _Retryable as err:
            if attempt == config.retries:
                raise _Retryable(f"{err} (after {config.retries + 1} attempts)") from err
            # Full jitter: uniform over [0, capped exponential], so many clients do not retry in lockstep.
            await asyncio.sleep(rng.uniform(0, min(config.backoff_max, config.backoff_base * 2**attempt)))
    raise AssertionError("unreachable")


async def _fetch_text(client, ebook_id: int, config: GutenbergConfig, rng: random.Random) -> tuple[str, int]:
    from bookmatch.text.decode import UnreadableText, decode_bytes

    mirror = config.mirror.rstrip("/")
    misses: list[str] = []
    total_retries = 0
    for template in URL_TEMPLATES:
        url = template.format(mirror=mirror, id=ebook_id)
        try:
            body, retries = await _get_with_retries(client, url, config, rng)
        except _NotThere as err:
            misses.append(f"{url}: {err}")
            continue
        total_retries += retries
        try:
            return decode_bytes(body, source=url), total_retries
        except UnreadableText as err:
            raise _Unusable(str(err)) from err
    raise _NotThere(f"not found at any of {len(URL_TEMPLATES)} URLs ({misses[-1] if misses else 'no URL'})")


async def fetch_books_async(ids: Iterable[int], out_dir: str | Path, config: GutenbergConfig) -> FetchReport:
    import httpx

    from bookmatch.progress import progress
    from bookmatch.text.gutenberg import parse_header

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = IngestIndex(out)
    report = FetchReport()
    rng = random.Random(config.seed)
    semaphore = asyncio.Semaphore(max(1, config.concurrency))
    taken = index.taken_paths()
    start = time.perf_counter()

    todo: list[int] = []
    for ebook_id in dict.fromkeys(int(i) for i in ids):
        existing = index.existing(str(ebook_id)) if config.skip_existing else None
        if existing is not None:
            report.skipped[ebook_id] = existing
        else:
            todo.append(ebook_id)

    async def one(client, ebook_id: int) -> None:
        async with semaphore:
            try:
                text, retries = await _fetch_text(client, ebook_id, config, rng)
            except (_Retryable, _NotThere, _Unusable) as err:
                report.failed[ebook_id] = str(err)
                return
        report.retries[ebook_id] = retries
        meta = parse_header(text)
        previous = index.existing(str(ebook_id))
        if previous is not None:
            taken.discard(previous)
        path = book_destination(out, meta.author, meta.title or f"Gutenberg {ebook_id}", taken)
        taken.add(path)
        try:
            atomic_write_text(path, text)
            index.record(str(ebook_id), path)
        except OSError as err:
            report.failed[ebook_id] = f"cannot write {path}: {err.strerror or err}"
            return
        report.fetched[ebook_id] = path
        report.bytes += len(text.encode("utf-8"))

    limits = httpx.Limits(max_connections=max(1, config.concurrency))
    async with httpx.AsyncClient(
        follow_redirects=True, limits=limits, timeout=config.timeout,
        headers={"User-Agent": "bookmatch-ingest (+https://github.com/bookmatch)"},
    ) as client:
        tasks = [asyncio.ensure_future(one(client, ebook_id)) for ebook_id in todo]
        for task in progress(asyncio.as_completed(tasks), desc="fetch", total=len(tasks), unit="book"):
            await task
    report.seconds = time.perf_counter() - start
    return report


def fetch_books(ids: Iterable[int], out_dir: str | Path, config: GutenbergConfig | None = None) -> FetchReport:
    """Download the books `ids` into `out_dir` (see the module docstring); failures are in the report."""
    return asyncio.run(fetch_books_async(ids, out_dir, config or GutenbergConfig()))
