"""The job's time limit: when a training job must stop to be resumed by its next attempt.

The limit counts from the job's start (:func:`job_start_time`: the process's, or under
``torchrun`` its agent's), and under SLURM also from ``SLURM_JOB_END_TIME`` less a margin,
whichever comes first (:func:`time_limit`). The trainer checks it before each checkpoint
interval and each epoch (``Trainer.check_time``).
"""

from __future__ import annotations

import os
import time

import psutil


def job_start_time() -> float:
    """Wall-clock time (epoch seconds) at which this job started: this process's start, or
    under ``torchrun`` its agent's (the parent of every rank), so that starting torchrun and its
    ranks counts against the time budget too."""
    process = psutil.Process()
    if "TORCHELASTIC_RUN_ID" in os.environ:
        parent = process.parent()
        if parent is not None:
            return parent.create_time()
    return process.create_time()


def time_limit(
    job_started: float, time_budget_s: float | None, margin_min: float
) -> tuple[float | None, str]:
    """The ``time.monotonic()`` by which the run must have stopped, and what sets it: the
    time budget (``time_budget_s``) counted from the job's start (``job_started``, epoch
    seconds), or ``margin_min`` (``time_budget_margin_min``) before ``SLURM_JOB_END_TIME`` when
    SLURM provides it, whichever comes first (None: no limit).
    """
    limits: list[tuple[float, str]] = []
    if time_budget_s is not None:
        limits.append(
            (
                job_started + time_budget_s,
                f"time budget of {time_budget_s / 60:.1f} min from the job's start",
            )
        )
    try:
        end = float(os.environ.get("SLURM_JOB_END_TIME", ""))
    except ValueError:  # unset, or not SLURM's number: no limit from it
        end = 0.0
    if end > 0:
        margin = margin_min
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(end))
        limits.append(
            (end - margin * 60, f"SLURM_JOB_END_TIME ({stamp}) minus {margin:g} min margin")
        )
    if not limits:
        return None, ""
    wall, reason = min(limits)
    return time.monotonic() + (wall - time.time()), reason
