"""A training job that reaches its SLURM time limit stops itself with a checkpoint (exit 75)
before SLURM kills it, and the profile's retry resumes and finishes it (the Longleaf profile on
the real single-node SLURM, the tiny test DAG)."""

from __future__ import annotations

import pandas as pd
import pytest
from workflow_runs import overlay, run_workflow

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.minutes(5.5)]


def test_job_hitting_its_time_limit_checkpoints_and_the_retry_finishes(slurm_cluster, tmp_path):
    # a 2-minute SLURM limit and a 1-minute margin: the trainer stops itself 60 s after its
    # start (its start-up included: 5-20 s on this node) with a checkpoint (exit 75), long before
    # SLURM would kill it; the profile's retries resume it. A whole attempt (the job's own
    # Snakemake and start-up, 60 s, the exit: 70-95 s) ends before the executor plugin's status
    # check at about 110 s after the submission (its checks back off by 10 s each: 2, 14, 36,
    # 68, 110, 162 s), where a 75 s budget let a loaded attempt slip to the check at 162 s.
    # 160 steps that each also sleep 0.4 s (inject_step_delay_s, outside the config hash) take
    # at least 64 s on any machine, so the first attempt cannot finish inside its 60 s: the stop
    # is certain, and the steps' own compute is small (1600 undelayed steps did it before, sure
    # only below 29 steps/s, and cost about 4 attempts of CPU on a loaded node); the second
    # attempt usually finishes (about 90 steps fit the first)
    slow = {
        "runtime_min": 2,
        "time_budget_margin_min": 1.0,
        "max_epochs": 2,
        "iterations_per_epoch": 80,
        "inject_step_delay_s": 0.4,
    }
    config = overlay(tmp_path, "short", models={"unet_2d": slow})
    result = run_workflow(
        slurm_cluster, tmp_path, config, "results/models/unet_2d/best.pt", retries=20, timeout=2400
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    # Snakemake clears the rule's log before a retry; the run directory's train.log keeps all
    train_log = (tmp_path / "results/models/unet_2d/train.log").read_text()
    # SLURM_JOB_END_TIME minus the margin where SLURM sets it (not the test node's 22.05), else
    # the rule's budget counted from the training process's start
    assert (
        "SLURM_JOB_END_TIME (" in train_log and "minus 1 min margin reached" in train_log
    ) or "time budget of 1.0 min from the job's start reached" in train_log
    assert "resumed from" in train_log
    attempts = sorted(
        (tmp_path / ".snakemake/slurm_logs/rule_train/unet_2d").glob("*.log"),
        key=lambda p: int(p.stem),
    )
    assert len(attempts) >= 2, "the job was submitted again after stopping itself"
    assert "non-zero exit status 75" in attempts[0].read_text()
    assert len(pd.read_csv(tmp_path / "results/models/unet_2d/history.csv")) == 2
