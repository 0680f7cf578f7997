"""File names as text: any name the file system holds, shown and stored as valid one-line Unicode.

Python reads a file name whose bytes are not UTF-8 with "surrogateescape" (byte 0xff becomes U+DCFF), and such a
string cannot be written to JSON, Parquet or a terminal as UTF-8. `unicode_name` spells those bytes as `\\xff`.
"""

from __future__ import annotations


def unicode_name(name: str) -> str:
    """`name` unchanged when it is valid Unicode; otherwise its undecodable bytes (or lone surrogates) as `\\xNN`."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        data = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte (e.g. from JSON "\ud800")
        data = name.encode("utf-8", "surrogatepass")
    return data.decode("utf-8", "backslashreplace")


def one_line_name(name: str) -> str:
    """`unicode_name` with line breaks shown as `\\r` and `\\n`, for one-line messages."""
    return unicode_name(name).replace("\r", "\\r").replace("\n", "\\n")
