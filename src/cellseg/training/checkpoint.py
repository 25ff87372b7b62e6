"""Checkpoints: plain dicts of tensors and numbers, written atomically, and whether one may be
resumed.

A checkpoint is written to a temporary file, fsynced and renamed over the old one, so a job
killed at any moment (SIGKILL included) leaves the previous complete checkpoint in place. A run
resumes only a checkpoint of its own settings (:func:`check_settings`) and data
(:func:`data_differences`); one of other data is set aside (:func:`set_aside_checkpoints`).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellseg.config.settings import TrainSettings, changed_keys
from cellseg.data.identity import DataIdentity
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


def check_settings(
    state: dict[str, Any], settings: TrainSettings, source: Path, checkpoint_dir: Path
) -> None:
    """Refuse a checkpoint made with other settings, saying how to get the run back.

    Nothing is lost by the refusal: the checkpoints stay, and with the old settings
    restored the run resumes from them and writes its outputs again (even when Snakemake
    deleted ``best.pt``, ``history.csv`` and ``train_summary.json`` before this job).

    Raises:
        CellsegError: ``state``'s config hash is not ``settings``'; the changed keys named.
    """
    if state.get("config_hash") == settings.config_hash():
        return
    keys = changed_keys(state.get("settings", {}), settings.result_dict())
    raise CellsegError(
        f"{source}: checkpoint was made with other settings (changed: "
        f"{', '.join(keys) or 'unknown'}); to keep that run, set them back and run again (it "
        "resumes from its checkpoints and rewrites best.pt, history.csv and "
        f"train_summary.json); to train anew with the new settings, delete {checkpoint_dir} "
        "(or pass --restart)"
    )


def data_differences(
    state: dict[str, Any],
    data_identity: DataIdentity,
    init_digest: str | None,
    init_checkpoint: str | Path | None,
) -> list[str]:
    """How the checkpoint's training data differs from this run's (``data_identity``, and the
    digest of its ``init.checkpoint`` file) (empty: the same)."""
    recorded = state.get("data_identity")
    if recorded is None:
        return ["the checkpoint does not record its training data"]
    differences = DataIdentity.from_dict(recorded).differences(data_identity)
    # the init file is named by path in the settings: a new file at the same path (the
    # train job reruns when it changes) must not resume the old start
    if init_digest is not None and state.get("init_digest") != init_digest:
        differences.append(f"init.checkpoint {init_checkpoint} has changed")
    return differences


def set_aside_checkpoints(checkpoint_dir: Path, is_main: bool) -> Path:
    """Move every checkpoint to ``checkpoints/superseded/<UTC time>/`` (on rank 0:
    ``is_main``; every rank returns the same path)."""
    target = checkpoint_dir / "superseded" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if is_main:
        target.mkdir(parents=True, exist_ok=True)
        for path in checkpoint_dir.glob("*.pt"):
            path.rename(target / path.name)
    return target
