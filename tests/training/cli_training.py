"""``python -m cellseg train`` of the tiny unet_2d as a user types it, for the tests that run the
command line itself (Ctrl-C, the watchdogs' exit statuses, a SLURM end time)."""

from __future__ import annotations

import sys
from pathlib import Path


def train_command(config_path: Path, tiny_data: dict, run_dir: Path) -> list[str]:
    """The command line training unet_2d with ``config_path`` into ``run_dir`` on the tiny data."""
    return [
        sys.executable, "-m", "cellseg", "train", "--config", str(config_path),
        "--model", "unet", "--dim", "2d", "--run-dir", str(run_dir),
        "--datasplit", str(tiny_data["datasplit"]),
        "--class-frequencies", str(tiny_data["class_frequencies"]),
    ]  # fmt: skip
