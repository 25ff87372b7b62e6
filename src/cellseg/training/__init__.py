"""Training: settings resolved from the config, the trainer, checkpoints.

The trainer is imported on first use: the workflow resolves settings while Snakemake plans the
DAG, and that process must not need torch (with ``--sdm conda`` it runs in a plain Snakemake
environment; only the jobs run in ``workflow/envs/cellseg.yaml``).
"""

from __future__ import annotations

import importlib
from typing import Any

from cellseg.config.settings import TrainSettings, load_config, resolve_settings

__all__ = [
    "EXIT_STALLED",
    "EXIT_TIME_BUDGET",
    "TrainSettings",
    "Trainer",
    "load_config",
    "resolve_settings",
]

_FROM_TRAINER = ("EXIT_STALLED", "EXIT_TIME_BUDGET", "Trainer")


def __getattr__(name: str) -> Any:
    if name in _FROM_TRAINER:
        return getattr(importlib.import_module("cellseg.training.trainer"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
