"""The cellseg workflow itself through the Longleaf profile on the real single-node SLURM.

The tiny test DAG (.test/config) runs with the Longleaf profile plus only the test overrides
(tests/slurm/profile): every job is a real sbatch submission by snakemake-executor-plugin-slurm.
The failed-model rerun and the time-limit retry are in their own files
(test_failed_model_on_slurm.py, test_time_limit_on_slurm.py) so that the three long runs go to
different pytest-xdist workers.
"""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from cluster import option, sbatch_calls
from workflow_runs import REPO, overlay, run_workflow

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.minutes(3.5)]


def test_demo_dag_runs_through_the_longleaf_profile(slurm_cluster, tmp_path):
    # two models on "GPUs" and one on the CPU; memory raised to the start-up check's estimate
    # for two ranks (what this 2-CPU test node needs, nothing else); the node has no CUDA, so
    # the GPU models say run_on_cpu (without it their jobs stop at start)
    models = {
        "unet_2d": {"gpus": 2, "run_on_cpu": True, "mem_mb": 4000, "runtime_min": 20},
        "unet_3d": {"gpus": 1, "run_on_cpu": True, "mem_mb": 3000},
        "resnet_2d": {"gpus": 0, "mem_mb": 3000},
    }
    result = run_workflow(slurm_cluster, tmp_path, overlay(tmp_path, "slurm", models=models))
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
            # the figures draw the slices evaluation kept (no model): CPU partition, no GPU
            gpu = on_gpu and rule == "evaluate"
            where = (partition, qos) if gpu else ("general", "normal")
            assert (option(argv, "-p"), option(argv, "--qos")) == where, (rule, key)
            assert option(argv, "--gpus") == ("1" if gpu else None), (rule, key)
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
