"""What the trainer trains and validates on, and how long it waits for it.

The patch datasets of a run (random training patches per rank, fixed validation patches), the
one loader that serves the whole run (its workers persist across epochs, only its sampler's
range moves) and the warning when an epoch waited too long for it (data wait).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from cellseg.config.settings import TrainSettings
from cellseg.data.dataset import FixedPatches, PatchSpec, SampleRange, TrainPatches, worker_init_fn
from cellseg.data.patches import Augmentation
from cellseg.data.store import Crop


def patch_datasets(
    settings: TrainSettings,
    spec: PatchSpec,
    train_crops: Sequence[Crop],
    validate_crops: Sequence[Crop],
    rank: int,
) -> tuple[TrainPatches, FixedPatches]:
    """This rank's training patches (drawn with ``seed`` and ``rank``) and the validation
    patches (the same every epoch)."""
    s = settings
    train_data = TrainPatches(
        train_crops,
        spec,
        Augmentation(**s.augmentation),
        seed=s.seed,
        rank=rank,
        rare_class_boost=s.rare_class_boost,
        em_range=tuple(s.em_range),
        infer_true_negatives=s.infer_true_negatives,
        cache_mb=s.cache_mb,
    )
    validation_data = FixedPatches(
        validate_crops,
        spec,
        s.validation_patches_per_crop,
        seed=s.seed,
        em_range=tuple(s.em_range),
        infer_true_negatives=s.infer_true_negatives,
    )
    return train_data, validation_data


def training_loader(
    train_data: TrainPatches, sampler: SampleRange, settings: TrainSettings, pin_memory: bool
) -> DataLoader:
    """The run's one loader over ``train_data``, in the order ``sampler``'s range sets."""
    s = settings
    return DataLoader(
        train_data,
        batch_size=s.batch_per_gpu,
        sampler=sampler,
        num_workers=s.num_workers,
        worker_init_fn=worker_init_fn,
        pin_memory=pin_memory,
        persistent_workers=s.num_workers > 0,
        # a private generator: creating loaders must not advance the global RNG (exact resume)
        generator=torch.Generator().manual_seed(s.seed),
    )


def data_wait_warning(
    epoch: int, row: dict[str, Any], train_s: float, settings: TrainSettings
) -> str | None:
    """The log line when epoch ``epoch`` (its ``history.csv`` ``row``; ``train_s``: its
    training time) waited more than ``data_wait_warn_fraction`` of it for the loader, naming
    the keys that feed it faster; None when it did not."""
    s = settings
    if not row["data_wait_fraction"] > s.data_wait_warn_fraction:
        return None
    return (
        f"data wait: epoch {epoch} waited {row['data_wait_fraction']:.0%} of its "
        f"training time for the loader ({row['data_wait_s']:.1f} of "
        f"{train_s:.1f} s; data_wait_warn_fraction "
        f"{s.data_wait_warn_fraction:g}): raise num_workers (now {s.num_workers}) with "
        f"cpus_per_task (now {s.cpus_per_task}), or cache_mb (now {s.cache_mb:g})"
    )
