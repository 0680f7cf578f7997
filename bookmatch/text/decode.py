"""Bytes to text: byte-order marks, UTF-8, legacy 8-bit encodings; binary files are refused with a reason."""

from __future__ import annotations

import codecs
import re

from bookmatch.errors import InputError


class UnreadableText(InputError):
    """The bytes are not a readable text (empty, compressed, PDF, binary); the message says which."""


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# C0 controls other than tab, LF, VT, FF, CR; DEL; the replacement character. Real books hold almost none.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f\ufffd]")
_SAMPLE = 1 << 16
_MAX_CONTROL_SHARE = 0.01


def _where(source: str) -> str:
    return f"{source}: " if source else ""


def _sniff_binary(data: bytes, source: str) -> None:
    head = data[:8].lstrip()
    if data[:2] == b"\x1f\x8b":
        raise UnreadableText(f"{_where(source)}gzip-compressed data, not text (decompress it first)")
    if head.startswith(b"%PDF"):
        raise UnreadableText(f"{_where(source)}a PDF document, not plain text (convert it to .txt first)")
    if data[:4] == b"PK\x03\x04":
        raise UnreadableText(f"{_where(source)}a zip archive, not text (unzip it first)")
    if b"\x00" in data[:_SAMPLE]:
        raise UnreadableText(f"{_where(source)}binary data (NUL bytes), not text")


def _cp1252_bytes(err: UnicodeDecodeError) -> tuple[str, int]:
    return err.object[err.start : err.end].decode("cp1252", errors="replace"), err.end


codecs.register_error("bookmatch-cp1252", _cp1252_bytes)
# A UTF-8 file may hold a few stray legacy bytes (an edit in another editor): decoding the whole file as a legacy
# encoding would garble every correct character, so up to this share of bad bytes among the non-ASCII
# characters, only the bad bytes are read as cp1252.
_MAX_STRAY_BYTE_SHARE = 0.01
_MIN_STRAY_BYTES = 8


def _decode_utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        # A file cut inside its last multi-byte character: keep everything before the broken tail.
        if err.reason == "unexpected end of data" and err.end == len(data) and len(data) - err.start < 4:
            return data[: err.start].decode("utf-8")
    replaced = data.decode("utf-8", errors="replace")
    stray = replaced.count("\ufffd") - data.count("\ufffd".encode("utf-8"))
    non_ascii = sum(1 for ch in replaced if ord(ch) > 127) - stray
    if stray <= max(_MIN_STRAY_BYTES, _MAX_STRAY_BYTE_SHARE * non_ascii):
        return data.decode("utf-8", errors="bookmatch-cp1252")
    return None


def _decode_legacy(data: bytes) -> str:
    # charset-normalizer is slow on whole books, so it only runs here, once UTF-8 has failed.
    from charset_normalizer import from_bytes

    best = from_bytes(data[: 1 << 20]).best()
    encoding = best.encoding if best is not None else None
    for candidate in (encoding, "cp1252"):
        if candidate:
            try:
                return data.decode(candidate)
            except (UnicodeDecodeError, LookupError):
                continue
    return data.decode("latin-1")  # every byte is a Latin-1 character, so this never fails


def decode_bytes(data: bytes, source: str = "") -> str:
    """Decode a text file's bytes to `str` with LF line endings; raise UnreadableText if it is not text."""
    if not data.strip():
        raise UnreadableText(f"{_where(source)}empty or whitespace-only file")
    text = None
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom):].decode(encoding)
            except UnicodeDecodeError:
                text = data[len(bom):].decode(encoding, errors="replace")
            break
    if text is None:
        _sniff_binary(data, source)
        text = _decode_utf8(data)
        if text is None:
            text = _decode_legacy(data)
    sample = text[:_SAMPLE]
    if len(_CONTROL.findall(sample)) > _MAX_CONTROL_SHARE * max(len(sample), 1):
        raise UnreadableText(f"{_where(source)}mostly non-text (control characters), not a plain-text book")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise UnreadableText(f"{_where(source)}empty or whitespace-only file")
    return text
