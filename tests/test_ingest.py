"""`bookmatch ingest`: the async Gutenberg fetcher against a faulty local HTTP server, and folder import."""

from __future__ import annotations

import http.server
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from bookmatch.cli import main
from bookmatch.ingest import INDEX_NAME, IngestIndex, book_destination, safe_name
from bookmatch.ingest.folder import import_folder
from bookmatch.ingest.gutenberg import GutenbergConfig, fetch_books, parse_ids
from bookmatch.text.decode import decode_bytes
from bookmatch.text.gutenberg import parse_header

SLOW, FLAKY, CUT, MISSING, FALLBACK, BROKEN, GZIP = 101, 102, 103, 104, 105, 106, 107
# Hostile answers: a gzip bomb, a redirect loop, a body that claims gzip and is not, an HTML page with status 200,
# a well-formed gzip-encoded book (the control: compression itself is fine).
BOMB, LOOP, FAKE_GZIP, HTML, GZIP_OK = 201, 202, 203, 204, 205
# The client timeout leaves room for a loaded test machine; the slow answer is well past it.
TIMEOUT, SLOW_SECONDS = 1.0, 2.5


def _small_books(corpus_dir: Path, count: int) -> list[bytes]:
    """Small corpus books whose header names a title and an author (read at test time, never stored)."""
    books = []
    for path in sorted((corpus_dir / "books").rglob("*.txt"), key=lambda p: p.stat().st_size):
        data = path.read_bytes()
        meta = parse_header(decode_bytes(data))
        if meta.title and meta.author and "/" not in meta.title and len(meta.title) < 80:
            books.append(data)
        if len(books) == count:
            return books
    raise AssertionError("corpus has too few small books with headers")


class FaultyMirror:
    """A real HTTP server on 127.0.0.1 serving books by ID, with scripted faults per ID."""

    def __init__(self, books: dict[int, bytes]) -> None:
        self.books = books
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                with mirror.lock:
                    mirror.requests[self.path] += 1
                    seen = mirror.requests[self.path]
                mirror.answer(self, seen)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def requests_for(self, ebook_id: int) -> int:
        return sum(n for path, n in self.requests.items() if re.search(rf"/{ebook_id}/", path))

    def answer(self, handler, seen: int) -> None:
        match = re.fullmatch(r"/cache/epub/(\d+)/pg\d+\.txt|/files/(\d+)/\d+(-0)?\.txt", handler.path)
        if not match:
            return self.send(handler, 404, b"no such path")
        ebook_id = int(match.group(1) or match.group(2))
        first_layout = match.group(1) is not None
        body = self.books.get(ebook_id)
        if body is None or ebook_id == MISSING:
            return self.send(handler, 404, b"not found")
        if ebook_id == FALLBACK and first_layout:
            return self.send(handler, 404, b"not in the cache layout")
        if ebook_id == SLOW and seen == 1:
            time.sleep(SLOW_SECONDS)  # past the client's timeout once, then fine
        if ebook_id == FLAKY and seen <= 2:
            return self.send(handler, 500, b"server error")
        if ebook_id == BROKEN:
            return self.send(handler, 503, b"always down")
        if ebook_id == LOOP:
            handler.send_response(302)
            handler.send_header("Location", handler.path)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if ebook_id in (BOMB, FAKE_GZIP, GZIP_OK):
            return self.send(handler, 200, body, encoding="gzip")
        if ebook_id == HTML:
            return self.send(handler, 200, body, content_type="text/html; charset=utf-8")
        if ebook_id == CUT and seen <= 2:
            # Promise more bytes than are sent, then close: a truncated download.
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return
        return self.send(handler, 200, body)

    @staticmethod
    def send(
        handler, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", encoding: str | None = None
    ) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Length", str(len(body)))
            handler.send_header("Content-Type", content_type)
            if encoding:
                handler.send_header("Content-Encoding", encoding)
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout); that is the point of the slow case

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def mirror(corpus_dir):
    import gzip

    books = _small_books(corpus_dir, 5)
    served = {
        SLOW: books[0],
        FLAKY: books[1],
        CUT: books[2],
        FALLBACK: books[3],
        BROKEN: books[4],
        GZIP: gzip.compress(books[4]),
    }
    with FaultyMirror(served) as server:
        server.expected = {i: parse_header(decode_bytes(b)) for i, b in served.items() if i != GZIP}
        yield server


def _config(mirror: FaultyMirror, **overrides) -> GutenbergConfig:
    values = dict(
        mirror=mirror.url, concurrency=4, timeout=TIMEOUT, retries=3, backoff_base=0.01, backoff_max=0.05, seed=0
    )
    values.update(overrides)
    return GutenbergConfig(**values)


def test_fetch_survives_faults_and_reports_failures(mirror, tmp_path):
    out = tmp_path / "books"
    ids = [SLOW, FLAKY, CUT, MISSING, FALLBACK, BROKEN, GZIP]
    report = fetch_books(ids, out, _config(mirror))

    assert set(report.fetched) == {SLOW, FLAKY, CUT, FALLBACK}
    for ebook_id, path in report.fetched.items():
        meta = mirror.expected[ebook_id]
        assert path == book_destination(out, meta.author, meta.title, taken=set())
        assert path.read_text(encoding="utf-8") == decode_bytes(mirror.books[ebook_id])
    assert report.retries[SLOW] >= 1 and report.retries[FLAKY] == 2 and report.retries[CUT] == 2
    assert report.retries[FALLBACK] == 0
    assert mirror.requests[f"/cache/epub/{FLAKY}/pg{FLAKY}.txt"] == 3
    assert mirror.requests[f"/cache/epub/{FALLBACK}/pg{FALLBACK}.txt"] == 1
    assert mirror.requests[f"/files/{FALLBACK}/{FALLBACK}-0.txt"] == 1

    assert set(report.failed) == {MISSING, BROKEN, GZIP}
    assert "not found" in report.failed[MISSING] and "404" in report.failed[MISSING]
    assert "HTTP 503" in report.failed[BROKEN] and "4 attempts" in report.failed[BROKEN]
    assert mirror.requests[f"/cache/epub/{BROKEN}/pg{BROKEN}.txt"] == 4
    assert "gzip" in report.failed[GZIP]

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted([INDEX_NAME] + [p.relative_to(out).as_posix() for p in report.fetched.values()])
    index = IngestIndex(out)
    assert {int(k) for k in index.entries} == set(report.fetched)


def test_fetch_skips_ids_already_fetched(mirror, tmp_path):
    out = tmp_path / "books"
    first = fetch_books([FLAKY, FALLBACK], out, _config(mirror))
    assert set(first.fetched) == {FLAKY, FALLBACK}
    before = mirror.requests_for(FLAKY) + mirror.requests_for(FALLBACK)
    again = fetch_books([FLAKY, FALLBACK], out, _config(mirror))
    assert again.fetched == {} and again.skipped == first.fetched
    assert mirror.requests_for(FLAKY) + mirror.requests_for(FALLBACK) == before
    # A file removed by hand is fetched again; --no-skip-existing refetches into the same place.
    first.fetched[FALLBACK].unlink()
    third = fetch_books([FLAKY, FALLBACK], out, _config(mirror))
    assert set(third.fetched) == {FALLBACK} and set(third.skipped) == {FLAKY}
    forced = fetch_books([FLAKY], out, _config(mirror, skip_existing=False))
    assert forced.fetched == {FLAKY: first.fetched[FLAKY]}


def test_cli_gutenberg_exit_code_and_summary(mirror, tmp_path):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"# two books\n{FALLBACK}\n{MISSING}  # gone\n", encoding="utf-8")
    out = tmp_path / "books"
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "ingest",
            "gutenberg",
            "--ids",
            str(FLAKY),
            "--ids-file",
            str(ids_file),
            "--out",
            str(out),
            "--mirror",
            mirror.url,
            "--timeout",
            str(TIMEOUT),
            "--retries",
            "3",
        ],
    )
    assert result.exit_code == 1, result.output
    assert f"{MISSING}: not found" in result.output
    assert "fetched: 2 books" in result.output and "1 failed" in result.output
    ok = runner.invoke(
        main, ["ingest", "gutenberg", "--ids", f"{FLAKY},{FALLBACK}", "--out", str(out), "--mirror", mirror.url]
    )
    assert ok.exit_code == 0, ok.output
    assert "already fetched, skipped: 2" in ok.output
    bad = runner.invoke(main, ["ingest", "gutenberg", "--ids", "12,abc", "--out", str(out)])
    assert bad.exit_code == 4 and "not a Gutenberg ID: 'abc'" in bad.output
    (tmp_path / "latin1.txt").write_bytes(b"1342\n\xff\xfe bad\n")
    unreadable = runner.invoke(
        main, ["ingest", "gutenberg", "--ids-file", str(tmp_path / "latin1.txt"), "--out", str(out)]
    )
    assert unreadable.exit_code == 4 and "cannot read it as UTF-8" in unreadable.output
    assert "Traceback" not in unreadable.output and len(unreadable.output.strip().splitlines()) == 1


def test_parse_ids():
    assert parse_ids("1342, 84\n11 # comment\n84") == [1342, 84, 11]


def test_safe_names_and_destinations(tmp_path):
    assert safe_name("Aunt Jo's Scrap Bag\rJimmy's / Cruise: one", "x") == "Aunt Jo's Scrap Bag Jimmy's Cruise: one"
    assert safe_name(" ... ", "Untitled") == "Untitled"
    assert len(safe_name("\u00e9" * 200, "x").encode("utf-8")) <= 150
    first = book_destination(tmp_path, "Jane Example", "A Book", taken=set())
    assert first == tmp_path / "Jane Example" / "A Book.txt"
    assert book_destination(tmp_path, "Jane Example", "A Book", taken={first}).name == "A Book (2).txt"
    assert book_destination(tmp_path, None, "", taken=set()) == tmp_path / "Unknown author" / "Untitled.txt"


def test_import_folder_lays_out_books_and_reports_skips(corpus_dir, tmp_path):
    src = tmp_path / "src"
    (src / "odd\rfolder").mkdir(parents=True)
    books = _small_books(corpus_dir, 2)
    (src / "odd\rfolder" / "first; one & 'two'.txt").write_bytes(books[0])
    (src / "second.txt").write_bytes(books[1].replace(b"\n", b"\r\n"))
    for bad in (corpus_dir / "bad_inputs").glob("*.txt"):
        if bad.name not in {"single_line.txt", "truncated_utf8.txt"}:
            (src / bad.name).write_bytes(bad.read_bytes())
    out = tmp_path / "out"
    report = import_folder(src, out)
    assert set(report.imported) == {"odd\rfolder/first; one & 'two'.txt", "second.txt"}
    assert set(report.skipped) == {"empty.txt", "whitespace_only.txt", "license_only.txt", "compressed_not_text.txt"}
    assert all("\n" not in reason for reason in report.skipped.values())
    for data, key in zip(books, ["odd\rfolder/first; one & 'two'.txt", "second.txt"]):
        meta = parse_header(decode_bytes(data))
        path = report.imported[key]
        assert path.parent.name == safe_name(meta.author, "") and path.stem == safe_name(meta.title, "")
        assert "\r" not in path.read_text(encoding="utf-8")
    again = import_folder(src, out)
    assert again.imported == {} and set(again.unchanged) == set(report.imported)

    result = CliRunner().invoke(main, ["ingest", "folder", "--src", str(src), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "imported: 2 books" in result.output and "4 skipped" in result.output


# ---- hostile mirror ---------------------------------------------------------------------------------------------


def _gzip_bomb(inflated_mib: int) -> bytes:
    """About 1 KB of gzip per MiB of zeros: gzip members one after another (valid, RFC 1952) inflate to
    `inflated_mib` MiB; built in milliseconds, where one deflate stream of 1 GiB takes half a minute."""
    import gzip

    return gzip.compress(bytes(1 << 20), 9) * inflated_mib


@pytest.fixture()
def hostile(corpus_dir):
    import gzip

    books = _small_books(corpus_dir, 2)
    html = b"<!DOCTYPE html>\n<html><head><title>Error</title></head><body>Please log in</body></html>\n" * 40
    served = {
        BOMB: _gzip_bomb(1024),
        LOOP: books[0],
        FAKE_GZIP: books[0],
        HTML: html,
        GZIP_OK: gzip.compress(books[1]),
        FALLBACK: books[0],
    }
    with FaultyMirror(served) as server:
        server.plain = {GZIP_OK: books[1], FALLBACK: books[0]}
        yield server


def test_hostile_answers_fail_their_id_and_the_others_land(hostile, tmp_path):
    """A 1 MB body inflating to 1 GiB stops at the cap with bounded memory; a redirect loop, a fake gzip body and
    an HTML page each become that ID's failure with a reason; the good IDs beside them are written."""
    import tracemalloc

    assert len(hostile.books[BOMB]) < 1.1e6
    out = tmp_path / "books"
    cap = 16 << 20
    tracemalloc.start()
    try:
        report = fetch_books(
            [BOMB, LOOP, FAKE_GZIP, HTML, GZIP_OK, FALLBACK],
            out,
            _config(hostile, max_book_bytes=cap, retries=1, timeout=20.0),
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert set(report.fetched) == {GZIP_OK, FALLBACK}, report.failed
    for ebook_id in (GZIP_OK, FALLBACK):
        assert report.fetched[ebook_id].read_text(encoding="utf-8") == decode_bytes(hostile.plain[ebook_id])
    assert "cap" in report.failed[BOMB] and f"{cap:,}" in report.failed[BOMB]
    assert peak < 4 * cap, f"peak {peak / 1e6:.0f} MB while refusing a gzip bomb under a {cap >> 20} MiB cap"
    assert "TooManyRedirects" in report.failed[LOOP]
    assert "compressed" in report.failed[FAKE_GZIP]
    assert "HTML page" in report.failed[HTML]
    written = [p for p in out.rglob("*") if p.is_file() and p.name != INDEX_NAME]
    assert sorted(written) == sorted(report.fetched.values())
    assert not [p for p in out.rglob(".*") if p.name != INDEX_NAME], "temp files left behind"


def test_html_is_told_from_a_mislabelled_book():
    from bookmatch.ingest.gutenberg import _NotText, _refuse_html

    _refuse_html("text/html", b"CHAPTER I\n\nIt was a dark night; 3 < 4 and 5 > 2.\n")  # a book served as HTML
    _refuse_html("text/plain", b"The Project Gutenberg EBook of <Unknown>\n")
    for content_type, head in [
        ("text/plain", b"\n  <!DOCTYPE html><html>"),
        ("text/plain", b"<HTML><BODY>x"),
        ("text/html; charset=utf-8", b"Error\n<p>Please log in</p>"),
        ("application/octet-stream", b"\xef\xbb\xbf<?xml version='1.0'?>\n<html>"),
    ]:
        with pytest.raises(_NotText):
            _refuse_html(content_type, head)


def test_out_that_is_a_file_is_one_clear_error(tmp_path):
    from bookmatch.errors import InputError

    (tmp_path / "file").write_text("x")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a book")
    with pytest.raises(InputError, match="is a file, not a folder"):
        fetch_books([1], tmp_path / "file" / "books", GutenbergConfig(mirror="http://127.0.0.1:9"))
    with pytest.raises(InputError, match="is a file, not a folder"):
        import_folder(tmp_path / "src", tmp_path / "file" / "books")


def test_default_cap_is_well_above_a_large_book():
    assert GutenbergConfig().max_book_bytes >= 100 * 1024 * 1024


def test_fetch_never_overwrites_a_file_it_did_not_write(hostile, tmp_path):
    out = tmp_path / "books"
    meta = parse_header(decode_bytes(hostile.plain[FALLBACK]))
    mine = book_destination(out, meta.author, meta.title, taken=set())
    mine.parent.mkdir(parents=True)
    mine.write_text("the user's own notes, not from this mirror", encoding="utf-8")
    report = fetch_books([FALLBACK], out, _config(hostile))
    assert mine.read_text(encoding="utf-8") == "the user's own notes, not from this mirror"
    assert report.fetched[FALLBACK] == mine.with_name(f"{mine.stem} (2).txt")
    # The index says the second file is ours: a forced refetch rewrites it in place, still sparing the user's.
    again = fetch_books([FALLBACK], out, _config(hostile, skip_existing=False))
    assert again.fetched[FALLBACK] == report.fetched[FALLBACK]
    assert mine.read_text(encoding="utf-8") == "the user's own notes, not from this mirror"


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(child.stdout)


def test_next_ingest_removes_temp_files_of_killed_runs(hostile, tmp_path):
    out = tmp_path / "books"
    (out / "Some Author").mkdir(parents=True)
    dead = [out / f".{INDEX_NAME}.ingest-{_dead_pid()}.tmp", out / "Some Author" / f".A.txt.ingest-{_dead_pid()}.tmp"]
    for path in dead:
        path.write_bytes(b"")
    import os

    alive = out / f".B.txt.ingest-{os.getppid()}.tmp"  # a run still going beside this one keeps its temp file
    alive.write_bytes(b"")
    fetch_books([FALLBACK], out, _config(hostile))
    assert not any(p.exists() for p in dead) and alive.exists()


@pytest.mark.parametrize(
    "args, says",
    [
        (["--retries", "-1"], "--retries"),
        (["--concurrency", "0"], "--concurrency"),
        (["--timeout", "0"], "--timeout"),
        (["--mirror", "http://127.0.0.1:99999"], "Port out of range"),
        (["--mirror", "not a url"], "not an http(s) URL"),
        (["--mirror", "ftp://example.org"], "not an http(s) URL"),
        (["--mirror", "http://[::1"], "not a valid URL"),
        (["--max-book-bytes", "0"], "--max-book-bytes"),
    ],
)
def test_cli_refuses_bad_option_values_in_one_line(tmp_path, args, says):
    result = CliRunner().invoke(main, ["ingest", "gutenberg", "--ids", "1", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_config_file_values_are_checked_before_any_request(tmp_path):
    from bookmatch.errors import InputError

    for bad in ({"retries": -1}, {"mirror": "http://h:99999"}, {"concurrency": 0}, {"timeout": float("nan")}):
        with pytest.raises(InputError):
            fetch_books([1], tmp_path / "o", GutenbergConfig(**bad))


def test_import_folder_survives_names_that_are_not_utf8(corpus_dir, tmp_path):
    import json
    import os

    src = tmp_path / "src"
    src.mkdir()
    books = _small_books(corpus_dir, 2)
    odd_folder = os.path.join(os.fsencode(src), b"Auteur \xe9")  # Latin-1 bytes: not UTF-8
    os.mkdir(odd_folder)
    with open(os.path.join(odd_folder, b"livre \xff\xfe.txt"), "wb") as handle:
        handle.write(books[0])
    (src / ("x" * 240 + ".txt")).write_bytes(books[1])  # a name near the 255-byte limit
    (src / "error page.txt").write_text("<!DOCTYPE html>\n<html><body>" + "Not found. " * 300 + "</body></html>")
    out = tmp_path / "out"
    report = import_folder(src, out)
    assert "HTML page" in report.skipped["error page.txt"]
    assert set(report.imported) == {"Auteur \\xe9/livre \\xff\\xfe.txt", "x" * 240 + ".txt"}, report.skipped
    index = json.loads((out / INDEX_NAME).read_text(encoding="utf-8"))
    assert set(index) == set(report.imported)
    again = import_folder(src, out)
    assert again.imported == {} and set(again.unchanged) == set(report.imported)
