"""A GPU-configured run never trains on the CPU unless the config says so (``run_on_cpu``)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cellseg.errors import CellsegError
from cellseg.training import Trainer, resolve_settings
from cellseg.training.device import training_device

REPO = Path(__file__).resolve().parents[2]


def gpu_config(tiny_config: dict, **training) -> dict:
    config = copy.deepcopy(tiny_config)
    config["training"]["defaults"].update({"gpus": 1, **training})
    return config


def cellseg_train(config: dict, tiny_data, tmp_path: Path, **environment: str):
    """``cellseg train`` of unet_2d in a subprocess, as a job runs it."""
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [
        sys.executable, "-m", "cellseg", "train", "--config", str(config_path),
        "--model", "unet", "--dim", "2d", "--run-dir", str(tmp_path / "run"),
        "--datasplit", str(tiny_data["datasplit"]),
        "--class-frequencies", str(tiny_data["class_frequencies"]),
    ]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"} | environment
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_a_gpu_run_that_cannot_use_cuda_stops_at_start_with_one_line(
    tiny_config, tiny_data, tmp_path
):
    # a node whose CUDA torch cannot use (here: no device visible), with a driver nvidia-smi
    # reports: the job stops before it opens any data, saying what decides it and what to do
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 470.57.02\n")
    fake.chmod(0o755)
    result = cellseg_train(
        gpu_config(tiny_config),
        tiny_data,
        tmp_path,
        CUDA_VISIBLE_DEVICES="",
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("cellseg train:")]
    assert len(errors) == 1, result.stderr[-3000:]
    line = errors[0]
    assert line.startswith("cellseg train: error: unet_2d: gpus: 1 configured but this process")
    assert f"torch {torch.__version__}" in line and "built for CUDA" in line
    assert "driver 470.57.02" in line and "CUDA_VISIBLE_DEVICES=''" in line
    assert "load the CUDA module" in line and "run_on_cpu: true" in line
    run = tmp_path / "run"
    assert not (run / "checkpoints").exists() and not (run / "tensorboard").exists()
    assert f"failed: CellsegError: {line.split('error: ', 1)[1]}" in (run / "train.log").read_text()


def test_without_nvidia_smi_the_error_says_so(tiny_config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("PATH", "")  # no nvidia-smi
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    settings = resolve_settings(gpu_config(tiny_config), "unet_2d")
    with pytest.raises(CellsegError) as error:
        training_device(settings)
    message = str(error.value)
    assert "\n" not in message
    assert "driver nvidia-smi not found" in message and "CUDA_VISIBLE_DEVICES=unset" in message


def test_fewer_visible_gpus_than_ranks_is_refused(tiny_config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    settings = resolve_settings(gpu_config(tiny_config, gpus=2), "unet_2d")
    assert training_device(settings, local_rank=0) == torch.device("cuda", 0)
    with pytest.raises(CellsegError, match=r"1 CUDA device\(s\) visible for local rank 1"):
        training_device(settings, local_rank=1)


def test_the_cpu_is_chosen_only_by_the_config(tiny_config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert training_device(resolve_settings(tiny_config, "unet_2d")).type == "cpu"  # gpus: 0
    rehearsal = resolve_settings(gpu_config(tiny_config, run_on_cpu=True), "unet_2d")
    assert training_device(rehearsal, local_rank=1) == torch.device("cpu")


def test_run_on_cpu_trains_a_gpu_configuration_on_the_cpu_and_says_so(
    tiny_config, tiny_data, tmp_path
):
    settings = resolve_settings(gpu_config(tiny_config, run_on_cpu=True), "unet_2d")
    trainer = Trainer(settings, tmp_path, tiny_data["datasplit"], tiny_data["class_frequencies"])
    assert trainer.run() == 0
    summary = torch.load(tmp_path / "best.pt", weights_only=False)["summary"]
    assert (summary["device"], summary["gpus"], summary["processes"]) == ("cpu", 0, 1)
    log = (tmp_path / "train.log").read_text()
    change = "run_on_cpu: gpus: 1 configured, running 1 CPU process(es) (no DDP) instead"
    assert change in log and log.index(change) < log.index("settings (config hash")
    # an execution key: the same weights-defining settings as the GPU run it rehearses
    assert (
        settings.config_hash() == resolve_settings(gpu_config(tiny_config), "unet_2d").config_hash()
    )
