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


# Project Gutenberg files name their encoding in the header ("Character set encoding: ISO-8859-1").
_DECLARED_ENCODING = re.compile(rb"(?im)^[ \t]*character set encoding:[ \t]*([a-z0-9_.:-]+)")
# Typography a cp1252 file puts between two letters (don't, well-known, a soft hyphen); any other non-letter
# there (Polish "\xb3\xf3\xbfko" is cp1250's "\u0142\xf3\u017cko" read as cp1252) means cp1252 is the wrong guess.
_WORD_INNER_TYPOGRAPHY = set("\u2018\u2019\u2013\u2014\xad\xb7")
# Western European text is mostly ASCII letters (French 2-5% accented, Finnish ~10-15%); Cyrillic or Greek read as
# cp1252 is almost all accented letters.
_MAX_WESTERN_ACCENTED_SHARE = 0.4


def _declared_encoding(data: bytes) -> str | None:
    match = _DECLARED_ENCODING.search(data[:_SAMPLE])
    if match is None:
        return None
    try:
        name = codecs.lookup(match.group(1).decode("ascii")).name
    except LookupError:
        return None
    if name in ("utf-8", "ascii"):  # the file is not what it says (UTF-8 already failed): no hint
        return None
    # a Latin-1 label means windows-1252 in practice (as in the WHATWG Encoding Standard): such files carry
    # cp1252's curly quotes and dashes in 0x80-0x9F, which Latin-1 would turn into control characters
    return "cp1252" if name == "iso8859-1" else name


def _reads_as_western(text: str) -> bool:
    """Does `text` (bytes decoded as cp1252) look like a Western European language rather than mojibake?"""
    letters = sum(1 for ch in text if ch.isalpha())
    accented = sum(1 for ch in text if ord(ch) > 127 and ch.isalpha())
    if accented > _MAX_WESTERN_ACCENTED_SHARE * max(letters, 1):
        return False
    for match in re.finditer("[^\x00-\x7f]", text):
        ch, at = match.group(), match.start()
        if ch.isalpha() or ch in _WORD_INNER_TYPOGRAPHY or not 0 < at < len(text) - 1:
            continue
        if text[at - 1].isalpha() and text[at + 1].isalpha():
            return False
    return True


def _decode_legacy(data: bytes) -> str:
    """Decode a file that is not UTF-8: the encoding its Gutenberg header declares, else cp1252 when the bytes
    read as Western European text, else charset-normalizer's guess.

    cp1252 goes before charset-normalizer because on short texts it guesses wildly (a 1.7 KB English text with
    a few accents came back as Baltic cp1257, a French paragraph as Central European cp1250) and this tool's
    books are overwhelmingly English. The price: an undeclared Central European file whose bytes happen to
    read as plausible Western text (Czech without its letters that cp1252 lacks) is read as cp1252.
    """
    declared = _declared_encoding(data)
    if declared:
        try:
            return data.decode(declared)
        except (UnicodeDecodeError, LookupError):
            pass
    try:
        western = data.decode("cp1252")
    except UnicodeDecodeError:
        western = None
    if western is not None and _reads_as_western(western[: _SAMPLE * 4]):
        return western
    # charset-normalizer is slow on whole books, so it only runs here, once UTF-8 and cp1252 have failed.
    from charset_normalizer import from_bytes

    best = from_bytes(data[: 1 << 20]).best()
    if best is not None:
        try:
            return data.decode(best.encoding)
        except (UnicodeDecodeError, LookupError):
            pass
    if western is not None:
        return western
    return data.decode("latin-1")  # every byte is a Latin-1 character, so this never fails


def decode_bytes(data: bytes, source: str = "") -> str:
    """Decode a text file's bytes to `str` with LF line endings; raise UnreadableText if it is not text."""
    if not data.strip():
        raise UnreadableText(f"{_where(source)}empty or whitespace-only file")
    text = None
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(encoding)
            except UnicodeDecodeError:
                text = data[len(bom) :].decode(encoding, errors="replace")
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
