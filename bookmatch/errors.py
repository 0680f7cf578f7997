"""Errors a user can act on. The CLI prints their message as one line and exits non-zero, no traceback.

Exit codes (README, "Exit codes"): 0 success; 1 any other failure; 2 a usage error (click: unknown option, a
value of the wrong kind for an option); 3 a model problem (ModelLoadError); 4 bad input (InputError: files,
folders, JSON lines, settings).
"""

EXIT_OTHER, EXIT_USAGE, EXIT_MODEL, EXIT_INPUT = 1, 2, 3, 4


class BookmatchError(Exception):
    """Base: the message says what went wrong, where, and what to do."""

    exit_code = EXIT_OTHER


class InputError(BookmatchError):
    """Bad or missing user input (files, folders, JSON lines, settings). Not 2: click exits 2 on usage errors."""

    exit_code = EXIT_INPUT


class ModelLoadError(BookmatchError):
    """A model folder with missing or corrupt files, or a model name that cannot be resolved offline."""

    exit_code = EXIT_MODEL


def first_line(err: BaseException, limit: int = 300) -> str:
    """An exception's first line, at most `limit` characters, for one-line errors (library messages such as
    transformers' run to many lines)."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__
