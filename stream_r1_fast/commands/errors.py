"""How ``stream-r1`` reports a bad option or input: :class:`UsageError`, the exceptions that
count as the user's (one line, exit status 2) and the one-line form of a message."""

from __future__ import annotations


class UsageError(Exception):
    """A bad option or input file, found before or while running: :func:`main` prints it as one
    line naming the option and returns 2 (``--debug``: with the traceback)."""


# What main reports as one line with exit status 2; anything else is a bug and keeps its traceback.
USER_ERRORS = (UsageError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (its type's name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__
