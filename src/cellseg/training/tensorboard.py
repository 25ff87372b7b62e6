"""What a training run writes to TensorBoard (``{run_dir}/tensorboard``), rank 0 only.

Texts: each attempt's settings and data (``settings/attempt_{n}``, ``data/attempt_{n}``).
Scalars per optimizer step: ``train/*`` (loss, learning rate, samples/s, memory, data wait) and
the online against the exact class frequencies. Per epoch: ``val/*``, ``val_dice/{class}`` (and
``val_dice/{group}`` when the validation crops hold group labels), the logit adjustments, and
figures (the adjustment, sample panels). Every point is logged against
the optimizer step it follows, which is what lets a resumed attempt purge a killed one's
duplicates (:func:`open_writer`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cellseg.classes import CLASSES, GROUP_NAMES
from cellseg.losses import BalancedSoftmaxPartialTverskyLoss, OnlineClassFrequency

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


def open_writer(run_dir: Path, global_step: int) -> SummaryWriter:
    """The run's event writer for an attempt that starts at ``global_step``."""
    # imported here: TensorBoard's import is slow and only rank 0 writes
    from torch.utils.tensorboard import SummaryWriter

    # events a killed attempt logged after this checkpoint would be duplicated: purge
    # them (every scalar is logged against the optimizer step it follows, never before
    # the step's increment, so one step bounds them all; at step 0 too, for an attempt
    # killed before its first checkpoint)
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=global_step + 1)


def write_attempt_texts(
    writer: SummaryWriter,
    attempt: int,
    settings: str,
    data: str,
    epoch: int,
    global_step: int,
) -> None:
    """An attempt's settings (YAML) and data (its crops and files) as TensorBoard texts
    ``settings/attempt_{n}`` and ``data/attempt_{n}``, headed by where the attempt started: one
    tag per attempt, so that no attempt's text replaces (or duplicates) another's."""
    start = f"resumed at epoch {epoch}, step {global_step}" if global_step else "from step 0"
    head = f"attempt {attempt}, {start}"
    tag = f"attempt_{attempt}"
    writer.add_text(f"settings/{tag}", f"{head}\n\n```yaml\n{settings}```", global_step)
    writer.add_text(f"data/{tag}", f"{head}  \n" + data.replace("\n", "  \n"), global_step)


def write_class_frequencies(
    writer: SummaryWriter, online: OnlineClassFrequency, exact: torch.Tensor, step: int
) -> None:
    """The online class frequencies against the exact ones (the loss prior) of each class."""
    for c, name in enumerate(CLASSES):
        frequency = float(online.frequency[c])
        writer.add_scalar(f"class_frequency_online/{name}", frequency, step)
        writer.add_scalar(f"class_frequency_exact/{name}", float(exact[c]), step)


def write_step_scalars(
    writer: SummaryWriter,
    loss: float,
    lr: float,
    samples_per_s: float,
    memory_mb: float,
    data_wait_s: float,
    epoch_started: float,
    step: int,
) -> None:
    """``train/*`` at an optimizer step: the epoch's mean loss so far, the learning rate,
    samples/s, peak memory, and the share of the epoch so far (since ``epoch_started``, a
    ``time.monotonic()``) spent waiting for the loader (``data_wait_s``)."""
    writer.add_scalar("train/loss", loss, step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("train/samples_per_s", samples_per_s, step)
    writer.add_scalar("train/memory_mb", memory_mb, step)
    # the epoch so far: the share of its training time spent waiting for the loader
    writer.add_scalar(
        "train/data_wait_fraction",
        data_wait_s / max(time.monotonic() - epoch_started, 1e-9),
        step,
    )


def write_epoch(
    writer: SummaryWriter,
    row: dict[str, Any],
    loss: BalancedSoftmaxPartialTverskyLoss,
    online: OnlineClassFrequency,
    first_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    images: int,
    step: int,
) -> None:
    """An epoch's row of ``history.csv`` (validation scores), the loss's logit adjustment
    against the online frequencies' (and, after the first epoch, as a figure), and up to
    ``images`` validation samples as panels."""
    writer.add_scalar("epoch", row["epoch"], step)
    writer.add_scalar("val/mean_dice", row["val_mean_dice"], step)
    writer.add_scalar("val/loss", row["val_loss"], step)
    # the classes, then the groups when the validation crops hold group labels
    for name in (*CLASSES, *GROUP_NAMES):
        value = row.get(f"val_dice_{name}", math.nan)
        if math.isfinite(value):
            writer.add_scalar(f"val_dice/{name}", value, step)
    adjustment = loss.logit_adjustment().cpu().numpy()
    online_adjustment = online.logit_adjustment(loss.tau).cpu().numpy()
    for c, name in enumerate(CLASSES):
        writer.add_scalar(f"logit_adjustment/{name}", float(adjustment[c]), step)
        writer.add_scalar(f"logit_adjustment_online/{name}", float(online_adjustment[c]), step)
    # imported here: matplotlib's import is slow and only rank 0 draws
    from cellseg.visualization import logit_adjustment_figure, sample_figure

    if row["epoch"] == 0:
        writer.add_figure(
            "logit_adjustment", logit_adjustment_figure(adjustment, online_adjustment), step
        )
    if first_batch is not None and images > 0:
        image, target, probabilities = first_batch
        n = min(images, image.shape[0])
        writer.add_figure("samples", sample_figure(image[:n], target[:n], probabilities[:n]), step)
    writer.flush()
