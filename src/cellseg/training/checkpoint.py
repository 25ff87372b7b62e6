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
    """``torch.save`` ``state`` to ``path`` atomically.

    Raises:
        CellsegError: the file could not be written (a full disk, a file-size limit, an I/O
            error). The temporary file is removed and the previous checkpoint at ``path`` is
            left as it was, so the run resumes from it once the cause is fixed.
    """
    try:
        with atomic_path(path) as temporary:
            torch.save(state, temporary)
    except (OSError, RuntimeError) as error:
        # torch reports a failed write as a multi-line RuntimeError ("enforce fail at
        # inline_container.cc … unexpected pos …") that names neither the file nor the cause
        detail = " ".join(f"{type(error).__name__}: {error}".split())
        kept = (
            "the previous checkpoint is intact: free space and rerun to resume from it"
            if Path(path).is_file()
            else "no earlier checkpoint was there: free space and rerun"
        )
        raise CellsegError(
            f"{path}: could not write the checkpoint (disk full or a file-size limit?) "
            f"({detail}); {kept}"
        ) from None


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
