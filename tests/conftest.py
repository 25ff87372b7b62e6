"""How the suite is spread over pytest-xdist's workers (pyproject's ``addopts``: ``-n auto
--dist loadfile``).

Each test file runs on one worker, in order, so a module-scoped fixture (a clone of the
repository, a trained run) is built once. The private SLURM cluster (a session fixture) is
built once per worker that needs it, each with its own state directory and ports; the finished
tiny workflow run (``tests/workflow/conftest.py``) once per session, whichever worker needs it
first.

Order: the longest files first (longest-processing-time-first scheduling), so that no worker
is left starting a 5-minute test when the others are nearly done. A file says how long it takes
with ``pytest.mark.minutes(N)`` (about N minutes on CI's 2 cores, from ``--durations``; the
largest of its tests' marks counts); a file without one counts 1 minute if marked ``slurm`` or
``slow``, else 0. :func:`pytest_collection_modifyitems` sorts the files by that, longest first,
and keeps each file's tests together and in their order; files of equal length keep pytest's
order, and every worker collects the same order. xdist's own order (most tests per file first,
``--no-loadscope-reorder`` in ``addopts`` turns it off) would start the one-test SLURM and
workflow files last. xdist hands each worker its next file while the worker still has up to
two tests to run, so the first six files start on the three workers two by two (1 and 4,
2 and 5, 3 and 6): the order keeps two long files off one worker only as far as the marks
rank them.

Workers: one more than the logical CPUs, at most 4. Much of a workflow or SLURM test is spent
starting processes and waiting for SLURM's status checks, so with one worker per CPU a 2-core
machine was busy 1.4 cores on average (43 min of user time in 35 min); a third worker fills
those waits.
"""

from __future__ import annotations

import os

import pytest

MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return min(MAX_WORKERS, (os.cpu_count() or 1) + 1)


def _minutes(item: pytest.Item) -> float:
    """About how many minutes the item's file takes on CI (its ``minutes`` mark), else 1 for a
    SLURM or slow test and 0 for another."""
    marks = [float(mark.args[0]) for mark in item.iter_markers("minutes")]
    if marks:
        return max(marks)
    return 1.0 if item.get_closest_marker("slurm") or item.get_closest_marker("slow") else 0.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    # stable: files of equal length keep pytest's order, each file's tests theirs
    longest_first = sorted(files.values(), key=lambda tests: -max(map(_minutes, tests)))
    items[:] = [item for tests in longest_first for item in tests]


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """The Hugging Face Hub as on a machine without network: offline, with an empty cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    constants = pytest.importorskip("huggingface_hub.constants")
    # huggingface_hub reads the variables at import time; patch the live values as well
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
