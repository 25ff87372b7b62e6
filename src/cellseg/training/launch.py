"""Launching a training job from the workflow: one process, or ``torchrun`` for several GPUs."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cellseg.config.resources import check_training_fits
from cellseg.config.settings import resolve_settings
from cellseg.io import write_text_atomic
from cellseg.training.watchdogs import EXIT_STATUS_FILE_VARIABLE


def training_command(
    config_path: Path | str,
    model_key: str,
    run_dir: Path | str,
    datasplit: Path | str,
    class_frequencies: Path | str,
    gpus: int,
    time_budget_min: float | None = None,
) -> list[str]:
    """The command line of one training job.

    With ``gpus > 1`` it is ``torchrun --standalone --nproc_per_node=<gpus>`` around
    ``cellseg train`` (one node, inside the SLURM allocation, not ``srun``); otherwise a plain
    ``cellseg train`` in this Python.
    """
    name, _, dim = model_key.rpartition("_")
    arguments = [
        "-m",
        "cellseg",
        "train",
        "--config",
        str(config_path),
        "--model",
        name,
        "--dim",
        dim,
        "--run-dir",
        str(run_dir),
        "--datasplit",
        str(datasplit),
        "--class-frequencies",
        str(class_frequencies),
    ]
    if time_budget_min is not None:
        arguments += ["--time-budget-min", f"{time_budget_min:g}"]
    return module_command(arguments[2:], gpus)


def module_command(arguments: list[str], processes: int) -> list[str]:
    """``python -m cellseg <arguments>``: with ``processes > 1`` under ``torchrun --standalone
    --nproc_per_node=<processes>`` (one node, inside the SLURM allocation, not ``srun``), as
    training and its preflight (:mod:`cellseg.training.preflight`) are started."""
    command = ["-m", "cellseg", *arguments]
    if processes > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            *command,
        ]
    return [sys.executable, *command]


def launch_training(
    config: Mapping[str, Any],
    model_key: str,
    run_dir: Path | str,
    datasplit: Path | str,
    class_frequencies: Path | str,
    runtime_min: float | None = None,
    log: Any = None,
) -> int:
    """Save the workflow's config into the run directory and run the training job.

    The time budget handed to the trainer is the job's ``runtime_min`` minus the model's
    ``time_budget_margin_min``, so the job checkpoints and exits (status 75) before SLURM kills it.
    Under ``torchrun`` the job exits with rank 0's status (75 resume, 65 stalled), not
    torchrun's 1 (:func:`carried_status`).
    Before anything starts, the job's estimated host memory is checked against its request
    (:func:`cellseg.config.resources.check_training_fits`; more processes than CPUs is a warning in
    the log).

    Raises:
        CellsegError: the job would not fit its memory.

    Returns:
        the job's exit status.
    """
    run_dir = Path(run_dir)
    settings = resolve_settings(config, model_key)
    warning = check_training_fits(config, settings)
    if warning:
        print(warning, file=log or sys.stderr, flush=True)
    config_path = run_dir / "workflow_config.yaml"
    write_text_atomic(config_path, yaml.safe_dump(dict(config), sort_keys=False))
    budget = (
        None if runtime_min is None else max(runtime_min - settings.time_budget_margin_min, 0.05)
    )
    command = training_command(
        config_path, model_key, run_dir, datasplit, class_frequencies, settings.gpus, budget
    )
    print("$ " + shlex.join(command), file=log or sys.stderr, flush=True)
    status_file = run_dir / ".exit_status"
    status_file.unlink(missing_ok=True)
    environment = os.environ | {EXIT_STATUS_FILE_VARIABLE: str(status_file)}
    status = subprocess.call(
        command, stdout=log, stderr=subprocess.STDOUT if log else None, env=environment
    )
    return carried_status(status, status_file, settings.gpus, log)


def carried_status(status: int, status_file: Path, processes: int, log: Any = None) -> int:
    """The job's exit status: ``torchrun`` exits 1 whenever a rank fails, so under it the status
    that rank 0 of ``cellseg train`` left in ``status_file`` (75 resume, 65 stalled) is the
    job's; otherwise (one process, or no status left: a rank crashed) the process's own."""
    try:
        rank_status = int(status_file.read_text().strip())
    except (OSError, ValueError):
        return status
    finally:
        status_file.unlink(missing_ok=True)
    if processes > 1 and status != 0 and rank_status != 0:
        print(
            f"torchrun exited {status}; rank 0 of cellseg train exited {rank_status}: the job "
            f"exits {rank_status}",
            file=log or sys.stderr,
            flush=True,
        )
        return rank_status
    return status
