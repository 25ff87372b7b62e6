"""Scheduling of the suite on pytest-xdist's workers (pyproject's ``addopts``: ``-n auto
--maxprocesses 4 --dist loadgroup``).

Tests that share an expensive session fixture run on one worker, so it is built once: the
private SLURM cluster (``slurm_cluster``; a second one would fight the first over its state
directory) and the finished tiny workflow run (``finished_run``).
"""

from __future__ import annotations

import pytest

SHARED_SESSION_FIXTURES = ("slurm_cluster", "finished_run")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        for fixture in SHARED_SESSION_FIXTURES:
            if fixture in names:
                item.add_marker(pytest.mark.xdist_group(fixture))
                break
