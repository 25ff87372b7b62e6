"""Masked per-class segmentation metrics and their aggregation over crops.

Counts come first: :func:`confusion_counts` turns binarised predictions and NaN-masked targets
into per-class ``(TP, FP, FN, TN)`` voxel counts (torch tensors during training, numpy arrays,
chunk by chunk, during evaluation; the two agree exactly and counts of chunks add up). Scores come
from counts (:func:`scores_from_counts`). Following SPEC §8 and the CellMap challenge, a class
whose prediction and ground truth are both empty (``TP + FP + FN = 0``) scores 1 on every metric
and is flagged ``empty``; otherwise a ratio with a zero denominator is 0 (precision when nothing
is predicted, recall when nothing is present), as ``sklearn`` does with ``zero_division=0``.
Intervals and paired tests over crops are in :mod:`cellseg.statistics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar

import numpy as np
import pandas as pd
import torch

from cellseg.classes import CLASSES, NUM_CLASSES

__all__ = [
    "COUNT_NAMES",
    "SCORE_NAMES",
    "ConfusionMetric",
    "CropAggregate",
    "Scores",
    "Statistic",
    "aggregate_crops",
    "class_summary_table",
    "confusion_counts",
    "crop_class_table",
    "scores_from_counts",
]

COUNT_NAMES: tuple[str, ...] = ("tp", "fp", "fn", "tn")
"""Order of the last axis of every counts array."""

SCORE_NAMES: tuple[str, ...] = ("dice", "iou", "precision", "recall")

Array = TypeVar("Array", torch.Tensor, np.ndarray)


class Scores(NamedTuple):
    """Per-class scores, each shaped like the counts without their last axis (float64)."""

    dice: Any
    iou: Any
    precision: Any
    recall: Any
    empty: Any
    """bool: ``TP + FP + FN = 0`` (nothing predicted, nothing present); the scores are then 1."""


class Statistic(StrEnum):
    """What a model's "mean Dice" is, over classes, of per-class Dice aggregated over crops.

    ``mean``: per class, the mean of per-crop Dice over the crops annotating it. ``pooled``: per
    class, Dice of ``ΣTP, ΣFP, ΣFN`` over those crops (the CellMap challenge's current scoring).
    """

    MEAN = "mean"
    POOLED = "pooled"


def confusion_counts(prediction: Array, target: Array, threshold: float = 0.5) -> Array:
    """Per-sample, per-class ``TP, FP, FN, TN`` voxel counts over the annotated voxels.

    Args:
        prediction: ``(B, C, H, W[, D])``: probabilities (positive where ``> threshold``) or bool.
        target: same shape: 0/1 (positive where ``> 0.5``) with NaN where unannotated, or bool/int
            (fully annotated). A torch tensor with a torch prediction, a numpy array with numpy.
        threshold: the probability above which a voxel is predicted positive.

    Raises:
        ValueError: the shapes differ, have fewer than 3 dimensions, or the types are mixed.

    Returns:
        int64 ``(B, C, 4)`` in ``COUNT_NAMES`` order, of the same kind as the inputs (a torch tensor
        on the prediction's device). Counts are additive: the counts of the chunks of a volume
        (split along a spatial axis) sum to the counts of the volume.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
        )
    if prediction.ndim < 3:
        raise ValueError(f"expected (B, C, spatial...), got {tuple(prediction.shape)}")
    if isinstance(prediction, torch.Tensor) != isinstance(target, torch.Tensor):
        raise ValueError("prediction and target must both be torch tensors or both numpy arrays")
    axes = tuple(range(2, prediction.ndim))
    if isinstance(prediction, torch.Tensor):
        target = target.to(prediction.device)
        pred = prediction if prediction.dtype == torch.bool else prediction > threshold
        if target.is_floating_point():
            valid = ~torch.isnan(target)
            truth = target > 0.5  # NaN compares False
            pred = pred & valid
        else:
            valid = None
            truth = target.bool() if target.dtype != torch.bool else target
        tp = torch.count_nonzero(pred & truth, dim=axes)
        n_pred = torch.count_nonzero(pred, dim=axes)
        n_true = torch.count_nonzero(truth, dim=axes)
        n_valid = (
            torch.count_nonzero(valid, dim=axes)
            if valid is not None
            else torch.full_like(tp, int(np.prod(prediction.shape[2:])))
        )
        return torch.stack((tp, n_pred - tp, n_true - tp, n_valid - n_pred - n_true + tp), dim=-1)
    prediction = np.asarray(prediction)
    target = np.asarray(target)
    pred = prediction if prediction.dtype == np.bool_ else prediction > threshold
    if np.issubdtype(target.dtype, np.floating):
        valid = ~np.isnan(target)
        with np.errstate(invalid="ignore"):
            truth = target > 0.5
        pred = pred & valid
        n_valid = np.count_nonzero(valid, axis=axes)
    else:
        truth = target.astype(bool, copy=False)
        n_valid = np.full(prediction.shape[:2], int(np.prod(prediction.shape[2:])))
    tp = np.count_nonzero(pred & truth, axis=axes)
    n_pred = np.count_nonzero(pred, axis=axes)
    n_true = np.count_nonzero(truth, axis=axes)
    return np.stack((tp, n_pred - tp, n_true - tp, n_valid - n_pred - n_true + tp), axis=-1).astype(
        np.int64
    )


def _ratio(num: Any, den: Any, empty: Any, xp: Any) -> Any:
    # 1 where the class is empty (SPEC §8), 0 where only this ratio is undefined
    safe = xp.where(den > 0, den, xp.ones_like(den))
    out = xp.where(den > 0, num / safe, xp.zeros_like(num))
    return xp.where(empty, xp.ones_like(out), out)


def scores_from_counts(counts: Array) -> Scores:
    """Dice, IoU, precision and recall from counts.

    Args:
        counts: ``(..., 4)`` in ``COUNT_NAMES`` order (torch or numpy; float sums allowed).

    Returns:
        :class:`Scores`, each ``(...)`` float64 (bool for ``empty``), of the counts' kind.
    """
    if isinstance(counts, torch.Tensor):
        c = counts.to(torch.float64)
        xp: Any = torch
    else:
        c = np.asarray(counts, dtype=np.float64)
        xp = np
    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    empty = (tp + fp + fn) == 0
    return Scores(
        dice=_ratio(2 * tp, 2 * tp + fp + fn, empty, xp),
        iou=_ratio(tp, tp + fp + fn, empty, xp),
        precision=_ratio(tp, tp + fp, empty, xp),
        recall=_ratio(tp, tp + fn, empty, xp),
        empty=empty,
    )


class CropAggregate(NamedTuple):
    """Per-class aggregation over crops; every field is ``(C,)``.

    ``mean`` holds per-class means of per-crop scores over the crops annotating the class (NaN where
    none does; ``mean.empty`` is the fraction of those crops that were empty); ``pooled`` holds the
    scores of the summed counts (``pooled.empty``: the class is empty in all of them, or in none
    annotated); ``counts`` the summed counts ``(C, 4)``; ``n_crops`` the crops annotating each class.
    """

    mean: Scores
    pooled: Scores
    counts: np.ndarray
    n_crops: np.ndarray


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _annotated(counts: np.ndarray) -> np.ndarray:
    # a crop annotates a class when it has any annotated voxel of it
    return counts.sum(axis=-1) > 0


def aggregate_crops(
    counts: np.ndarray | torch.Tensor, annotated: np.ndarray | None = None
) -> CropAggregate:
    """Aggregate per-crop counts into per-class mean and pooled scores.

    Args:
        counts: ``(N, C, 4)`` per crop and class.
        annotated: ``(N, C)`` bool, whether crop ``n`` annotates class ``c``; by default, whether it
            has any annotated voxel of it (``TP + FP + FN + TN > 0``).

    Returns:
        :class:`CropAggregate`.
    """
    counts = _to_numpy(counts)
    if counts.ndim != 3 or counts.shape[-1] != 4:
        raise ValueError(f"expected counts (N, C, 4), got {counts.shape}")
    ann = _annotated(counts) if annotated is None else np.asarray(annotated, dtype=bool)
    per_crop = scores_from_counts(counts)
    n = ann.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = Scores(
            *(
                np.where(n > 0, np.where(ann, s, 0.0).sum(axis=0) / np.maximum(n, 1), np.nan)
                for s in (*per_crop[:4], per_crop.empty.astype(np.float64))
            )
        )
    summed = np.where(ann[..., None], counts, 0).sum(axis=0)
    return CropAggregate(mean=mean, pooled=scores_from_counts(summed), counts=summed, n_crops=n)


class ConfusionMetric:
    """Cumulative per-class metric for validation during training (reset / update / aggregate).

    Keeps only running sums on the device of the data: pooled counts ``(C, 4)``, the sums of
    per-sample scores over samples annotating each class, and their number, so memory does not grow
    with the validation set. Under DDP, :meth:`aggregate` sums these across ranks with
    ``torch.distributed.all_reduce`` (a collective: call it on every rank).

    Args:
        num_classes: ``C``.
        threshold: probability above which a voxel is predicted positive.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, threshold: float = 0.5) -> None:
        self.num_classes = num_classes
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._counts: torch.Tensor | None = None  # (C, 4) int64
        self._score_sums: torch.Tensor | None = None  # (C, 5) float64: 4 scores + empty
        self._n: torch.Tensor | None = None  # (C,) int64

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add a batch.

        Args:
            prediction: probabilities (or bool) ``(B, C, H, W[, D])``; already adjusted, see
                :func:`cellseg.losses.adjusted_probabilities`.
            target: same shape, NaN where unannotated.

        Raises:
            ValueError: see :func:`confusion_counts`, or ``C`` differs from ``num_classes``.

        Returns:
            the batch's counts ``(B, C, 4)``.
        """
        if prediction.ndim < 3 or prediction.shape[1] != self.num_classes:
            raise ValueError(
                f"expected (B, {self.num_classes}, ...), got {tuple(prediction.shape)}"
            )
        counts = confusion_counts(prediction, target, self.threshold)
        ann = counts.sum(dim=-1) > 0
        s = scores_from_counts(counts)
        per_sample = torch.stack((*s[:4], s.empty.to(torch.float64)), dim=-1)
        score_sums = torch.where(ann[..., None], per_sample, 0.0).sum(dim=0)
        pooled = torch.where(ann[..., None], counts, 0).sum(dim=0)
        n = ann.sum(dim=0)
        if self._counts is None:
            self._counts, self._score_sums, self._n = pooled, score_sums, n
        else:
            assert self._score_sums is not None and self._n is not None
            self._counts += pooled
            self._score_sums += score_sums
            self._n += n
        return counts

    def aggregate(self, sync: bool = True) -> CropAggregate:
        """Per-class mean (over samples annotating the class) and pooled scores.

        Args:
            sync: sum over DDP ranks when ``torch.distributed`` is initialised.

        Returns:
            :class:`CropAggregate` of numpy arrays; all NaN / empty before any update.
        """
        c = self.num_classes
        if self._counts is None:
            counts = torch.zeros(c, 4, dtype=torch.int64)
            sums = torch.zeros(c, 5, dtype=torch.float64)
            n = torch.zeros(c, dtype=torch.int64)
        else:
            assert self._score_sums is not None and self._n is not None
            counts, sums, n = self._counts.clone(), self._score_sums.clone(), self._n.clone()
        if sync and torch.distributed.is_available() and torch.distributed.is_initialized():
            # one float64 collective: counts stay exact below 2**53 voxels
            packed = torch.cat((counts.double(), sums, n.double()[:, None]), dim=1)
            torch.distributed.all_reduce(packed)
            counts, sums, n = (
                packed[:, :4].round().long(),
                packed[:, 4:9],
                packed[:, 9].round().long(),
            )
        counts_np, sums_np, n_np = (x.detach().cpu().numpy() for x in (counts, sums, n))
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(n_np[:, None] > 0, sums_np / np.maximum(n_np, 1)[:, None], np.nan)
        mean = Scores(*(means[:, i] for i in range(5)))
        return CropAggregate(
            mean=mean, pooled=scores_from_counts(counts_np), counts=counts_np, n_crops=n_np
        )


def crop_class_table(
    counts: np.ndarray | torch.Tensor, crops: Sequence[str], classes: Sequence[str] = CLASSES
) -> pd.DataFrame:
    """One row per (crop, annotated class): counts, scores and the ``empty`` flag.

    Args:
        counts: ``(N, C, 4)``.
        crops: ``N`` crop names.
        classes: ``C`` class names.

    Returns:
        columns ``crop, class, tp, fp, fn, tn, dice, iou, precision, recall, empty``.
    """
    counts = _to_numpy(counts)
    if counts.shape[:2] != (len(crops), len(classes)):
        raise ValueError(
            f"counts {counts.shape} do not match {len(crops)} crops x {len(classes)} classes"
        )
    s = scores_from_counts(counts)
    ci, ki = np.nonzero(_annotated(counts))
    table = {
        "crop": np.asarray(crops, dtype=object)[ci],
        "class": np.asarray(classes, dtype=object)[ki],
        **{name: counts[ci, ki, i] for i, name in enumerate(COUNT_NAMES)},
        **{name: getattr(s, name)[ci, ki] for name in SCORE_NAMES},
        "empty": s.empty[ci, ki],
    }
    return pd.DataFrame(table)


def class_summary_table(
    counts: np.ndarray | torch.Tensor, classes: Sequence[str] = CLASSES
) -> pd.DataFrame:
    """One row per class: crops annotating it, mean and pooled scores, summed counts.

    Args:
        counts: ``(N, C, 4)`` per crop.
        classes: ``C`` class names.

    Returns:
        columns ``class, n_crops, mean_<score>`` (and ``mean_empty``, the fraction of empty crops),
        ``pooled_<score>``, ``pooled_empty``, ``tp, fp, fn, tn``.
    """
    agg = aggregate_crops(counts)
    table: dict[str, Any] = {"class": list(classes), "n_crops": agg.n_crops}
    for name in (*SCORE_NAMES, "empty"):
        table[f"mean_{name}"] = getattr(agg.mean, name)
    for name in (*SCORE_NAMES, "empty"):
        table[f"pooled_{name}"] = getattr(agg.pooled, name)
    for i, name in enumerate(COUNT_NAMES):
        table[name] = agg.counts[:, i]
    return pd.DataFrame(table)
