"""The cellseg workflow itself through the Longleaf profile on the real single-node SLURM.

The tiny test DAG (.test/config) runs with the Longleaf profile plus only the test overrides
(tests/slurm/profile): every job is a real sbatch submission by snakemake-executor-plugin-slurm.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from cluster import option, sbatch_calls

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
TEST_CONFIG = REPO / ".test" / "config" / "config.yaml"


def overlay(tmp_path: Path, name: str, **models: dict) -> Path:
    """The test config with the given model entries (GPU counts, faults, budgets)."""
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["models"] = models
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_workflow(
    cluster, workdir: Path, config: Path, *targets: str, retries: int = 0, timeout: int = 1200
) -> subprocess.CompletedProcess:
    profile = cluster.make_test_profile(
        workdir / "profile",
        {
            "configfile": str(config),
            "retries": retries,
        },
    )
    environment = cluster.env | {"PYTHONPATH": str(REPO / "src")}
    environment["PATH"] = f"{Path(sys.executable).parent}:{environment['PATH']}"
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
         "--profile", str(profile), *targets],
        cwd=workdir, env=environment, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def train_submissions(log: str) -> dict[str, list[str]]:
    """argv of each `train` sbatch call, keyed by `{model}_{dim}`."""
    prefix = "train_wildcards_"
    return {k.removeprefix(prefix): v for k, v in sbatch_calls(log).items() if k.startswith(prefix)}


def test_demo_dag_runs_through_the_longleaf_profile(slurm_cluster, tmp_path):
    # two models on "GPUs" and one on the CPU; memory raised to the start-up check's estimate
    # for two ranks (what this 2-CPU test node needs, nothing else); the node has no CUDA, so
    # the GPU models say run_on_cpu (without it their jobs stop at start)
    models = {
        "unet_2d": {"gpus": 2, "run_on_cpu": True, "mem_mb": 4000, "runtime_min": 20},
        "unet_3d": {"gpus": 1, "run_on_cpu": True, "mem_mb": 3000},
        "resnet_2d": {"gpus": 0, "mem_mb": 3000},
    }
    result = run_workflow(slurm_cluster, tmp_path, overlay(tmp_path, "slurm", **models))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:] + slurm_cluster.log_tail()
    calls = sbatch_calls(log)
    # only these are submitted; the bookkeeping rules ran on the "login node"
    assert {name.split("_wildcards_")[0] for name in calls} == {
        "train", "evaluate", "visualize", "class_frequencies",
    }, sorted(calls)  # fmt: skip
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["resources"]
    for key, settings in models.items():
        on_gpu = settings["gpus"] > 0
        partition, qos = ("l40-gpu", "gpu_access") if on_gpu else ("general", "normal")
        argv = calls[f"train_wildcards_{key}"]
        assert (option(argv, "-p"), option(argv, "--qos")) == (partition, qos), key
        assert option(argv, "--gpus") == (str(settings["gpus"]) if on_gpu else None)
        assert option(argv, "--mem") == str(settings["mem_mb"])
        assert option(argv, "-t") == str(settings.get("runtime_min", 10))
        for rule in ("evaluate", "visualize"):
            argv = calls[f"{rule}_wildcards_{key}"]
            assert (option(argv, "-p"), option(argv, "--qos")) == (partition, qos), (rule, key)
            assert option(argv, "--gpus") == ("1" if on_gpu else None), (rule, key)
            assert option(argv, "--mem") == str(base[rule]["mem_mb"]), (rule, key)
            assert option(argv, "--cpus-per-task") == str(base[rule]["cpus_per_task"])
        # the evaluate job's runtime counts the datasplit's test crops
        test_crops = sum(
            line.startswith('"test"') for line in (tmp_path / "results/datasplit.csv").open()
        )
        expected = (
            base["evaluate"]["startup_min"] + base["evaluate"]["minutes_per_crop"] * test_crops
        )
        assert option(calls[f"evaluate_wildcards_{key}"], "-t") == str(round(expected))
    argv = calls["class_frequencies"]
    assert (option(argv, "-p"), option(argv, "--gpus")) == ("general", None)
    # two "GPUs" on a CPU node: torchrun started two gloo ranks inside the one SLURM job
    assert "--nproc_per_node=2" in (tmp_path / "logs/train/unet_2d.log").read_text()
    summary = pd.read_csv(tmp_path / "results/summary.csv")
    # one row per model run, plus the chance baseline
    assert sorted(summary["model"][summary["model"].isin(models)]) == sorted(models)
    assert len(summary) == len(models) + 1
    assert (tmp_path / "results/summary.md").is_file()


def test_failed_model_is_rerun_alone_and_resumes(slurm_cluster, tmp_path):
    targets = ["results/models/unet_2d/best.pt", "results/models/unet_3d/best.pt"]
    faulty = overlay(tmp_path, "faulty", unet_2d={}, unet_3d={"fail_after_steps": 2})
    first = run_workflow(slurm_cluster, tmp_path, faulty, *targets, "--keep-going")
    assert first.returncode != 0
    models = tmp_path / "results/models"
    assert (models / "unet_2d/best.pt").is_file() and not (models / "unet_3d/best.pt").exists()
    assert (models / "unet_3d/checkpoints/last.pt").is_file()
    finished = (models / "unet_2d/best.pt").stat().st_mtime_ns

    fixed = overlay(tmp_path, "fixed", unet_2d={}, unet_3d={})
    second = run_workflow(slurm_cluster, tmp_path, fixed, *targets)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-6000:]
    assert set(train_submissions(log)) == {"unet_3d"}, "only the failed model is submitted again"
    assert "resumed from" in (tmp_path / "logs/train/unet_3d.log").read_text()
    assert (models / "unet_2d/best.pt").stat().st_mtime_ns == finished
    assert list(pd.read_csv(models / "unet_3d/history.csv")["epoch"]) == [0, 1]


def test_job_hitting_its_time_limit_checkpoints_and_the_retry_finishes(slurm_cluster, tmp_path):
    # a 2-minute SLURM limit and a 0.75-minute margin: the trainer stops itself 75 s after the
    # job's start (start-up included: 15-40 s on this node) with a checkpoint (exit 75), long
    # before SLURM would kill it; the profile's retries resume it. 1000 steps: 2 attempts at the
    # ~10 steps/s of a quiet 2-core node (200 steps took 26 s), more on a loaded one
    slow = {
        "runtime_min": 2,
        "time_budget_margin_min": 0.75,
        "max_epochs": 2,
        "iterations_per_epoch": 500,
    }
    config = overlay(tmp_path, "short", unet_2d=slow)
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
        "SLURM_JOB_END_TIME (" in train_log and "minus 0.75 min margin reached" in train_log
    ) or "time budget of 1.2 min from the job's start reached" in train_log
    assert "resumed from" in train_log
    attempts = sorted(
        (tmp_path / ".snakemake/slurm_logs/rule_train/unet_2d").glob("*.log"),
        key=lambda p: int(p.stem),
    )
    assert len(attempts) >= 2, "the job was submitted again after stopping itself"
    assert "non-zero exit status 75" in attempts[0].read_text()
    assert len(pd.read_csv(tmp_path / "results/models/unet_2d/history.csv")) == 2
