"""User-facing errors."""

from __future__ import annotations


class CellsegError(Exception):
    """Bad input from the user: a one-line message naming the file, the key and the fix.

    The command line prints it without a traceback; everything else lets it propagate.
    """
