"""``cellseg train``: train one model of the workflow config."""

from __future__ import annotations

import argparse
import os
from contextlib import nullcontext
from pathlib import Path

from cellseg.config.settings import load_config, resolve_settings
from cellseg.ownership import check_output_path
from cellseg.training.budget import job_start_time
from cellseg.training.lock import run_dir_lock
from cellseg.training.trainer import Trainer
from cellseg.training.watchdogs import EXIT_STATUS_FILE_VARIABLE


def _run(args: argparse.Namespace) -> int:
    # the budget counts from the process's start: imports, loading and torchrun count against it
    started = job_start_time()
    config = load_config(args.config)
    settings = resolve_settings(config, f"{args.model}_{args.dim}", source=str(args.config))
    run_dir = args.run_dir or Path("results/models") / settings.key
    check_output_path(run_dir, "--run-dir", "directory")
    # one training per run directory; torchrun's other ranks run under rank 0's lock
    lock = run_dir_lock(run_dir) if int(os.environ.get("RANK", "0")) == 0 else nullcontext()
    with lock:  # taken before the trainer touches the directory (--restart deletes)
        trainer = Trainer(
            settings,
            run_dir,
            args.datasplit,
            args.class_frequencies,
            time_budget_min=args.time_budget_min,
            resume=args.resume,
            restart=args.restart,
            job_started=started,
        )
        status = trainer.run()
    # under torchrun (whose own status is 1 whenever a rank fails) rank 0 leaves its status
    # for the launcher, so that 75 (resume) and 65 (stalled) reach the job's log
    status_file = os.environ.get(EXIT_STATUS_FILE_VARIABLE)
    if status_file and int(os.environ.get("RANK", "0")) == 0:
        Path(status_file).write_text(f"{status}\n")
    return status


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train one model (resumes automatically)")
    parser.add_argument("--config", type=Path, required=True, help="workflow config YAML")
    parser.add_argument("--model", required=True, help="model name, e.g. unet")
    parser.add_argument("--dim", required=True, choices=["2d", "3d"])
    parser.add_argument("--run-dir", type=Path, help="default: results/models/{model}_{dim}")
    parser.add_argument("--datasplit", type=Path, default=Path("results/datasplit.csv"))
    parser.add_argument(
        "--class-frequencies", type=Path, default=Path("results/class_frequencies.json")
    )
    parser.add_argument(
        "--time-budget-min",
        type=float,
        help="stop with a checkpoint (exit 75) before this many minutes from the process's start "
        "(torchrun's under torchrun), or before SLURM_JOB_END_TIME minus time_budget_margin_min, "
        "to be resumed",
    )
    parser.add_argument("--resume", type=Path, help="resume from this checkpoint")
    parser.add_argument("--restart", action="store_true", help="discard existing checkpoints")
    parser.set_defaults(func=_run)
