"""The same config on the same machine gives the same comparison, bit for bit: README command 1
run twice from a clone's root on the tests' small config."""

from __future__ import annotations

import shutil

import pandas as pd
from workflow_runner import TEST_CONFIG
from workflow_runner import run_in_clone as run


def test_a_rerun_from_scratch_gives_a_bit_identical_summary_csv(clone):
    outputs = []
    for _ in range(2):
        shutil.rmtree(clone / "results", ignore_errors=True)
        shutil.rmtree(clone / ".snakemake", ignore_errors=True)
        run(clone, "--cores", "2", "results/summary.csv", "--configfile", str(TEST_CONFIG))
        outputs.append((clone / "results" / "summary.csv").read_bytes())
    assert outputs[0] == outputs[1]
    # what differs between runs is measured time, and it is kept apart
    summary = pd.read_csv(clone / "results" / "summary.csv")
    costs = pd.read_csv(clone / "results" / "costs.csv")
    assert "train_hours" not in summary and "inference_seconds" not in summary
    assert sorted(costs["model"]) == ["unet_2d", "unet_3d"]
    assert (costs["train_hours"] > 0).all()
