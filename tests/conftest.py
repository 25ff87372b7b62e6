"""How the suite is spread over pytest-xdist's workers (pyproject's ``addopts``: ``-n auto
--dist loadfile``).

Each test file runs on one worker, in order, so a module-scoped fixture (a clone of the
repository, a trained run) is built once. A session fixture (the private SLURM cluster, the
finished tiny workflow run) is built once per worker that needs it; each cluster has its own
state directory and ports.

Order: the longest files first (longest-processing-time-first scheduling), so that no worker
starts a 7-minute SLURM test when the others are nearly done. xdist's own order (most tests per
file first, ``--no-loadscope-reorder`` in ``addopts`` turns it off) would start the SLURM files,
one or three tests each, last. :func:`pytest_collection_modifyitems` moves the files marked
``slurm`` to the front, then those marked ``slow``; every worker collects the same order.

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


def _expected_length(item: pytest.Item) -> int:
    """0 for a SLURM test (minutes, mostly waiting for the cluster), 1 for another slow one."""
    if item.get_closest_marker("slurm"):
        return 0
    return 1 if item.get_closest_marker("slow") else 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_expected_length)  # stable: each file's tests keep their order


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """The Hugging Face Hub as on a machine without network: offline, with an empty cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    constants = pytest.importorskip("huggingface_hub.constants")
    # huggingface_hub reads the variables at import time; patch the live values as well
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
