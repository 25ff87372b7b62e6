"""Fixtures for the tests that run against a real single-node SLURM (see cluster.py)."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest


def _load_cluster_module() -> ModuleType:
    # tests/ is not a package; load by path so this works under any pytest import mode
    name = "cellseg_tests_slurm_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("cluster.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cluster = _load_cluster_module()


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[cluster.SlurmCluster]:
    """A private SLURM (munged, slurmctld, slurmd) for the whole session, stopped by PID after it.

    Missing SLURM binaries are a failure, not a skip: `.ci/run` installs them
    (`.ci/install-slurm.sh`), so their absence means a broken setup.
    """
    cluster.reap_orphans()
    root = cluster.BASE_DIR / f"pytest-{os.getpid()}"
    try:
        running = cluster.start_cluster(root, owner_pid=os.getpid())
    except cluster.SlurmError as error:
        pytest.fail(f"could not start the local SLURM cluster: {error}", pytrace=False)
    try:
        yield running
    finally:
        cluster.stop_cluster(root)
