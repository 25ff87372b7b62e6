"""How the suite is spread over pytest-xdist's workers (pyproject's ``addopts``: ``-n auto
--dist loadfile``).

Each test file runs on one worker, in order, so a module-scoped fixture (a clone of the
repository, a trained run) is built once. A session fixture (the private SLURM cluster, the
finished tiny workflow run) is built once per worker that needs it; each cluster has its own
state directory and ports.

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


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """The Hugging Face Hub as on a machine without network: offline, with an empty cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    constants = pytest.importorskip("huggingface_hub.constants")
    # huggingface_hub reads the variables at import time; patch the live values as well
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
