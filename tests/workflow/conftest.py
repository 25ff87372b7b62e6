"""Fixtures of the workflow tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from workflow_runner import TEST_CONFIG, build_once, make_clone, run_in_clone


def _readme_run(directory: Path) -> None:
    root = make_clone(directory / "cellseg")
    run_in_clone(root, "--cores", "2", "--configfile", str(TEST_CONFIG))


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone in which README command 1 ran the tests' tiny config to the end
    (``snakemake --cores 2 --configfile .test/config/config.yaml`` from its root).

    Built once per session, not once per pytest-xdist worker (about 100 s of CPU on 2 cores):
    the first worker that needs it runs it while the others wait (:func:`build_once`, in the
    session's directory above each worker's own). Shared: copy it before changing anything.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return build_once(base / "finished", _readme_run) / "cellseg"


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh clone of this working tree, shared by one test module; ``cellmap/`` is an empty
    data root for the seed experiment's dry runs (which read no data)."""
    root = make_clone(tmp_path_factory.mktemp("clone") / "cellseg")
    (root / "cellmap").mkdir()
    return root


@pytest.fixture(scope="module")
def finished_clone(finished_run: Path, tmp_path_factory) -> Path:
    """A copy of the session's finished run (a fresh clone in which the tiny config ran to the
    end), for one test module to change: what it re-runs starts from trained models, as a
    user's second command does."""
    root = tmp_path_factory.mktemp("finished_clone") / "cellseg"
    shutil.copytree(finished_run, root, symlinks=True)
    return root
