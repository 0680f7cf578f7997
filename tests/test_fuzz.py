"""Property-based fuzzing (Hypothesis) of the parsers that read what users and servers send: the text decoder and
standardizer, the Gutenberg header parser, the JSONL pairs reader, file names and the ingest body reader. No input
may raise anything but the project's own errors. Example counts are bounded so the file runs in seconds."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bookmatch.errors import BookmatchError, InputError
from bookmatch.inference.pairs_file import read_pairs_jsonl
from bookmatch.ingest import safe_name
from bookmatch.text.decode import decode_bytes
from bookmatch.text.gutenberg import BookMeta, parse_header, strip_boilerplate_counted
from bookmatch.text.names import unicode_name
from bookmatch.text.standardize import standardize

# database=None: nothing written into the checkout; a failure prints its example, which is enough to reproduce it.
FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# charset-normalizer runs on bytes that are neither UTF-8 nor cp1252-like: fewer examples keep this test short.
FUZZ_DECODE = settings(FUZZ, max_examples=30)

# Pieces of real Gutenberg files, so generated texts hit the marker and header code paths, not only prose.
FRAGMENTS = [
    "*** START OF THIS PROJECT GUTENBERG EBOOK A BOOK ***",
    "*** END OF THE PROJECT GUTENBERG EBOOK A BOOK ***",
    "End of the Project Gutenberg EBook of A Book, by Someone",
    "End of this Etext",
    "*** START: FULL LICENSE ***",
    "***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***",
    "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*",
    "Title: ",
    "Author: ",
    "Language: ",
    "[EBook #12345]",
    "Produced by ",
    "[Illustration: ",
    "]",
    "Transcriber's Note",
    "Executive Director's Notes:",
    "<<THIS ELECTRONIC VERSION",
    ">>",
    "\n",
    "\n\n",
    "\r\n",
    "_",
    "\u2019",
    "\u00ad",
    "\ufeff",
    "\ufffd",
    "\x00",
    "The Project Gutenberg EBook of ",
    ", by ",
    "in our series by ",
    "Character set encoding: ISO-8859-1",
]
gutenberg_like = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=60)), max_size=40).map("".join)


@FUZZ_DECODE
@given(
    st.one_of(
        st.binary(max_size=1000),
        gutenberg_like.map(lambda t: t.encode("utf-8", "surrogatepass")),
        gutenberg_like.map(lambda t: t.encode("cp1252", "replace")),
    )
)
def test_decode_returns_text_or_its_own_error(data):
    try:
        text = decode_bytes(data, source="fuzz.txt")
    except BookmatchError:
        return
    assert isinstance(text, str) and "\r" not in text and text.strip()


@FUZZ
@given(st.one_of(gutenberg_like, st.text(max_size=2000)))
def test_standardize_and_boilerplate_never_raise_and_account_for_what_they_cut(text):
    body, removed = strip_boilerplate_counted(text)
    assert isinstance(body, str) and len(body) <= len(text)
    assert min(removed.as_dict().values()) >= 0
    clean = standardize(text)
    assert "\r" not in clean and "\n\n\n" not in clean and clean == clean.strip()


@FUZZ
@given(gutenberg_like)
def test_header_parser_gives_one_line_fields_or_none(text):
    meta = parse_header(text)
    assert isinstance(meta, BookMeta)
    for value in (meta.title, meta.author, meta.language):
        assert value is None or (value and "\n" not in value and value == value.strip())
    assert meta.ebook_id is None or meta.ebook_id >= 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
pair_lines = st.one_of(
    st.binary(max_size=200),
    st.fixed_dictionaries(
        {"text1": json_values, "text2": json_values}, optional={"label": json_values, "id": json_values}
    ).map(lambda row: json.dumps(row).encode()),
    st.text(max_size=80).map(lambda t: json.dumps({"text1": t, "text2": "x"}).encode("utf-8", "surrogatepass")),
)


@settings(FUZZ, max_examples=50)
@given(lines=st.lists(pair_lines, max_size=8), require_label=st.booleans())
def test_pairs_reader_yields_good_rows_or_raises_input_error(tmp_path, lines, require_label):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    try:
        rows = list(read_pairs_jsonl(path, require_label=require_label, warnings=[]))
    except InputError:
        rows = None
    skipped: list[str] = []
    kept = list(
        read_pairs_jsonl(path, require_label=require_label, skip_bad_lines=True, bad_lines=skipped, warnings=[])
    )
    for _, row in kept:
        assert isinstance(row["text1"], str) and row["text1"].strip() and row["text1"].encode("utf-8")
    if rows is not None:
        assert rows == kept and not skipped


@FUZZ
@given(st.one_of(st.text(max_size=300), st.binary(max_size=200).map(os.fsdecode)))
def test_any_name_becomes_a_safe_file_name_and_valid_unicode(name):
    safe = safe_name(name, "fallback")
    assert safe and "/" not in safe and "\n" not in safe and len(safe.encode("utf-8")) <= 150
    assert isinstance(unicode_name(name).encode("utf-8"), bytes)


@FUZZ
@given(
    data=st.binary(max_size=400),
    encoding=st.sampled_from(["gzip", "deflate", "x-gzip", "identity", "br"]),
    cap=st.integers(min_value=1, max_value=500),
)
def test_body_reader_returns_bytes_under_the_cap_or_fails_that_id(data, encoding, cap):
    from bookmatch.ingest import gutenberg

    try:
        reader = gutenberg._BodyReader(encoding, cap)
        for start in range(0, len(data), 37):
            reader.feed(data[start : start + 37])
        body = reader.finish()
    except (gutenberg._Unusable, gutenberg._Retryable):
        return
    assert len(body) <= cap


@pytest.mark.parametrize("inflated", [10_000, 1 << 20])
def test_body_reader_stops_a_compressed_body_at_the_cap(inflated):
    import gzip

    from bookmatch.ingest import gutenberg

    reader = gutenberg._BodyReader("gzip", 4096)
    with pytest.raises(gutenberg._Unusable, match="cap"):
        data = gzip.compress(bytes(inflated))
        reader.feed(data)
        reader.finish()
    assert reader.size <= 4096 + 1
