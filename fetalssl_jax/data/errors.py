"""The error of a user's data: a file, folder or table row that cannot become records."""

from __future__ import annotations


class DataError(ValueError):
    """An input file (or a row of a labels table) that cannot become records; the message names it, the value and
    what is allowed, in one line. The command line prints it without a traceback and exits with status 2."""


def printable(name: str) -> str:
    """`name` as it can be printed and logged: a file name that is not UTF-8 (Python keeps its bytes as
    surrogates) with those bytes as \\xNN escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
