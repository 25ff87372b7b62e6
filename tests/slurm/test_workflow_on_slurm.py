"""The cellseg workflow itself through the Longleaf profile on the real single-node SLURM.

The tiny test DAG (.test/config) with three models runs with the Longleaf profile plus only the
test overrides (tests/slurm/profile): every job is a real sbatch submission by
snakemake-executor-plugin-slurm. One scenario, run once for the module (``demo_on_slurm``), as a
user meets it: the first ``snakemake --profile … --keep-going`` of the whole DAG has one model's
training fail (``fail_after_steps``, outside the config hash), the others finish; the second run,
the fault removed, submits that model's jobs alone, resumes it from its checkpoint and writes the
summary. The tests below each check one part of it, so that a failure names what broke. The
time-limit retry and the preflight are in their own files (test_time_limit_on_slurm.py,
test_preflight_on_slurm.py), so that the long runs go to different pytest-xdist workers.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from cluster import SlurmCluster, option, sbatch_calls
from workflow_runs import REPO, overlay, run_workflow

# 480 s at load 10-15 where the demo DAG's run alone took 470 s (229 s on quiet CI), so about 4
pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.minutes(4)]

# two models on "GPUs" and one on the CPU; memory raised to the start-up check's estimate for
# two ranks (what this 2-CPU test node needs, nothing else); the node has no CUDA, so the GPU
# models say run_on_cpu (without it their jobs stop at start)
MODELS = {
    "unet_2d": {"gpus": 2, "run_on_cpu": True, "mem_mb": 4000, "runtime_min": 20},
    "unet_3d": {"gpus": 1, "run_on_cpu": True, "mem_mb": 3000},
    "resnet_2d": {"gpus": 0, "mem_mb": 3000},
}
# the model whose first training fails after 2 of its 4 steps (2 epochs of 2 iterations)
FAILED = "unet_3d"
FAULT = {"fail_after_steps": 2}  # an execution key: outside the config hash, so the fix resumes
FINISHED = [key for key in MODELS if key != FAILED]


@dataclass(frozen=True)
class Scenario:
    """The two runs of the demo DAG in ``workdir`` and what the first one left behind."""

    workdir: Path
    first: subprocess.CompletedProcess
    second: subprocess.CompletedProcess
    # the files under results/ after the first run (paths relative to results/)
    after_first: set[str]
    # the finished models' best.pt mtimes (ns) after the first run
    best_mtimes: dict[str, int]

    @staticmethod
    def log(run: subprocess.CompletedProcess) -> str:
        return run.stdout + run.stderr

    @staticmethod
    def calls(run: subprocess.CompletedProcess) -> dict[str, list[str]]:
        """The sbatch argv of each job ``run`` submitted, keyed by `{rule}_wildcards_{run}`."""
        return sbatch_calls(run.stdout + run.stderr)


@pytest.fixture(scope="module")
def demo_on_slurm(slurm_cluster: SlurmCluster, tmp_path_factory) -> Scenario:
    """The whole demo DAG with one model failing (``--keep-going``), then again with the fault
    removed, as a user reruns it; the tests read what both runs did."""
    workdir = tmp_path_factory.mktemp("demo_on_slurm")
    faulty = overlay(workdir, "faulty", models=MODELS | {FAILED: MODELS[FAILED] | FAULT})
    first = run_workflow(slurm_cluster, workdir, faulty, "--keep-going")
    results = workdir / "results"
    after_first = {str(path.relative_to(results)) for path in results.rglob("*")}
    best_mtimes = {
        key: (results / f"models/{key}/best.pt").stat().st_mtime_ns
        for key in FINISHED
        if f"models/{key}/best.pt" in after_first
    }
    second = run_workflow(slurm_cluster, workdir, overlay(workdir, "fixed", models=MODELS))
    return Scenario(workdir, first, second, after_first, best_mtimes)


def expected_options(rule: str, key: str, test_crops: int) -> dict[str, str | None]:
    """The sbatch options job ``{rule}_wildcards_{key}`` must be submitted with: the Longleaf
    profile's partition and QOS for its device, the model's or config/config.yaml's resources
    (an evaluate job's minutes count the datasplit's ``test_crops``)."""
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["resources"]
    if rule == "class_frequencies":
        return {"-p": "general", "--gpus": None}
    settings = MODELS[key]
    # the figures draw the slices evaluation kept (no model): visualize asks for no GPU
    on_gpu = settings["gpus"] > 0 and rule != "visualize"
    partition, qos = ("l40-gpu", "gpu_access") if on_gpu else ("general", "normal")
    options = {"-p": partition, "--qos": qos}
    if rule == "train":
        return options | {
            "--gpus": str(settings["gpus"]) if on_gpu else None,
            "--mem": str(settings["mem_mb"]),
            "-t": str(settings.get("runtime_min", 10)),
        }
    options |= {
        "--gpus": "1" if on_gpu else None,
        "--mem": str(base[rule]["mem_mb"]),
        "--cpus-per-task": str(base[rule]["cpus_per_task"]),
    }
    if rule == "evaluate":
        minutes = base[rule]["startup_min"] + base[rule]["minutes_per_crop"] * test_crops
        options["-t"] = str(round(minutes))
    return options


def test_the_first_run_fails_only_the_faulty_model(demo_on_slurm):
    first = demo_on_slurm.first
    log = demo_on_slurm.log(first)
    assert first.returncode != 0, "the failed training fails the run"
    assert "Error in rule train" in log, log[-6000:]
    files = demo_on_slurm.after_first
    for key in FINISHED:
        assert f"models/{key}/best.pt" in files, (key, log[-6000:])
    # the failed run stopped with a checkpoint and without a best model
    assert f"models/{FAILED}/checkpoints/last.pt" in files
    assert f"models/{FAILED}/best.pt" not in files
    train_log = (demo_on_slurm.workdir / f"results/models/{FAILED}/train.log").read_text()
    assert "failed: RuntimeError: fault injection: fail_after_steps=2 reached" in train_log
    # --keep-going: the finished models were evaluated and visualized; nothing after the failed
    # training was submitted, and the summary, which needs every model, was not written
    assert set(demo_on_slurm.calls(first)) == {"class_frequencies"} | {
        f"train_wildcards_{key}" for key in MODELS
    } | {f"{rule}_wildcards_{key}" for rule in ("evaluate", "visualize") for key in FINISHED}
    assert "summary.csv" not in files


def test_the_second_run_submits_the_failed_model_alone_and_resumes_it(demo_on_slurm):
    second = demo_on_slurm.second
    log = demo_on_slurm.log(second)
    assert second.returncode == 0, log[-6000:]
    # only the failed model's training and the jobs that need it are submitted again
    assert set(demo_on_slurm.calls(second)) == {
        f"{rule}_wildcards_{FAILED}" for rule in ("train", "evaluate", "visualize")
    }, log[-6000:]
    models = demo_on_slurm.workdir / "results/models"
    assert "resumed from" in (demo_on_slurm.workdir / f"logs/train/{FAILED}.log").read_text()
    assert list(pd.read_csv(models / f"{FAILED}/history.csv")["epoch"]) == [0, 1]
    for key in FINISHED:
        mtime = (models / f"{key}/best.pt").stat().st_mtime_ns
        assert mtime == demo_on_slurm.best_mtimes[key], f"{key} was trained again"


def test_every_job_is_submitted_with_its_resources(demo_on_slurm):
    # every job of the DAG that runs on a node was submitted, in one run or the other (the
    # bookkeeping rules ran on the "login node"), and each submission had its options: the
    # failed model's training both times
    submitted = [
        (name, argv)
        for run in (demo_on_slurm.first, demo_on_slurm.second)
        for name, argv in demo_on_slurm.calls(run).items()
    ]
    assert {name for name, _ in submitted} == {"class_frequencies"} | {
        f"{rule}_wildcards_{key}" for rule in ("train", "evaluate", "visualize") for key in MODELS
    }
    datasplit = demo_on_slurm.workdir / "results/datasplit.csv"
    test_crops = sum(line.startswith('"test"') for line in datasplit.open())
    for name, argv in submitted:
        rule, _, key = name.partition("_wildcards_")
        expected = expected_options(rule, key, test_crops)
        assert {flag: option(argv, flag) for flag in expected} == expected, name


def test_two_gpus_start_two_gloo_ranks_in_one_job(demo_on_slurm):
    # two "GPUs" on a CPU node: torchrun started two gloo ranks inside the one SLURM job
    train_log = (demo_on_slurm.workdir / "logs/train/unet_2d.log").read_text()
    assert "--nproc_per_node=2" in train_log


def test_the_summary_has_a_row_per_model(demo_on_slurm):
    results = demo_on_slurm.workdir / "results"
    summary = pd.read_csv(results / "summary.csv")
    # one row per model run, plus the chance baseline
    assert sorted(summary["model"][summary["model"].isin(MODELS)]) == sorted(MODELS)
    assert len(summary) == len(MODELS) + 1
    assert (results / "summary.md").is_file()
