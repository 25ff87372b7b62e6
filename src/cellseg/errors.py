"""User-facing errors."""

from __future__ import annotations

import errno

DISK_FULL: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT})
"""``OSError.errno`` values that mean the file system (or the user's quota) is full."""


class CellsegError(Exception):
    """Bad input from the user: a one-line message naming the file, the key and the fix.

    The command line prints it without a traceback; everything else lets it propagate.
    """


def disk_full_line(path: object) -> str:
    """The one line for a write to ``path`` that found its file system (or quota) full."""
    return (
        f"{path}: no space left on the device (or quota exceeded) while writing it; free some "
        "space there (or write elsewhere) and run the same command again: what was already "
        "written is kept"
    )


def user_error(error: BaseException) -> str | None:
    """The one-line message of an error the user can fix (a :class:`CellsegError`, or an
    ``OSError`` for a full disk, which names no cellseg setting but must not end in a
    traceback), or ``None`` for an unexpected error, whose traceback is wanted."""
    if isinstance(error, CellsegError):
        return str(error)
    if isinstance(error, OSError) and error.errno in DISK_FULL:
        return disk_full_line(error.filename or "a file")
    return None


INTERRUPTED_STATUS = 130
"""Exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it)."""

RESUMES: dict[str, str] = {
    "train": (
        "the checkpoints it saved are kept: run the same command again to resume from the last "
        "one (checkpoints/last.pt in the run directory; the steps after it are trained again)"
    ),
    "predict": "the blocks it finished are kept: run the same command again to predict the rest",
    "snakemake": (
        "run the same snakemake command again: finished jobs are kept, and a training resumes "
        "from its last checkpoint (results/models/<run>/checkpoints/last.pt)"
    ),
}
"""How each command goes on after Ctrl-C, where it keeps part of its work (any other is run
again)."""


def interrupted_line(command: str) -> str:
    """The one line for ``command`` stopped by Ctrl-C (a ``KeyboardInterrupt``): the user's
    stop, not a bug, and how to go on."""
    how = RESUMES.get(command, "run the same command again")
    return f"interrupted (Ctrl-C); {how}"


def keep_interrupts() -> None:
    """Make a Ctrl-C that strikes inside a finalizer or a weakref callback stop the command.

    Python raises ``KeyboardInterrupt`` in whatever code runs when SIGINT arrives; inside a
    ``__del__`` or a weakref callback (torch and zarr run many while a training tears tensors
    down) it can only print ``Exception ignored in ...`` with a traceback and drop the
    interrupt, so the job's log showed a traceback and the command ran on. This hook drops the
    print and delivers the interrupt again to the main thread 50 ms later, where it lands in
    ordinary code and ends the command with :func:`interrupted_line` (should it strike another
    finalizer, the hook delivers it again). Other unraisable errors go to the hook
    installed before. Idempotent.
    """
    import _thread
    import sys
    import threading

    previous = sys.unraisablehook
    if getattr(previous, "keeps_interrupts", False):
        return

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # from another thread, a moment later: delivered at once, it would strike this hook
            # itself (Python checks for signals on the next call), which drops it again
            threading.Timer(0.05, _thread.interrupt_main).start()
            return
        previous(unraisable)

    hook.keeps_interrupts = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
