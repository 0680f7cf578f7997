"""Download Project Gutenberg books by ID: bounded concurrency, retries with backoff, atomic writes.

Each ID tries the mirror's URL layouts in turn (`cache/epub/{id}/pg{id}.txt`, `files/{id}/{id}-0.txt`,
`files/{id}/{id}.txt`); a 404 moves on to the next one. Timeouts, connection errors, 5xx answers and truncated
bodies (fewer bytes than Content-Length) are retried with exponential backoff and full jitter. A book lands as
`out/<author>/<title>.txt` (from its own header) through a temp file and a rename, so a failed or killed fetch
leaves nothing half-written; `out/.ingest_index.json` records ID -> file so a rerun skips what it has.

A hostile or broken server cannot hurt the run: the body is read raw and decompressed here, chunk by chunk, under
`max_book_bytes` (a gzip bomb stops at the cap); redirect loops, bad encodings and any other httpx error become
that ID's failure with a reason while the other IDs land; an HTML page is not a book; a file in `out` that the
index does not record is never overwritten (the book takes the next free name).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bookmatch.ingest import (
    IngestIndex,
    free_destination,
    sweep_ingest_leftovers,
    write_atomically,
)

DEFAULT_MAX_BOOK_BYTES = 128 * 1024 * 1024
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
    # Decoded bytes one answer may hold (128 MiB; the largest Gutenberg books are ~ 30 MB); larger answers are refused
    # while streaming, before decompression can grow past the cap.
    max_book_bytes: int = DEFAULT_MAX_BOOK_BYTES

    def check(self) -> None:
        """Refuse values that cannot work, in one line naming the setting (before any request is made)."""
        from bookmatch.errors import InputError

        check_mirror_url(self.mirror)
        for name, low in (("concurrency", 1), ("retries", 0), ("max_book_bytes", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name} must be a whole number >= {low}, got {value!r}")
        for name in ("timeout", "backoff_base", "backoff_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise InputError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if self.timeout == 0:
            raise InputError("timeout must be more than 0 seconds")


def check_mirror_url(url: object) -> str:
    """`url` if it is an http(s) URL with a host and a valid port; InputError saying what is wrong otherwise."""
    from urllib.parse import urlsplit

    from bookmatch.errors import InputError

    if not isinstance(url, str) or not url.strip():
        raise InputError(f"mirror must be an http(s) URL such as https://www.gutenberg.org, got {url!r}")
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # raises ValueError for a port outside 0-65535 or not a number
    except ValueError as err:
        raise InputError(f"mirror {url!r} is not a valid URL ({err})") from err
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"mirror {url!r} is not an http(s) URL with a host, e.g. https://www.gutenberg.org")
    if port == 0 or parts.query or parts.fragment or any(c.isspace() for c in url.strip()):
        raise InputError(f"mirror {url!r} is not a base URL (a port 1-65535, no query, fragment or spaces)")
    return url.strip()


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


class _NotText(_NotThere):
    """The URL answered with something that is not a book (an HTML page): try the next layout."""


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


# Content codings the body reader decompresses itself, chunk by chunk, under the size cap (httpx would inflate
# each network chunk whole first: 64 KB of a gzip bomb is 64 MB). Nothing else is asked for.
ACCEPT_ENCODING = "gzip, deflate"
_TAG = re.compile(rb"<(?:!doctype|/?[a-z][a-z0-9]*[\s>/])", re.IGNORECASE)
_HTML_START = re.compile(
    rb"\s*(?:<!doctype\s+html|<html|<head|<body|<\?xml[^>]*>\s*<(?:!doctype\s+)?html)", re.IGNORECASE
)


def _decompressor(encoding: str):
    """A zlib decompressor for a Content-Encoding value; None for identity; _Unusable for anything else."""
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip() and c.strip().lower() != "identity"]
    if not codings:
        return None
    if codings in (["gzip"], ["x-gzip"]):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if codings == ["deflate"]:
        return zlib.decompressobj()
    raise _Unusable(f"unsupported content encoding {encoding!r} (asked for {ACCEPT_ENCODING})")


def _too_big(max_bytes: int) -> _Unusable:
    return _Unusable(f"body larger than the {max_bytes:,}-byte cap (max_book_bytes); not fetched")


class _BodyReader:
    """Collects a body from raw network chunks, decompressing with a bound: never more than `max_bytes` decoded
    bytes exist, whatever the compression ratio (a 1 MB gzip that inflates to 1 GB stops at the cap)."""

    def __init__(self, encoding: str, max_bytes: int) -> None:
        self.decompressor = _decompressor(encoding)
        self.gzip = "gzip" in encoding.lower()
        self.max_bytes = max_bytes
        self.parts: list[bytes] = []
        self.size = 0
        self.raw_size = 0

    def _keep(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise _too_big(self.max_bytes)
        self.parts.append(data)

    def feed(self, raw: bytes) -> None:
        self.raw_size += len(raw)
        if self.raw_size > self.max_bytes:
            raise _too_big(self.max_bytes)
        if self.decompressor is None:
            return self._keep(raw)
        data = raw
        try:
            while data:
                # max_length bounds each step's output; what is left waits in unconsumed_tail
                self._keep(self.decompressor.decompress(data, self.max_bytes - self.size + 1))
                data = self.decompressor.unconsumed_tail
                if self.decompressor.eof and self.decompressor.unused_data:
                    data = self.decompressor.unused_data
                    if not data.strip(b"\0"):  # zero padding after the end, as gzip(1) tolerates
                        data = b""
                    elif self.gzip:  # gzip allows members one after another (RFC 1952), all under one cap
                        self.decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    else:
                        raise _Unusable("data after the end of the deflate body")
        except zlib.error as err:
            raise _Unusable(f"body claims a compressed content encoding but is not ({err})") from err

    def head(self, size: int) -> bytes:
        """The first `size` decoded bytes so far (without joining the whole body)."""
        pieces, have = [], 0
        for part in self.parts:
            if have >= size:
                break
            pieces.append(part[: size - have])
            have += len(pieces[-1])
        return b"".join(pieces)

    def finish(self) -> bytes:
        if self.decompressor is not None:
            try:
                self._keep(self.decompressor.flush())
            except zlib.error as err:
                raise _Unusable(f"compressed body is damaged ({err})") from err
            if not self.decompressor.eof:
                raise _Retryable("compressed body ends early (truncated download)")
        return b"".join(self.parts)


def looks_like_html(head: bytes) -> bool:
    """Does a body's first KB open like an HTML or XHTML page?"""
    return _HTML_START.match(head.removeprefix(b"\xef\xbb\xbf")[:1024]) is not None


def _refuse_html(content_type: str, head: bytes) -> None:
    """An HTML page (a mirror's error or login page sent with status 200) is not a book. The body decides: it opens
    like HTML, or the server calls it HTML and it holds tags (a plain-text book mislabelled text/html is kept)."""
    head = head.removeprefix(b"\xef\xbb\xbf")[:1024]
    if looks_like_html(head) or ("html" in content_type.lower() and _TAG.search(head)):
        raise _NotText(f"an HTML page (Content-Type {content_type or 'not given'}), not a plain-text book")


async def _get_once(client, url: str, config: GutenbergConfig) -> bytes:
    import httpx

    async def attempt() -> bytes:
        async with client.stream("GET", url) as response:
            if response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                raise _NotThere(f"HTTP {response.status_code}")
            if not 200 <= response.status_code < 300:
                raise _Unusable(f"unexpected HTTP {response.status_code}")
            expected = response.headers.get("content-length", "").strip()
            # Content-Length counts the bytes on the wire (compressed or not); a body over the cap is refused unread.
            if expected.isdigit() and int(expected) > config.max_book_bytes:
                raise _too_big(config.max_book_bytes)
            reader = _BodyReader(response.headers.get("content-encoding", ""), config.max_book_bytes)
            content_type = response.headers.get("content-type", "")
            looked = False
            async for raw in response.aiter_raw():
                reader.feed(raw)
                if not looked and reader.size >= 1024:  # an HTML page is refused before the rest is read
                    _refuse_html(content_type, reader.head(1024))
                    looked = True
            body = reader.finish()
            if expected.isdigit() and reader.raw_size != int(expected):
                raise _Retryable(f"truncated body ({reader.raw_size} of {expected} bytes)")
            _refuse_html(content_type, body[:1024])
            return body

    try:
        return await asyncio.wait_for(attempt(), config.timeout)
    except TimeoutError as err:
        raise _Retryable(f"timed out after {config.timeout:g} s") from err
    except httpx.TimeoutException as err:
        raise _Retryable(f"timed out after {config.timeout:g} s") from err
    except httpx.TransportError as err:
        if isinstance(err, (httpx.UnsupportedProtocol, httpx.ProxyError)):
            raise _Unusable(_describe(err)) from err
        # Connection refused/reset, and a body cut before Content-Length (h11 raises RemoteProtocolError).
        raise _Retryable(_describe(err)) from err
    except httpx.HTTPError as err:
        # Redirect loops, bad URLs, decoding errors: not worth a retry, and never the end of the whole run.
        raise _Unusable(_describe(err)) from err


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split())[:300]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


async def _get_with_retries(client, url: str, config: GutenbergConfig, rng: random.Random) -> tuple[bytes, int]:
    """The body of `url` and the number of retries it took."""
    for attempt in range(config.retries + 1):
        try:
            return await _get_once(client, url, config), attempt
        except _Retryable as err:
            if attempt == config.retries:
                raise _Retryable(f"{err} (after {config.retries + 1} attempts)") from err
            # Full jitter: uniform over [0, capped exponential], so many clients do not retry in lockstep.
            await asyncio.sleep(rng.uniform(0, min(config.backoff_max, config.backoff_base * 2**attempt)))
    raise AssertionError("unreachable")


async def _fetch_text(client, ebook_id: int, config: GutenbergConfig, rng: random.Random) -> tuple[str, int]:
    from bookmatch.text.decode import UnreadableText, decode_bytes

    mirror = config.mirror.strip().rstrip("/")
    misses: list[str] = []
    not_text: list[str] = []
    total_retries = 0
    for template in URL_TEMPLATES:
        url = template.format(mirror=mirror, id=ebook_id)
        try:
            body, retries = await _get_with_retries(client, url, config, rng)
        except _NotThere as err:
            (not_text if isinstance(err, _NotText) else misses).append(f"{url}: {err}")
            continue
        total_retries += retries
        try:
            return decode_bytes(body, source=url), total_retries
        except UnreadableText as err:
            raise _Unusable(str(err)) from err
    if not_text:  # a page that is not a book says more than a 404 beside it
        raise _Unusable(f"no plain-text book at any of {len(URL_TEMPLATES)} URLs ({not_text[-1]})")
    raise _NotThere(f"not found at any of {len(URL_TEMPLATES)} URLs ({misses[-1] if misses else 'no URL'})")


async def fetch_books_async(ids: Iterable[int], out_dir: str | Path, config: GutenbergConfig) -> FetchReport:
    import httpx

    from bookmatch.progress import progress

    config.check()
    out = _books_folder(out_dir)
    sweep_ingest_leftovers(out)
    index = IngestIndex(out)
    report = FetchReport()
    rng = random.Random(config.seed)
    semaphore = asyncio.Semaphore(config.concurrency)
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
            except Exception as err:  # noqa: BLE001 - one ID's surprise must not end the others' downloads
                report.failed[ebook_id] = f"unexpected error: {_describe(err)}"
                return
        report.retries[ebook_id] = retries
        _save(out, index, taken, report, ebook_id, text)

    limits = httpx.Limits(max_connections=config.concurrency)
    async with httpx.AsyncClient(
        follow_redirects=True,
        max_redirects=10,
        limits=limits,
        timeout=config.timeout,
        headers={"User-Agent": "bookmatch-ingest (+https://github.com/bookmatch)", "Accept-Encoding": ACCEPT_ENCODING},
    ) as client:
        tasks = [asyncio.ensure_future(one(client, ebook_id)) for ebook_id in todo]
        for task in progress(asyncio.as_completed(tasks), desc="fetch", total=len(tasks), unit="book"):
            await task
    report.seconds = time.perf_counter() - start
    return report


def _books_folder(out_dir: str | Path) -> Path:
    from bookmatch.errors import InputError
    from bookmatch.storage import os_reason

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the books folder {out}: {os_reason(err, out)}") from err
    return out


def _save(out: Path, index: IngestIndex, taken: set[Path], report: FetchReport, ebook_id: int, text: str) -> None:
    """Write one fetched book where its header says, never over a file ingest did not write."""
    from bookmatch.text.gutenberg import parse_header

    meta = parse_header(text)
    previous = index.existing(str(ebook_id))
    if previous is not None:
        taken.discard(previous)
    path = free_destination(out, meta.author, meta.title or f"Gutenberg {ebook_id}", taken, own=previous)
    taken.add(path)
    data = text.encode("utf-8")
    try:
        write_atomically(path, data)
        index.record(str(ebook_id), path)
    except OSError as err:
        report.failed[ebook_id] = f"cannot write {path}: {err.strerror or err}"
        return
    report.fetched[ebook_id] = path
    report.bytes += len(data)


def fetch_books(ids: Iterable[int], out_dir: str | Path, config: GutenbergConfig | None = None) -> FetchReport:
    """Download the books `ids` into `out_dir` (see the module docstring); failures are in the report."""
    return asyncio.run(fetch_books_async(ids, out_dir, config or GutenbergConfig()))
