"""Errors a user can act on. The CLI prints their message as one line and exits non-zero, no traceback."""


class BookmatchError(Exception):
    """Base: the message says what went wrong, where, and what to do."""

    exit_code = 1


class InputError(BookmatchError):
    """Bad or missing user input (files, folders, JSON lines, options)."""

    exit_code = 2


class ModelLoadError(BookmatchError):
    """A model folder with missing or corrupt files, or a model name that cannot be resolved offline."""

    exit_code = 3


def first_line(err: BaseException, limit: int = 300) -> str:
    """An exception's first line, at most `limit` characters, for one-line errors (library messages such as
    transformers' run to many lines)."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__
