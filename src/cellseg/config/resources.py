"""What each workflow job asks its executor for, and whether a training job fits its memory.

Every job's resources come from the config (``resources`` section and each model's training
settings), so that a cluster run is a config edit, never a profile or rule edit:

* ``train``: the model's ``gpus``, ``cpus_per_task``, ``mem_mb`` and ``runtime_min``.
* ``evaluate``: ``resources.evaluate.gpus`` GPUs (none for a model trained on 0 GPUs), memory
  from the measured peak of one crop, runtime from a measured per-crop time times the number of
  test crops in the datasplit.
* ``visualize``, ``class_frequencies``: fixed requests from their ``resources`` entries, no GPU
  (neither runs a model: the figures draw the slices evaluation kept).

A job asking for a GPU goes to ``resources.gpu_partition``; every other job to
``resources.cpu_partition``, so a CPU job never holds a GPU node. Retries (``attempt`` > 1) of
evaluation and figure jobs ask for proportionally more memory and time: the usual reason such
a job fails on a cluster is an out-of-memory kill or a time limit. A training retry resumes from
its checkpoint with the same request.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellseg.classes import NUM_CLASSES
from cellseg.config.settings import TrainSettings
from cellseg.errors import CellsegError

PREFETCH_FACTOR = 2
"""Batches each loader worker keeps ready (torch's ``DataLoader`` default, which training uses)."""


@dataclass(frozen=True)
class JobResources:
    """One job's request.

    Attributes:
        gpus: GPUs (``--gpus``); 0 for a CPU job.
        cpus_per_task: CPUs (``--cpus-per-task``), also the job's threads.
        mem_mb: memory of the whole job, MB (``--mem``).
        runtime_min: wall-time limit, minutes (``-t``).
        partition, qos: where the job is queued (``-p``, ``--qos``).
    """

    gpus: int
    cpus_per_task: int
    mem_mb: int
    runtime_min: int
    partition: str
    qos: str


def _placement(section: Mapping[str, Any], gpus: int) -> tuple[str, str]:
    kind = "gpu" if gpus > 0 else "cpu"
    return str(section[f"{kind}_partition"]), str(section[f"{kind}_qos"])


def _job(
    section: Mapping[str, Any], gpus: int, cpus: int, mem_mb: float, runtime_min: float
) -> JobResources:
    partition, qos = _placement(section, gpus)
    return JobResources(gpus, int(cpus), math.ceil(mem_mb), math.ceil(runtime_min), partition, qos)


def _fixed_job(
    section: Mapping[str, Any], rule: Mapping[str, Any], gpus: int, attempt: int
) -> JobResources:
    """A job with a fixed request (``cpus_per_task``, ``mem_mb``, ``runtime_min``), its memory
    and runtime × ``attempt``."""
    return _job(
        section,
        gpus,
        rule["cpus_per_task"],
        rule["mem_mb"] * attempt,
        rule["runtime_min"] * attempt,
    )


def training_resources(config: Mapping[str, Any], settings: TrainSettings) -> JobResources:
    """A ``train`` job: the model's own request (its ``gpus`` decide the partition)."""
    return _job(
        config["resources"],
        settings.gpus,
        settings.cpus_per_task,
        settings.mem_mb,
        settings.runtime_min,
    )


def count_test_crops(datasplit: Path | str) -> int:
    """Rows of the ``test`` split in a datasplit CSV (its first column is the split)."""
    with open(datasplit, newline="", encoding="utf-8-sig") as handle:  # a spreadsheet's BOM
        return sum(1 for row in csv.reader(handle) if row and row[0].strip() == "test")


def evaluation_resources(
    config: Mapping[str, Any], settings: TrainSettings, test_crops: int, attempt: int = 1
) -> JobResources:
    """An ``evaluate`` job of one model over ``test_crops`` crops.

    Runtime (minutes) = (``startup_min`` + ``minutes_per_crop`` × ``test_crops`` × passes) ×
    ``attempt``, passes the forward passes per window of every test-time augmentation scored
    (:func:`tta_passes`; 1 without TTA); memory (MB) = ``mem_mb`` × ``attempt``. A model trained
    on 0 GPUs is evaluated on the CPU partition whatever ``resources.evaluate.gpus`` says.
    """
    section = config["resources"]
    rule = section["evaluate"]
    gpus = min(int(rule["gpus"]), 1) if settings.gpus > 0 else 0
    passes = tta_passes(config.get("inference") or {}, settings.dim)
    runtime = (rule["startup_min"] + rule["minutes_per_crop"] * test_crops * passes) * attempt
    return _job(section, gpus, rule["cpus_per_task"], rule["mem_mb"] * attempt, runtime)


TTA_PASSES: dict[str, dict[str, int]] = {
    "none": {"2d": 1, "3d": 1},
    "mirror": {"2d": 4, "3d": 8},
    "mirror_rot90": {"2d": 8, "3d": 16},
}
"""Forward passes per window of each test-time augmentation (``cellseg.tta``; kept here without
torch, a test keeps the two equal)."""


def tta_passes(inference: Mapping[str, Any], dim: str) -> int:
    """Forward passes per window of an evaluation: ``inference.tta`` and every other mode of
    ``inference.tta_compare`` (``false`` / ``off``: ``none``)."""
    names = [inference.get("tta", "none"), *(inference.get("tta_compare") or ())]
    modes = dict.fromkeys("none" if m in (None, False, "off") else str(m) for m in names)
    return sum(TTA_PASSES[m][dim] for m in modes if m in TTA_PASSES)


def figure_resources(config: Mapping[str, Any], attempt: int = 1) -> JobResources:
    """A ``visualize`` job: ``resources.visualize``, no GPU (it draws the slices evaluation kept,
    :mod:`cellseg.figure_slices`: no model runs); memory and runtime × ``attempt``."""
    section = config["resources"]
    return _fixed_job(section, section["visualize"], 0, attempt)


def class_frequency_resources(config: Mapping[str, Any], attempt: int = 1) -> JobResources:
    """The ``class_frequencies`` job (CPU: it streams every training crop's labels once)."""
    section = config["resources"]
    return _fixed_job(section, section["class_frequencies"], 0, attempt)


# --- does a training job fit its memory? ------------------------------------------------------


def batch_mb(settings: TrainSettings) -> float:
    """Host memory of one training batch, MB: ``batch_per_gpu`` × patch voxels × (4 bytes of
    float32 image + 14 bytes of the compact uint8 target)."""
    voxels = math.prod(settings.patch_shape)
    return settings.batch_per_gpu * voxels * (4 + NUM_CLASSES) / 2**20


def training_host_memory_mb(
    config: Mapping[str, Any], settings: TrainSettings, uses_cuda: bool = False
) -> float:
    """Estimated peak host memory (MB) of a training job.

    Every rank (``max(gpus, 1)`` processes) runs ``num_workers`` loader workers; the rank and
    each worker hold their own array cache of up to ``cache_mb`` (the cache is per process), and
    each worker keeps ``PREFETCH_FACTOR`` batches ready (in shared memory) while the rank holds
    the batch it trains on and its pinned copy, so

        ranks × ((num_workers + 1) × cache_mb + rank_mb (+ cuda_mb) + num_workers × worker_mb
                 + (PREFETCH_FACTOR × num_workers + 2) × batch_mb)

    where ``resources.host_memory.rank_mb`` (a rank without its cache and batches: Python,
    torch, the model's host copy) and ``worker_mb`` (a loader worker without its cache) are
    measured by ``bench/memory.py``, and ``cuda_mb`` (the CUDA context and allocator on the
    host) counts when the ranks drive GPUs.
    """
    return max(settings.gpus, 1) * sum(
        mb for _, mb in _rank_host_memory(config, settings, uses_cuda)
    )


def _rank_host_memory(
    config: Mapping[str, Any], settings: TrainSettings, uses_cuda: bool
) -> list[tuple[str, float]]:
    """One rank's terms of :func:`training_host_memory_mb`: (the term with its figures, MB)."""
    host = config["resources"]["host_memory"]
    workers = settings.num_workers
    held_batches = PREFETCH_FACTOR * workers + 2
    terms: list[tuple[str, float]] = [
        (f"(num_workers {workers} + 1) × cache_mb {settings.cache_mb:g}",
         (workers + 1) * settings.cache_mb),
        (f"rank_mb {host['rank_mb']}", host["rank_mb"]),
    ]  # fmt: skip
    if uses_cuda:
        terms.append((f"cuda_mb {host['cuda_mb']}", host["cuda_mb"]))
    return [
        *terms,
        (f"num_workers × worker_mb {host['worker_mb']}", workers * host["worker_mb"]),
        (f"{held_batches} batches × {batch_mb(settings):.0f} MB",
         held_batches * batch_mb(settings)),
    ]  # fmt: skip


def host_memory_formula(
    config: Mapping[str, Any], settings: TrainSettings, uses_cuda: bool = False
) -> str:
    """:func:`training_host_memory_mb`'s formula with this job's figures, every term of it (MB)."""
    terms = " + ".join(term for term, _ in _rank_host_memory(config, settings, uses_cuda))
    return f"ranks {max(settings.gpus, 1)} × ({terms})"


def ranks_use_cuda(settings: TrainSettings, cuda_available: bool | None = None) -> bool:
    """Whether the training ranks drive GPUs: the run asks for GPUs, is not a ``run_on_cpu``
    rehearsal, and CUDA is available (``cuda_available``; default: asked of torch here)."""
    if settings.gpus <= 0 or settings.run_on_cpu:
        return False
    if cuda_available is None:
        import torch  # here, not at the top: the workflow plans jobs without torch

        cuda_available = torch.cuda.is_available()
    return cuda_available


def job_memory_limit_mb(environ: Mapping[str, str] | None = None) -> int | None:
    """The memory SLURM gives this job (MB), or None outside SLURM.

    ``SLURM_MEM_PER_NODE`` (``--mem``) or ``SLURM_MEM_PER_CPU`` × ``SLURM_CPUS_ON_NODE``.
    """
    environ = os.environ if environ is None else environ
    if environ.get("SLURM_MEM_PER_NODE"):
        return int(environ["SLURM_MEM_PER_NODE"])
    if environ.get("SLURM_MEM_PER_CPU") and environ.get("SLURM_CPUS_ON_NODE"):
        return int(environ["SLURM_MEM_PER_CPU"]) * int(environ["SLURM_CPUS_ON_NODE"])
    return None


def check_training_fits(
    config: Mapping[str, Any],
    settings: TrainSettings,
    environ: Mapping[str, str] | None = None,
    uses_cuda: bool | None = None,
) -> str | None:
    """Refuse a training job whose estimated memory exceeds its request; warn when it runs more
    processes than it has CPUs.

    The memory limit is SLURM's when the job runs under SLURM, else the model's ``mem_mb``; a
    job over it would be killed, possibly days in. More processes (ranks × (workers + 1)) than
    ``cpus_per_task`` only slow the loader down, so that is a warning. Both off with
    ``resources.host_memory.check: false``. ``uses_cuda`` (default: :func:`ranks_use_cuda`, the
    model asks for GPUs, is not ``run_on_cpu`` and CUDA is available here) adds ``cuda_mb`` per
    rank.

    Returns:
        a one-line warning about the processes, or None.

    Raises:
        CellsegError: one line naming the model, the figures and the keys to change.
    """
    host = config["resources"]["host_memory"]
    if not host.get("check", True):
        return None
    key = settings.key
    limit = job_memory_limit_mb(environ)
    where = "SLURM's --mem" if limit is not None else f"models.{key}.mem_mb"
    limit = settings.mem_mb if limit is None else limit
    if uses_cuda is None:
        uses_cuda = ranks_use_cuda(settings)
    needed = training_host_memory_mb(config, settings, uses_cuda)
    ranks = max(settings.gpus, 1)
    if needed > limit:
        raise CellsegError(
            f"models.{key}: an estimated {needed:.0f} MB of host memory "
            f"({host_memory_formula(config, settings, uses_cuda)}) exceeds {where} = {limit} MB; "
            "lower cache_mb or num_workers, or raise mem_mb "
            "(resources.host_memory.check: false to skip)"
        )
    processes = ranks * (settings.num_workers + 1)
    if processes > settings.cpus_per_task:
        return (
            f"warning: models.{key}: {processes} processes (ranks {ranks} × (num_workers "
            f"{settings.num_workers} + 1)) share cpus_per_task = {settings.cpus_per_task} CPUs, "
            "so the loader slows down; lower num_workers or raise cpus_per_task"
        )
    return None


# --- whole-dataset prediction -----------------------------------------------------------------


def prediction_resources(
    config: Mapping[str, Any], settings: TrainSettings, attempt: int = 1, pyramid: bool = False
) -> JobResources:
    """A ``predict_blocks`` job (one range of a dataset's blocks) or, with ``pyramid``, the
    dataset's ``predict_pyramid`` job.

    Block jobs ask for ``predict.resources``: its GPU only for a model trained on GPUs (a 0-GPU
    model predicts on the CPU partition, as it is evaluated); the pyramid job asks for
    ``predict.pyramid_resources`` on the CPU partition (it only reads and averages the output).
    Memory and runtime × ``attempt``.
    """
    section = config["resources"]
    rule = config["predict"]["pyramid_resources" if pyramid else "resources"]
    gpus = 0 if pyramid or settings.gpus == 0 else min(int(rule["gpus"]), 1)
    return _fixed_job(section, rule, gpus, attempt)


# --- GPUs of a local run ----------------------------------------------------------------------


def visible_gpu_count(environ: Mapping[str, str] | None = None) -> int:
    """GPUs a job started on this machine can use, without importing torch (the workflow plans
    jobs without it).

    ``CUDA_VISIBLE_DEVICES`` when set (CUDA stops at the first entry that is not a device:
    ``""`` and ``"-1"`` hide every GPU), else the GPUs ``nvidia-smi -L`` lists, else 0.
    """
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = 0
        for entry in visible.split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):
                break
            count += 1
        return count
    executable = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if executable is None:
        return 0
    try:
        listing = subprocess.run(
            [executable, "-L"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def check_local_gpus(settings: TrainSettings, available: int) -> None:
    """Refuse, when its job is planned, a local run whose training job asks for more GPUs than this
    machine has (``available`` > 0; with none visible the job itself says why it cannot use
    CUDA). A ``run_on_cpu`` run uses no GPU and passes.

    Raises:
        CellsegError: one line naming ``models.{key}.gpus``.
    """
    if available <= 0 or settings.gpus <= available or getattr(settings, "run_on_cpu", False):
        return
    raise CellsegError(
        f"models.{settings.key}.gpus: {settings.gpus} GPUs asked for, but this machine has "
        f"{available} (CUDA_VISIBLE_DEVICES / nvidia-smi -L); lower gpus to {available} (and "
        "raise grad_accum to keep the effective batch), or run on the cluster profile"
    )
