"""Coarse (group) labels: a whole-organelle label such as ``mito`` over its member classes.

A group label (:data:`cellseg.classes.GROUPS`) says where a whole organelle is, not which of its
parts: where it is 0, every member is a known negative; where it is 1, the voxel is one of the
members but which one is unknown, so no member gets a label there (none is invented); 255 is
unknown for all. Three pieces build on that (issue 33 item 2):

* targets: :func:`apply_group_negatives` fills the members' unknown voxels with 0 where a group is
  0; a target that carries groups has ``NUM_CLASSES + NUM_GROUPS`` channels, group ``g`` at channel
  ``NUM_CLASSES + g`` (NaN where not annotated). Without group labels, targets keep 14 channels.
* loss: :func:`group_partial_tversky`, the partial Tversky index of the union probability
  ``p_union = 1 - prod_m (1 - p_m)`` (:func:`union_probability`, also the probability of a
  group map of ``cellseg predict``) of the members' logit-adjusted sigmoids against the group
  label, over the voxels where the group is annotated (used by
  :class:`cellseg.losses.BalancedSoftmaxPartialTverskyLoss` when the target carries groups).
* evaluation: :func:`group_prediction` and :func:`group_counts`, the union of the members'
  thresholded predictions scored against the group label, as the CellMap challenge scores its
  group classes.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import pandas as pd
import torch

from cellseg.classes import GROUP_MEMBERS, GROUP_NAMES, NUM_CLASSES, NUM_GROUPS
from cellseg.metrics import COUNT_NAMES, scores_from_counts

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

COMPACT_UNKNOWN = 255
"""Unknown in the loader's compact ``uint8`` target (the value of
:data:`cellseg.data.patches.TARGET_UNKNOWN`, which imports this module)."""

__all__ = [
    "apply_group_negatives",
    "class_rows",
    "group_columns",
    "group_counts",
    "group_partial_tversky",
    "group_prediction",
    "infer_group_negatives",
    "member_indexes",
    "split_groups",
    "union_probability",
]


def member_indexes(group: str) -> list[int]:
    """The class indexes (:data:`cellseg.classes.CLASSES` order) of ``group``'s members."""
    return list(GROUP_MEMBERS[GROUP_NAMES.index(group)])


def split_groups(
    target: torch.Tensor, num_classes: int = NUM_CLASSES
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a target ``(B, C[+G], ...)`` into its class part ``(B, C, ...)`` and its group part
    ``(B, G, ...)`` (``None`` when it has only the ``C`` class channels).

    Raises:
        ValueError: channel 1 is neither ``C`` nor ``C + NUM_GROUPS``, or groups come with a
            ``C`` other than the 14 classes (the member indices are those of the 14).
    """
    channels = target.shape[1]
    if channels == num_classes:
        return target, None
    if channels != num_classes + NUM_GROUPS or num_classes != NUM_CLASSES:
        raise ValueError(
            f"target has {channels} channels: expected {num_classes} classes, or the "
            f"{NUM_CLASSES} classes and the {NUM_GROUPS} groups {', '.join(GROUP_NAMES)}"
        )
    return target[:, :num_classes], target[:, num_classes:]


def union_probability(log_complement: torch.Tensor, dim: int) -> torch.Tensor:
    """A group's probability: that of the union of its members, ``1 - prod_m (1 - p_m)`` (the
    members taken as independent), computed as ``-expm1(sum_m log(1 - p_m))``.

    The one formula of a group's probability: the loss's group term
    (:func:`group_partial_tversky`, from the logits: ``log(1 - p_m) = logsigmoid(-z_m)``) and
    ``cellseg predict``'s group maps (:mod:`cellseg.prediction_groups`, from the probabilities:
    ``log1p(-p_m)``) both call it.

    Args:
        log_complement: ``log(1 - p_m)`` of the members along ``dim``.
        dim: the members' axis.

    Returns:
        ``log_complement``'s shape without ``dim``, in [0, 1].
    """
    return -torch.expm1(log_complement.sum(dim=dim))


def group_partial_tversky(
    logits: torch.Tensor,
    group_target: torch.Tensor,
    shift: torch.Tensor,
    alpha: float,
    beta: float,
    smooth: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial Tversky index of each group's union probability, with plain autograd.

    ``p_m = sigmoid(z_m + shift_m)`` exactly as the per-class term; ``p_union = 1 - prod_m
    (1 - p_m)``, computed as ``-expm1(sum_m logsigmoid(-(z_m + shift_m)))`` (the same value,
    without the cancellation of ``1 - p`` near 1). Over the voxels where the group is annotated
    (not NaN): ``TP = sum p_union t``, ``FP = sum p_union (1 - t)``, ``FN = sum (1 - p_union) t``
    and ``TI = (TP + s) / (TP + alpha FP + beta FN + s)``. Sums in float32 (float64 for float64
    logits), outside autocast.

    Args:
        logits: ``(B, 14, ...)`` raw network output.
        group_target: ``(B, G, ...)`` group labels, 0/1 where annotated, NaN elsewhere.
        shift: ``(14,)`` what the loss adds to the logits (``-a`` for the seed sign).
        alpha, beta, smooth: the loss's Tversky coefficients.

    Returns:
        ``(TI, n)``, both ``(G,)``: the index (1 for a group with no annotated voxel, whose
        union is never computed) and the annotated voxel count (int64).
    """
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    dims = (0, *range(2, logits.ndim))
    with torch.autocast(device_type=logits.device.type, enabled=False):
        valid = ~torch.isnan(group_target)
        n = valid.sum(dim=dims)
        shift = shift.to(device=logits.device, dtype=dtype)
        view = (1, -1, *[1] * (logits.ndim - 2))
        ti = []
        # one host read of the counts (a device sync), not one per group
        for g, (members, count) in enumerate(zip(GROUP_MEMBERS, n.tolist(), strict=True)):
            if count == 0:
                # a group no voxel of the batch annotates costs nothing (the usual case)
                ti.append(torch.ones((), dtype=dtype, device=logits.device))
                continue
            idx = torch.tensor(members, device=logits.device)
            z = logits.index_select(1, idx).to(dtype) + shift[idx].view(view)
            # log(1 - p_m) = logsigmoid(-z_m), exactly
            p_union = union_probability(torch.nn.functional.logsigmoid(-z), dim=1)
            # masked_fill: exactly zero gradient on unannotated voxels
            q = p_union.masked_fill(~valid[:, g], 0.0)
            t0 = torch.nan_to_num(group_target[:, g].to(dtype), nan=0.0)
            tp = (q * t0).sum()
            fp = q.sum() - tp
            fn = t0.sum() - tp
            ti.append((tp + smooth) / (tp + alpha * fp + beta * fn + smooth))
        return torch.stack(ti), n.to(torch.int64)


def apply_group_negatives(target: np.ndarray, group: str, label: np.ndarray) -> np.ndarray:
    """In place: where the group label is 0, each member class still unknown becomes 0.

    Where the group is 1 or unknown the members are left as they are (unknown unless the crop
    also annotates them finely): a group positive says nothing about which member it is. A member
    the crop annotates finely keeps its own label everywhere.

    Args:
        target: ``(C, ...)`` decoded target: float (NaN unknown) or the loader's compact
            ``uint8`` (255 unknown, :data:`cellseg.data.patches.TARGET_UNKNOWN`).
        group: a name of :data:`cellseg.classes.GROUP_NAMES`.
        label: ``(...)`` the group label in the same encoding (0/1 where annotated).

    Returns:
        ``target``.
    """
    negative = label == 0
    for c in member_indexes(group):
        member = target[c]
        unknown = np.isnan(member) if member.dtype.kind == "f" else member == COMPACT_UNKNOWN
        member[negative & unknown] = 0
    return target


def group_prediction(binary: ArrayT, group: str, axis: int = 0) -> ArrayT:
    """A group's prediction: the union of its members' thresholded predictions.

    The one definition of a group's mask: evaluation scores it, validation during training
    scores it (on torch tensors, a batch at a time) and ``cellseg predict`` writes it.

    Args:
        binary: bool predictions of the 14 classes along ``axis`` (``(C, ...)`` by default, a
            batch ``(B, C, ...)`` with ``axis=1``); numpy or torch.
        group: a name of :data:`cellseg.classes.GROUP_NAMES`.
        axis: the class axis.

    Returns:
        bool, ``binary``'s shape without ``axis``, of its kind (on its device).
    """
    members = member_indexes(group)
    if isinstance(binary, torch.Tensor):
        index = torch.tensor(members, device=binary.device)
        return binary.index_select(axis, index).any(dim=axis)
    return np.logical_or.reduce(np.asarray(binary).take(members, axis=axis), axis=axis)


def group_counts(binary: np.ndarray, group: str, label: np.ndarray) -> np.ndarray:
    """``(tp, fp, fn, tn)`` of a group's union prediction against its label, over annotated voxels.

    Args:
        binary: ``(C, ...)`` bool predictions of the 14 classes.
        group: a name of :data:`cellseg.classes.GROUP_NAMES`.
        label: ``(...)`` decoded group label, 0/1 where annotated, NaN elsewhere.

    Returns:
        int64 ``(4,)``, in :func:`cellseg.metrics.confusion_counts`'s order.
    """
    pred = group_prediction(binary, group)
    valid = ~np.isnan(label)
    truth = label == 1
    return np.array(
        [
            np.sum(pred & truth & valid),
            np.sum(pred & ~truth & valid),
            np.sum(~pred & truth & valid),
            np.sum(~pred & ~truth & valid),
        ],
        dtype=np.int64,
    )


def group_columns(table: pd.DataFrame) -> dict[str, float]:
    """Summary columns of a model's group scores: ``dice_<group>``, the group's Dice pooled over
    the crops that hold its label (counts summed over crops, as ``dice_<class>``), for each group
    with rows in ``table``; none when no crop holds a group label (the summary is then unchanged).

    Args:
        table: a metrics table of one adjustment mode (columns ``class``, ``tp``, ``fp``,
            ``fn``, ``tn``; :data:`cellseg.evaluation.METRIC_COLUMNS`).
    """
    columns: dict[str, float] = {}
    for name in GROUP_NAMES:
        rows = table[table["class"] == name]
        if rows.empty:
            continue
        counts = rows[list(COUNT_NAMES)].to_numpy(dtype=np.float64).sum(axis=0)
        columns[f"dice_{name}"] = float(scores_from_counts(counts).dice)
    return columns


def class_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a metrics table that score one of the 14 classes (group rows dropped): every
    statistic over classes (mean Dice, its interval, the ranking) reads these only."""
    if not table["class"].isin(GROUP_NAMES).any():
        return table
    return table[~table["class"].isin(GROUP_NAMES)]


def infer_group_negatives(target: np.ndarray) -> np.ndarray:
    """In place, for ``data.infer_true_negatives`` on a target with group channels: the 14
    classes are mutually exclusive, so where a group is 1 every unknown class outside it and
    every other unknown group becomes 0, and where a class is 1 every unknown group not holding
    it becomes 0. A group positive never makes its own members negative, and nothing becomes 1.

    Args:
        target: ``(NUM_CLASSES + NUM_GROUPS, ...)`` float (NaN unknown) or compact ``uint8``
            (255 unknown).

    Returns:
        ``target``.
    """
    if target.dtype.kind == "f":
        positive = np.nan_to_num(target, nan=0.0) > 0
        unknown = np.isnan(target)
    else:
        positive = target == 1
        unknown = target == COMPACT_UNKNOWN
    # decide from the labels as read, before any channel is filled
    group_positive = positive[NUM_CLASSES:].copy()
    class_positive = positive[:NUM_CLASSES].copy()
    for g, members in enumerate(GROUP_MEMBERS):
        inside = group_positive[g]
        if inside.any():
            for c in range(NUM_CLASSES):
                if c not in members:
                    target[c][inside & unknown[c]] = 0
            for h in range(NUM_GROUPS):
                if h != g:
                    target[NUM_CLASSES + h][inside & unknown[NUM_CLASSES + h]] = 0
        outside = class_positive[[c for c in range(NUM_CLASSES) if c not in members]].any(axis=0)
        target[NUM_CLASSES + g][outside & unknown[NUM_CLASSES + g]] = 0
    return target
