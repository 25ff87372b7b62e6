"""A local run bounds its GPU jobs by the GPUs this machine has (issue 21): from a clone's root,
through ``snakemake --profile config/profiles/local``, with a stand-in ``nvidia-smi`` that lists
one GPU (the machines that run these tests have none)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from workflow_runner import run_in_clone as run

from cellseg.config.resources import check_local_gpus, visible_gpu_count
from cellseg.config.settings import TrainSettings
from cellseg.errors import CellsegError

pytestmark = pytest.mark.minutes(1)  # order: tests/conftest.py

LOCAL = "config/profiles/local"
ONE_GPU = "GPU 0: NVIDIA L40S (UUID: GPU-00000000-0000-0000-0000-000000000000)"


def fake_nvidia_smi(directory: Path, listing: str) -> Path:
    """A directory holding an ``nvidia-smi`` whose ``-L`` prints ``listing``."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'END'\n{listing}\nEND\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return directory


@pytest.mark.parametrize(
    ("visible", "expected"),
    [("0,1", 2), ("", 0), ("-1", 0), ("0,-1,1", 1), ("GPU-abc,GPU-def,GPU-ghi", 3)],
)
def test_cuda_visible_devices_decides_when_set(visible: str, expected: int, tmp_path: Path):
    # nvidia-smi would list two GPUs: the variable wins, as it does for CUDA
    path = fake_nvidia_smi(tmp_path, f"{ONE_GPU}\n{ONE_GPU.replace('GPU 0', 'GPU 1')}")
    assert visible_gpu_count({"CUDA_VISIBLE_DEVICES": visible, "PATH": str(path)}) == expected


def test_nvidia_smi_lists_the_gpus_else_none(tmp_path: Path):
    listing = f"{ONE_GPU}\n{ONE_GPU.replace('GPU 0', 'GPU 1')}\n  MIG 1g.10gb Device 0: (UUID: x)"
    assert visible_gpu_count({"PATH": str(fake_nvidia_smi(tmp_path / "two", listing))}) == 2
    assert visible_gpu_count({"PATH": str(tmp_path / "empty")}) == 0


def test_a_job_asking_for_more_gpus_than_present_is_refused_by_name():
    settings = TrainSettings(model="unet", dim="2d", gpus=2)
    with pytest.raises(CellsegError, match=r"models\.unet_2d\.gpus: 2 GPUs .* has 1"):
        check_local_gpus(settings, 1)
    check_local_gpus(settings, 2)
    check_local_gpus(settings, 0)  # none visible: the job itself says why it cannot use CUDA


@pytest.fixture(scope="module")
def one_gpu_path(tmp_path_factory) -> str:
    directory = fake_nvidia_smi(tmp_path_factory.mktemp("bin"), ONE_GPU)
    return f"{directory}{os.pathsep}{os.environ['PATH']}"


def test_the_local_profile_provides_as_many_gpus_as_the_machine_has(
    clone: Path, one_gpu_path: str, monkeypatch
):
    monkeypatch.setenv("PATH", one_gpu_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # --verbose: Snakemake prints the resources its scheduler holds before it selects jobs
    result = run(clone, "--profile", LOCAL, "--verbose", "results/datasplit.csv")
    assert "'gpu': 1," in scheduler_resources(result.stderr), result.stderr[-3000:]
    # an explicit bound wins
    (clone / "results" / "datasplit.csv").unlink()
    result = run(
        clone, "--profile", LOCAL, "--verbose", "results/datasplit.csv", "--resources", "gpu=3"
    )
    assert "'gpu': 3," in scheduler_resources(result.stderr), result.stderr[-3000:]


def scheduler_resources(log: str) -> str:
    """The first "Resources before job selection" line of a verbose Snakemake log."""
    return next(line for line in log.splitlines() if "Resources before job selection" in line)


def test_a_model_asking_for_more_gpus_than_present_is_refused_when_planned(
    clone: Path, one_gpu_path: str, monkeypatch
):
    monkeypatch.setenv("PATH", one_gpu_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    result = run(
        clone, "--profile", LOCAL, "-n", "--config", "models={'unet_2d': {'gpus': 2}}", check=False
    )
    assert result.returncode != 0
    # a dry run prints its log on stdout
    assert "models.unet_2d.gpus: 2 GPUs asked for, but this machine has 1" in (
        result.stdout + result.stderr
    )
