"""A workflow job's log: where its stderr goes and where its error ends up.

Snakemake points a user to a failed job's log (``logs/<rule>/<wildcards>.log``). A script that
sets ``sys.stderr = open(log)`` inside a ``with`` block and lets an exception escape closes the
file first: Python then prints ``lost sys.stderr`` and the log the user opens is empty.
:func:`job_log` keeps the log open until the error is written into it, so every failed job's log
ends with one line: ``cellseg: error: ...`` (as the command line prints a
:class:`~cellseg.errors.CellsegError`), after the traceback when the error was unexpected.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from cellseg.errors import INTERRUPTED_STATUS, interrupted_line, keep_interrupts, user_error


@contextlib.contextmanager
def job_log(path: Path | str) -> Iterator[TextIO]:
    """Append stderr to the job's log ``path`` while the block runs; yield the open log.

    A :class:`CellsegError` (or a full disk, :func:`cellseg.errors.user_error`) becomes the
    log's last line and exits the job with status 1, without a traceback: the message already
    names the file, the key and the fix. Any other exception writes its traceback, then a last
    line naming it, and propagates (Snakemake reports the job as failed either way).
    """
    keep_interrupts()
    with open(path, "a") as log:
        saved = sys.stderr
        sys.stderr = log
        try:
            yield log
        except SystemExit:
            raise
        except KeyboardInterrupt:
            # Ctrl-C of the snakemake run (SIGINT): the user's stop, not a bug to report
            print(f"cellseg: {interrupted_line('snakemake')}", file=log, flush=True)
            raise SystemExit(INTERRUPTED_STATUS) from None
        except BaseException as error:
            known = user_error(error)
            if known is not None:
                print(f"cellseg: error: {known}", file=log, flush=True)
                raise SystemExit(1) from None
            traceback.print_exc(file=log)
            print(
                f"cellseg: error: {type(error).__name__}: {error} (unexpected: the traceback "
                "above says where; please report it)",
                file=log,
                flush=True,
            )
            raise
        finally:
            # restored before the file closes: nothing writes to a closed stderr afterwards
            sys.stderr = saved
