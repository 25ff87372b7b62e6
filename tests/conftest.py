"""Scheduling of the suite on pytest-xdist's workers (pyproject's ``addopts``: ``-n logical
--maxprocesses 4 --dist loadgroup``).

Each test file runs on one worker, in order, so a module-scoped fixture (a clone of the
repository, a trained run) is built once. Files that use an expensive session fixture share one
worker with every other file using it: the private SLURM cluster (``slurm_cluster``; a second
one would fight the first over its state directory) and the finished tiny workflow run
(``finished_run``).
"""

from __future__ import annotations

import pytest

SHARED_SESSION_FIXTURES = ("slurm_cluster", "finished_run")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    group_of_file: dict[str, str] = {}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        names = getattr(item, "fixturenames", ())
        shared = next((name for name in SHARED_SESSION_FIXTURES if name in names), None)
        if shared is not None:
            group_of_file[path] = shared
        else:
            group_of_file.setdefault(path, path)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group_of_file[item.nodeid.split("::", 1)[0]]))
