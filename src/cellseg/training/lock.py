"""One ``cellseg train`` per run directory at a time.

Two trainings of the same run directory would interleave their checkpoints and history. The
lock is ``train.lock`` in the run directory: an exclusive ``flock`` held while the training
runs (the kernel, or the NFS server, drops it when the process dies, however it dies), and the
holder's PID, host and start time written in the file for the message the second one gets. On a
file system without ``flock`` the PID decides: a lock whose holder is a dead process on this
host is stale and taken over; a live holder, or one on another host (which cannot be checked
from here), refuses.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cellseg.errors import CellsegError

LOCK_NAME = "train.lock"
"""The lock file's name inside the run directory."""

_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})


def _holder(handle: Any) -> dict[str, Any]:
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _refuse(run_dir: Path, holder: dict[str, Any]) -> CellsegError:
    since = holder.get("started", "?")
    return CellsegError(
        f"{run_dir}: another cellseg train (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, since {since}) is training in this run directory; wait "
        f"for it to finish or stop it, or choose another --run-dir (if that process is gone, "
        f"delete {run_dir / LOCK_NAME})"
    )


@contextlib.contextmanager
def run_dir_lock(run_dir: Path | str) -> Iterator[None]:
    """Hold the run directory's lock while the block runs.

    Raises:
        CellsegError: another live ``cellseg train`` holds it (one line with its PID and host).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    host = socket.gethostname()
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refuse(run_dir, _holder(handle)) from None
        except OSError as error:
            if error.errno not in _NO_FLOCK:
                raise
            holder = _holder(handle)
            pid = holder.get("pid")
            stale = not holder or (
                holder.get("host") == host and isinstance(pid, int) and not _alive(pid)
            )
            if not stale:
                raise _refuse(run_dir, holder) from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(json.dumps({"pid": os.getpid(), "host": host, "started": started}))
        handle.flush()
        try:
            yield
        finally:
            # emptied, not deleted: deleting a flock'ed file lets a third process lock a new
            # file while a second one waits on the old one
            handle.seek(0)
            handle.truncate()
            handle.flush()
