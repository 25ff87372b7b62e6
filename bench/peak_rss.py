"""Peak resident memory of the running process, for the bench scripts (imported, not run)."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB: ``VmHWM`` of ``/proc/self/status`` on Linux.

    Not ``ru_maxrss``: it survives ``fork`` and ``exec``, so a freshly spawned measuring process
    reports at least its parent's peak (it is used only where ``/proc`` is missing).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
