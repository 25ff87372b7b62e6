"""Atomic file output: nothing already computed is lost to a job killed mid-write.

Files are created with the permissions any other file of the user's gets (``0o666`` less the
umask): ``mkstemp`` makes its temporary ``0o600``, which would keep a lab's shared group from
reading ``best.pt``, ``summary.csv`` or a prediction store. A full disk is one line
(:func:`cellseg.errors.disk_full_line`) naming the file, and the previous file is kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cellseg.errors import DISK_FULL, CellsegError, disk_full_line

_FULL_BYTES = 1 << 20
"""Below this many free bytes a failed write counts as a full disk (torch's writer reports
one as a ``RuntimeError`` that names no errno)."""


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only be read by setting
    it, which would race with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _disk_full(error: BaseException, directory: Path) -> bool:
    if isinstance(error, OSError) and error.errno in DISK_FULL:
        return True
    if not isinstance(error, RuntimeError):
        return False
    try:
        usage = os.statvfs(directory)
    except OSError:
        return False
    return usage.f_bavail * usage.f_frsize < _FULL_BYTES


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    The rename is atomic on POSIX file systems, so readers (and a resumed job) see either the
    old file or the complete new one, never a partial write. On error the temporary is removed.
    The file gets mode ``0o666`` less the umask, as ``open`` would give it.

    Raises:
        CellsegError: the file system (or quota) was full; ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    os.close(descriptor)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        with open(temporary_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary_path, 0o666 & ~current_umask())
        os.replace(temporary_path, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except Exception as error:
        if _disk_full(error, path.parent):
            # the one line, not the traceback of whichever writer (pandas, torch) hit it
            raise CellsegError(disk_full_line(path)) from error
        raise
    finally:
        temporary_path.unlink(missing_ok=True)


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json_atomic(path: Path | str, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
