"""A finished training run's declared outputs: ``best.pt``, ``history.csv``, ``train_summary.json``.

Written once, by rank 0, when training ends (``Trainer.on_train_end``). ``best.pt`` is a model
file (``cellseg-model-1``: the best epoch's weights with what inference needs to rebuild and
apply them), not a resumable checkpoint; ``train_summary.json`` is what the reports read of a
run's cost and outcome.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cellseg.classes import CLASSES
from cellseg.config.settings import TrainSettings
from cellseg.data.identity import DataIdentity
from cellseg.io import atomic_path, write_json_atomic
from cellseg.trained_classes import (
    TRAINED_GROUPS_KEY,
    TRAINED_KEY,
    UNTRAINED_KEY,
    untrained_classes,
)
from cellseg.training.checkpoint import save_checkpoint
from cellseg.training.init import MIN_PRETRAINED_FRACTION


def train_summary(
    settings: TrainSettings,
    parameters: int,
    epochs_run: int,
    best_epoch: int,
    best_score: float,
    stop_reason: str,
    train_seconds: float,
    world_size: int,
    device: torch.device,
    init_loaded_fraction: float | None,
) -> dict[str, Any]:
    """``train_summary.json``: the run's size, outcome, time and cost (GPU- or CPU-hours)."""
    s = settings
    summary = {
        "model": s.model,
        "dim": s.dim,
        "preset": s.preset,
        "parameters": parameters,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "best_val_mean_dice": best_score if math.isfinite(best_score) else None,
        "stop_reason": stop_reason,
        "train_seconds": train_seconds,
        "gpus": world_size if device.type == "cuda" else 0,
        "processes": world_size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config_hash": s.config_hash(),
    }
    if s.init != "scratch":
        # which runs really start pretrained (cellseg.training.init.MIN_PRETRAINED_FRACTION)
        share = init_loaded_fraction
        summary["init"] = s.init if isinstance(s.init, str) else dict(s.init)
        summary["init_loaded_fraction"] = share
        summary["starts_pretrained"] = share is not None and share >= MIN_PRETRAINED_FRACTION
    hours = summary["train_seconds"] / 3600
    summary["gpu_hours"] = hours * summary["gpus"]
    summary["cpu_hours"] = hours * (0 if summary["gpus"] else s.cpus_per_task)
    return summary


def write_outputs(
    run_dir: Path,
    weights: dict[str, Any],
    summary: dict[str, Any],
    settings: TrainSettings,
    architecture: dict[str, Any],
    logit_shift: torch.Tensor,
    data_identity: DataIdentity,
    best_epoch: int,
    history: Sequence[dict[str, Any]],
    trained_classes: Sequence[str] = CLASSES,
    trained_groups: Sequence[str] = (),
) -> None:
    """Write ``best.pt`` (the best epoch's ``weights``), ``history.csv`` (one row per epoch) and
    ``train_summary.json`` into ``run_dir``, each atomically.

    ``trained_classes`` (:mod:`cellseg.trained_classes`) goes into ``best.pt``, and the others
    into ``train_summary.json`` as ``untrained_classes`` when there are any (a run that trained
    all 14 writes the summary as before). ``trained_groups``, the groups whose labels the
    training crops held (:func:`cellseg.trained_classes.trained_groups`), go into ``best.pt`` when there
    are any.
    """
    if untrained := untrained_classes(trained_classes):
        summary = {**summary, UNTRAINED_KEY: list(untrained)}
    save_checkpoint(
        {
            "format": "cellseg-model-1",
            "model": weights,
            "settings": asdict(settings),
            "architecture": architecture,
            "classes": list(CLASSES),
            TRAINED_KEY: list(trained_classes),
            **({TRAINED_GROUPS_KEY: list(trained_groups)} if trained_groups else {}),
            "logit_shift": logit_shift,
            "data_identity": data_identity.to_dict(),
            "epoch": best_epoch,
            "summary": summary,
        },
        run_dir / "best.pt",
    )
    with atomic_path(run_dir / "history.csv") as temporary:
        pd.DataFrame(list(history)).to_csv(temporary, index=False)
    write_json_atomic(run_dir / "train_summary.json", summary)
