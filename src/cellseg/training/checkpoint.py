"""Checkpoints: plain dicts of tensors and numbers, written atomically.

A checkpoint is written to a temporary file, fsynced and renamed over the old one, so a job
killed at any moment (SIGKILL included) leaves the previous complete checkpoint in place.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellseg.errors import CellsegError
from cellseg.io import atomic_path


def save_checkpoint(state: dict[str, Any], path: Path | str) -> None:
    """``torch.save`` ``state`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CellsegError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file
        raise CellsegError(
            f"{path}: not a readable checkpoint ({type(error).__name__}: {error})"
        ) from None


def rng_state() -> dict[str, Any]:
    """Every random generator a training step touches."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DDP and ``torch.compile`` wrappers (whose state dicts are prefixed)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
