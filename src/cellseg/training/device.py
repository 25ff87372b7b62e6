"""Where a training process runs: its device and its place in the process group.

``training_device`` decides CPU or CUDA device ``local_rank`` (never a silent CPU fallback for a
GPU job); ``setup_distributed`` joins the process group ``torchrun`` started (NCCL on CUDA, gloo
on CPU). The trainer and the preflight's measurement share them.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import torch
import torch.distributed as dist

from cellseg.config.settings import TrainSettings
from cellseg.errors import CellsegError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def driver_version() -> str:
    """The NVIDIA driver version as ``nvidia-smi`` reports it, or why it is unknown."""
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi not found"
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"nvidia-smi failed ({type(error).__name__})"
    versions = sorted(set(result.stdout.split()))
    if result.returncode != 0 or not versions:
        first = (result.stderr or result.stdout).strip().splitlines()[:1]
        return f"nvidia-smi failed ({first[0] if first else f'exit status {result.returncode}'})"
    return ", ".join(versions)


def training_device(settings: TrainSettings, local_rank: int = 0) -> torch.device:
    """The device this rank trains on: the CPU for ``gpus: 0`` or ``run_on_cpu: true``, else
    CUDA device ``local_rank``.

    A GPU job never falls back to the CPU on its own: on a node where torch cannot see CUDA (a
    driver older than the wheel's CUDA, the wrong module, an empty ``CUDA_VISIBLE_DEVICES``) it
    would hold its GPUs for days while training on the CPU.

    Raises:
        CellsegError: ``gpus > 0`` without ``run_on_cpu`` and this process cannot use CUDA device
            ``local_rank``; one line with what decides it (torch and its CUDA build, the driver,
            ``CUDA_VISIBLE_DEVICES``) and what to do.
    """
    if settings.gpus <= 0 or settings.run_on_cpu:
        return torch.device("cpu")
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    if available and local_rank < count:
        return torch.device("cuda", local_rank)
    seen = (
        f"{count} CUDA device(s) visible for local rank {local_rank}"
        if available
        else "torch.cuda.is_available() is False"
    )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    raise CellsegError(
        f"{settings.key}: gpus: {settings.gpus} configured but this process cannot use CUDA "
        f"({seen}; torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none (a CPU build)'}; "
        f"driver {driver_version()}; CUDA_VISIBLE_DEVICES={'unset' if visible is None else repr(visible)}): "
        "load the CUDA module the job needs, or install a torch build that matches the driver, "
        "or set run_on_cpu: true to rehearse on CPU processes"
    )


def setup_distributed(settings: TrainSettings) -> tuple[int, int, torch.device]:
    """Join the process group started by ``torchrun`` (if any) and pick this rank's device
    (:func:`training_device`).

    Returns:
        ``(rank, world_size, device)``.

    Raises:
        CellsegError: a GPU run cannot use CUDA (:func:`training_device`).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = training_device(settings, local_rank)
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not is_distributed():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world_size, device
