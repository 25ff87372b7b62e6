"""config/experiments/tta.yaml through the ``snakemake`` command in a clone's root: on the demo
it trains nothing new (the default runs, each evaluated once per TTA mode), and on the tests' tiny
config, in a copy of the session's finished run, it runs to the end with every mode in the
metrics and the comparison in summary.md."""

from __future__ import annotations

import pandas as pd
import pytest
from workflow_runner import TEST_CONFIG, planned_jobs
from workflow_runner import run_in_clone as run

pytestmark = pytest.mark.minutes(2)  # order: tests/conftest.py

TTA = "config/experiments/tta.yaml"


def test_the_tta_preset_plans_the_default_runs_only(clone):
    default = run(clone, "-n", "--cores", "2").stdout
    study = run(clone, "-n", "--cores", "2", "--configfile", TTA).stdout
    runs = set(planned_jobs(default, "train"))
    assert len(runs) == 8
    # the same training runs (no variant, nothing retrained for TTA), each evaluated
    assert set(planned_jobs(study, "train")) == runs
    assert set(planned_jobs(study, "evaluate")) == runs
    assert list(planned_jobs(study, "summary")) == [""]


def test_the_tta_preset_runs_and_compares_every_mode(finished_clone):
    clone = finished_clone  # the tiny config's models trained, as after README command 1
    one = clone / "config" / "experiments" / "one_model.yaml"
    one.write_text("select_models: [unet_2d]\n")
    run(clone, "--cores", "2", "--configfile", str(TEST_CONFIG), TTA, str(one))
    metrics = pd.read_csv(clone / "results" / "metrics" / "unet_2d.csv")
    assert list(dict.fromkeys(metrics["tta"])) == ["none", "mirror", "mirror_rot90"]
    assert (metrics["predicted_voxels"] > 0).all()
    summary = (clone / "results" / "summary.md").read_text()
    assert "## Test-time augmentation" in summary
    for mode in ("none", "mirror", "mirror_rot90"):
        assert f"| unet_2d | {mode} |" in summary
    costs = pd.read_csv(clone / "results" / "costs.csv")
    assert costs["tta"].tolist() == ["none"] and costs["inference_us_per_voxel"].iloc[0] > 0
