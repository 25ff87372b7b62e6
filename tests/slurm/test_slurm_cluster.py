"""The real single-node SLURM, and the Longleaf profile driving it through the executor plugin.

No mocks: sbatch/squeue/scontrol talk to the slurmctld started by the `slurm_cluster` fixture,
and Snakemake submits through snakemake-executor-plugin-slurm with the Longleaf profile plus
only the test overrides (tests/slurm/profile/).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from cluster import option, sbatch_calls

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]


def test_sbatch_gpus_are_scheduled_and_counted(slurm_cluster, tmp_path: Path) -> None:
    out = tmp_path / "job.out"
    script = 'echo "gpus_on_node=$SLURM_GPUS_ON_NODE cuda=$CUDA_VISIBLE_DEVICES"'
    submitted = slurm_cluster.run(
        "sbatch", "--parsable", "--gpus=2", "--partition=l40-gpu", "--time=2", "--mem=100",
        f"--output={out}", f"--chdir={tmp_path}", "--wrap", script,
    )  # fmt: skip
    job_id = submitted.stdout.strip().split(";")[0]
    assert slurm_cluster.wait_for_job(job_id) == "COMPLETED", out.read_text()

    job = slurm_cluster.show_job(job_id)
    assert job["Partition"] == "l40-gpu"
    assert job["TresPerJob"] in {"gres:gpu:2", "gres/gpu:2"}
    assert job["TimeLimit"] == "00:02:00"
    assert job["MinMemoryNode"] == "100M"
    output = out.read_text()
    assert "gpus_on_node=2" in output
    if slurm_cluster.device_nodes:
        # SLURM picks the first two of the four gres devices and exports their indices
        assert "cuda=0,1" in output

    # the node has four: five are refused, so the gres really is counted and not ignored
    refused = slurm_cluster.run(
        "sbatch", "--parsable", "--gpus=5", "--partition=l40-gpu", "--wrap", "true", check=False
    )
    assert refused.returncode != 0
    assert "Requested node configuration is not available" in refused.stderr


SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input:
            "gpu_job.txt",
            "cpu_job.txt",


    rule cpu_job:
        output:
            "cpu_job.txt",
        shell:
            "scontrol show job --details $SLURM_JOB_ID > {output}"


    rule gpu_job:
        output:
            "gpu_job.txt",
        resources:
            gpu=2,
            mem_mb=100,
            runtime=5,
            slurm_partition="l40-gpu",
            qos="gpu_access",
        shell:
            "scontrol show job --details $SLURM_JOB_ID > {output}; "
            "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES >> {output}"
    """
)


def test_longleaf_profile_submits_through_the_plugin(slurm_cluster, tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    # this Snakefile has no config: drop the experiment configfile the Longleaf profile names;
    # no retries, so a broken submission fails at once instead of three times
    profile = slurm_cluster.make_test_profile(
        tmp_path / "profile", {"configfile": None, "retries": 0}
    )
    merged = yaml.safe_load((profile / "config.v8+.yaml").read_text())
    assert merged["executor"] == "slurm"
    # a rule that sets nothing is a small CPU job, never a GPU node for days
    assert merged["default-resources"]["slurm_partition"] == "general"

    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", str(profile), "--verbose"],
        cwd=tmp_path,
        env=slurm_cluster.env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:] + "\n" + slurm_cluster.log_tail()

    calls = sbatch_calls(log)
    assert set(calls) == {"gpu_job", "cpu_job"}, log[-4000:]
    gpu_call, cpu_call = calls["gpu_job"], calls["cpu_job"]
    # the rule's resources (as cellseg's rules set them from the config) win over the defaults
    assert option(gpu_call, "-p") == "l40-gpu"
    assert option(gpu_call, "--qos") == "gpu_access"
    assert option(gpu_call, "--gpus") == "2"
    assert option(gpu_call, "-t") == "5"
    assert option(gpu_call, "--mem") == "100"
    assert option(gpu_call, "--cpus-per-task") == "1"
    # no --signal (it would kill the job step) and no task count (one-node multi-GPU job)
    assert not any(t.startswith(("--signal", "--ntasks")) for t in gpu_call)
    # a CPU rule gets the (test) defaults and no GPU, on the CPU partition
    assert option(cpu_call, "-p") == "general"
    assert option(cpu_call, "--qos") == "normal"
    assert option(cpu_call, "-t") == "10"
    assert option(cpu_call, "--mem") == "200"
    assert option(cpu_call, "--gpus") is None

    # what SLURM itself recorded, read inside the running job
    gpu_text = (tmp_path / "gpu_job.txt").read_text()
    gpu_job = {k: v for k, v in re.findall(r"(\w+)=(\S+)", gpu_text)}
    assert gpu_job["Partition"] == "l40-gpu"
    assert gpu_job["TresPerJob"] in {"gres:gpu:2", "gres/gpu:2"}
    assert gpu_job["TimeLimit"] == "00:05:00"
    assert gpu_job["MinMemoryNode"] == "100M"
    assert gpu_job["JobState"] == "RUNNING"
    if slurm_cluster.device_nodes:
        assert "CUDA_VISIBLE_DEVICES=0,1" in gpu_text
    cpu_job = {k: v for k, v in re.findall(r"(\w+)=(\S+)", (tmp_path / "cpu_job.txt").read_text())}
    assert cpu_job["TimeLimit"] == "00:10:00"
    assert cpu_job["MinMemoryNode"] == "200M"
    assert "gpu" not in cpu_job.get("TresPerJob", "")
