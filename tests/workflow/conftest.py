"""Fixtures of the workflow tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from workflow_runner import LOCAL_PROFILE, TEST_CONFIG, snakemake


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """The tiny test DAG run to the end once, with the local profile."""
    workdir = tmp_path_factory.mktemp("finished")
    snakemake(workdir, "--profile", str(LOCAL_PROFILE), "--configfile", str(TEST_CONFIG))
    return workdir
