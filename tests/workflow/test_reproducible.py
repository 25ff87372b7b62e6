"""The same config on the same machine gives the same comparison, bit for bit: README command 1
run twice from a clone's root on the tests' small config (the session's finished run in one fresh
clone, then from scratch in another)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from workflow_runner import TEST_CONFIG
from workflow_runner import run_in_clone as run

pytestmark = pytest.mark.minutes(2)  # order: tests/conftest.py


def test_a_rerun_from_scratch_gives_a_bit_identical_summary_csv(finished_run, clone):
    shutil.rmtree(clone / "results", ignore_errors=True)
    shutil.rmtree(clone / ".snakemake", ignore_errors=True)
    run(clone, "--cores", "2", "results/summary.csv", "--configfile", str(TEST_CONFIG))
    first = (finished_run / "results" / "summary.csv").read_bytes()
    assert (clone / "results" / "summary.csv").read_bytes() == first
    # what differs between runs is measured time, and it is kept apart
    summary = pd.read_csv(clone / "results" / "summary.csv")
    costs = pd.read_csv(clone / "results" / "costs.csv")
    assert "train_hours" not in summary and "inference_seconds" not in summary
    assert sorted(costs["model"]) == ["unet_2d", "unet_3d"]
    assert (costs["train_hours"] > 0).all()
