"""Validation during training: per-class (and per-group) Dice on the fixed validation patches.

The same patches every epoch (``FixedPatches``), scored with the training's logit adjustment
(``loss.inference_logit_adjustment``). When the validation crops hold group labels (the targets
carry the group channels, :func:`cellseg.data.dataset.has_groups`), each group is scored too, as
evaluation scores it: the union of its members' thresholded predictions
(:func:`cellseg.groups.group_prediction`) against the group label where annotated. The mean
Dice that selects ``best.pt`` and drives early stopping is then the mean over the classes *and*
groups present in the patches: each label the crops annotate counts once, as the CellMap
challenge averages its group classes with the fine ones, so a run trained on coarse labels
(a crop annotating only ``mito``) no longer selects its checkpoint blind. Without group labels
the targets have 14 channels and every number is what it was. Under DDP each rank scores every ``world_size``-th patch
and the counts and losses are summed over the ranks, so every rank gets the same scores (early
stopping decides alike on all of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cellseg.classes import CLASSES, GROUP_NAMES, NUM_CLASSES, NUM_GROUPS
from cellseg.data.dataset import FixedPatches
from cellseg.groups import group_prediction
from cellseg.losses import BalancedSoftmaxPartialTverskyLoss, adjusted_probabilities
from cellseg.metrics import ConfusionMetric
from cellseg.models.margin import crop_margin
from cellseg.trained_classes import trained_names
from cellseg.training.device import is_distributed


@torch.no_grad()
def validate(
    network: torch.nn.Module,
    loss_function: BalancedSoftmaxPartialTverskyLoss,
    patches: FixedPatches,
    device: torch.device,
    margin: Sequence[int],
    batch_size: int,
    mode: str,
    amp: bool = False,
    rank: int = 0,
    world_size: int = 1,
    trained: Sequence[str] = CLASSES,
) -> dict[str, Any]:
    """Score ``network`` (in eval mode, unwrapped: no DDP collective per batch) on this rank's
    share of ``patches``.

    Args:
        network: the model, in eval mode.
        loss_function: the training loss (validation loss, and the logit adjustment).
        patches: the fixed validation patches.
        device: where the network is.
        margin: voxels the output loses on each side (targets are cropped to it).
        batch_size: ``validation_batch_size``.
        mode: ``inference_logit_adjustment`` (e.g. ``train``).
        amp: bf16 autocast.
        rank: this rank; ``world_size``: the number of ranks.
        trained: the classes the run trains (:mod:`cellseg.trained_classes`); the others, and
            the groups with no trained member, get NaN (not scored, never selecting best.pt).

    Returns:
        ``val_loss`` (mean over finite batch losses, all ranks), ``dice`` ``(C,)`` (NaN for a
        class absent from the patches; ``(C + NUM_GROUPS,)``, the groups after the classes in
        :data:`cellseg.classes.GROUP_NAMES` order, when the targets carry group channels),
        ``mean_dice`` (over the present classes and groups) and
        ``first_batch`` (image, target, probabilities of this rank's first batch, on the CPU;
        None when it has none) for TensorBoard's panels.
    """
    # 14 channels, or 14 + the groups when the patches' targets carry them
    metric = ConfusionMetric(NUM_CLASSES + NUM_GROUPS if patches.groups else NUM_CLASSES)
    indices = list(range(rank, len(patches), world_size))
    loss_sum, loss_count = 0.0, 0
    first_batch = None
    for start in range(0, len(indices), batch_size):
        items = [patches[i] for i in indices[start : start + batch_size]]
        image = torch.stack([item["image"] for item in items]).to(device)
        target = torch.stack([item["target"] for item in items]).to(device)
        target = crop_margin(target, margin)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = network(image)
        logits = logits.float()
        loss = loss_function(logits, target)
        if torch.isfinite(loss):
            loss_sum, loss_count = loss_sum + float(loss), loss_count + 1
        probabilities = adjusted_probabilities(logits, loss_function, mode)
        metric.update(_binary(probabilities, metric.num_classes, metric.threshold), target)
        # the panels show the 14 classes
        target = target[:, :NUM_CLASSES]
        if first_batch is None:
            # the image where the output is, so the panels line up
            first_batch = (
                crop_margin(image, margin).cpu(),
                target.cpu(),
                probabilities.cpu(),
            )
    aggregate = metric.aggregate(sync=True)
    totals = torch.tensor([loss_sum, float(loss_count)], dtype=torch.float64)
    if is_distributed():
        totals = totals.to(device)
        dist.all_reduce(totals)
    # a class (or group) with no positive voxel in the validation patches is left out (NaN):
    # with the challenge's empty = 1 rule it would reward predicting nothing, and early stopping
    # would then prefer the untrained epochs
    present = aggregate.counts[:, 0] + aggregate.counts[:, 2] > 0
    # an untrained class (or a group with none trained) likewise: its channel never saw a label
    names = (*CLASSES, *GROUP_NAMES)[: len(present)]
    scored = set(trained_names(trained, names))
    present &= np.array([name in scored for name in names])
    dice = np.where((aggregate.n_crops > 0) & present, aggregate.pooled.dice, np.nan)
    return {
        "val_loss": float(totals[0] / max(float(totals[1]), 1.0)),
        "dice": dice,
        "mean_dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan"),
        "first_batch": first_batch,
    }


def _binary(probabilities: torch.Tensor, channels: int, threshold: float) -> torch.Tensor:
    """The predictions scored against a target of ``channels`` channels: the 14 classes'
    probabilities ``(B, 14, ...)`` thresholded, then, for a target that carries the groups, each
    group's union of its members (:func:`cellseg.groups.group_prediction`); bool
    ``(B, channels, ...)``."""
    binary = probabilities > threshold
    if channels == NUM_CLASSES:
        return binary
    groups = [group_prediction(binary, name, axis=1) for name in GROUP_NAMES]
    return torch.cat((binary, torch.stack(groups, dim=1)), dim=1)


def dice_columns(dice: np.ndarray) -> dict[str, float]:
    """``val_dice_<name>`` of each class, then of each group when ``dice`` holds them: the
    per-label columns of ``history.csv`` (group columns only for a run whose validation crops
    hold group labels, so other runs' history keeps its columns).

    Args:
        dice: ``(C,)`` or ``(C + NUM_GROUPS,)``, :func:`validate`'s ``dice``.
    """
    names = (*CLASSES, *GROUP_NAMES)[: len(dice)]
    return {f"val_dice_{name}": float(value) for name, value in zip(names, dice, strict=True)}
