"""A model whose training fails on SLURM is submitted again alone and resumes from its
checkpoint, while the model that finished is left as it was (the Longleaf profile on the real
single-node SLURM, the tiny test DAG)."""

from __future__ import annotations

import pandas as pd
import pytest
from workflow_runs import overlay, run_workflow, train_submissions

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.minutes(3)]


def test_failed_model_is_rerun_alone_and_resumes(slurm_cluster, tmp_path):
    targets = ["results/models/unet_2d/best.pt", "results/models/unet_3d/best.pt"]
    faulty = overlay(tmp_path, "faulty", models={"unet_2d": {}, "unet_3d": {"fail_after_steps": 2}})
    first = run_workflow(slurm_cluster, tmp_path, faulty, *targets, "--keep-going")
    assert first.returncode != 0
    models = tmp_path / "results/models"
    assert (models / "unet_2d/best.pt").is_file() and not (models / "unet_3d/best.pt").exists()
    assert (models / "unet_3d/checkpoints/last.pt").is_file()
    finished = (models / "unet_2d/best.pt").stat().st_mtime_ns

    fixed = overlay(tmp_path, "fixed", models={"unet_2d": {}, "unet_3d": {}})
    second = run_workflow(slurm_cluster, tmp_path, fixed, *targets)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-6000:]
    assert set(train_submissions(log)) == {"unet_3d"}, "only the failed model is submitted again"
    assert "resumed from" in (tmp_path / "logs/train/unet_3d.log").read_text()
    assert (models / "unet_2d/best.pt").stat().st_mtime_ns == finished
    assert list(pd.read_csv(models / "unet_3d/history.csv")["epoch"]) == [0, 1]
