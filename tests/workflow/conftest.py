"""Fixtures of the workflow tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from workflow_runner import LOCAL_PROFILE, TEST_CONFIG, make_clone, snakemake


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """The tiny test DAG run to the end once, with the local profile."""
    workdir = tmp_path_factory.mktemp("finished")
    snakemake(workdir, "--profile", str(LOCAL_PROFILE), "--configfile", str(TEST_CONFIG))
    return workdir


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh clone of this working tree, shared by one test module; ``cellmap/`` is an empty
    data root for the seed experiment's dry runs (which read no data)."""
    root = make_clone(tmp_path_factory.mktemp("clone") / "cellseg")
    (root / "cellmap").mkdir()
    return root
