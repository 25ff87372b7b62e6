"""Challenge-style scores on our test crops, computed as the CellMap Segmentation Challenge does.

These are **challenge-style scores on our test crops, not leaderboard numbers**: the challenge
scores its own hidden test crops, with all of its classes; we score our held-out crops with our
14 classes. Only the arithmetic follows the challenge.

Source read (our own implementation, no code copied): ``janelia-cellmap/cellmap-segmentation-
challenge`` at commit ``6b9ad6893ef1059227917af2a59cc2e61d84fa7e`` (2026-06-30),
``src/cellmap_segmentation_challenge/utils/eval_utils/`` (``scoring.py``, ``instance_matching.py``,
``distance.py``, ``aggregation.py``, ``config.py``). What that code computes:

* **Semantic classes** (every class not in its instance list): per crop the voxel counts ``TP``,
  ``FP``, ``FN`` of the binarised prediction (probability ``> 0.5``) against the ground truth,
  inside the annotation mask; per class the **pooled IoU** ``ΣTP / (ΣTP + ΣFP + ΣFN)`` over crops
  (1 when the denominator is 0).
* **Instance classes** (its list: nuc, vim, ves, endo, lyso, ld, perox, mito, np, mt, cell; of our
  14 classes only ``nuc``): per crop,

  1. the prediction is relabelled by connected components (``cc3d``, 26-connectivity);
  2. ground-truth and predicted instances are matched one-to-one by a min-cost flow whose edges
     are the pairs with IoU > 0, of cost ``(1 - IoU)`` (scaled to integers by ``10^6``) against
     ``10^6 + 1`` for leaving a ground-truth instance unmatched: it maximises the summed IoU of
     the matched pairs (then their number). There is no IoU threshold: any overlap can match;
  3. before matching, a crop with too many predicted instances, ``n_pred / n_truth >
     10 + 50 exp(-n_truth / 5)``, is skipped: it contributes nothing (zero counts, no distances);
  4. ``TP`` = matched pairs, ``FP`` = unmatched predictions, ``FN`` = unmatched ground truth;
  5. one Hausdorff distance (nm, voxel centres, Euclidean distance transform with the voxel size)
     per ground-truth instance: the classic symmetric Hausdorff distance to its match, or the cap
     when unmatched; plus the cap once per unmatched prediction. Distances are capped at
     ``min_axis(voxel_size × shape) / 2`` of the crop, then normalised to
     ``1.01 ** (-d / ||voxel_size||)`` (so a capped distance is not 0: for a 400-voxel crop at
     8 nm it is ``1.01 ** (-1600 / 13.9) = 0.32``);
  6. per class, over crops: ``F1 = 2ΣTP / (2ΣTP + ΣFP + ΣFN)``, the mean of all the crops'
     normalised distances pooled together, ``combined = sqrt(F1 × mean normalised distance)``;
     a class with nothing anywhere (no counts, no distances) scores 1 on all three.

* **Overall**: the instance score is the plain mean of ``combined`` over instance classes, the
  semantic score the plain mean of pooled IoU over semantic classes, and the overall score their
  geometric mean ``sqrt(instance × semantic)``.

**Documentation and code differ.** The challenge's ``EVALUATION.md`` and
``docs/source/evaluation.rst`` (same commit) describe per-crop F1, Hausdorff, combined score and
IoU combined over crops by a *voxel-weighted mean*, and overall scores as voxel-weighted means over
labels; the code pools the counts and distances per class and takes plain means over classes, as
above. We follow the code.

Where we differ from the challenge's code, on purpose:

* The challenge counts ground-truth instances for the ratio check as the largest id; we count the
  distinct ids (the same when ids are consecutive).
* The challenge remaps matched predictions to their ground-truth ids but leaves unmatched ones
  with their component number, which can coincide with another ground-truth id and then enter
  that instance's Hausdorff distance; we measure each ground-truth instance against its matched
  component only.
* Its limit of ``5 * 10^6`` overlap edges (a crop skipped beyond it) is not reproduced: our
  instance class (``nuc``) has a handful of instances per crop.
* A ground-truth array of an instance class stored as semantic 0/1 (no instance ids) is split into
  instances by connected components (26-connectivity) here; the challenge's ground truth always
  has ids.
* With no instance class (or no semantic class) annotated in any crop the challenge's overall
  score would be 0; ours is NaN (undefined), and its two parts are reported separately.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from cellseg.classes import CLASSES

__all__ = [
    "CHALLENGE_INSTANCE_CLASSES",
    "CHALLENGE_SOURCE",
    "INSTANCE_CLASSES",
    "InstanceClassScores",
    "InstanceScore",
    "OverallScores",
    "SequentialIds",
    "connected_components",
    "hausdorff_distance_nm",
    "instance_class_scores",
    "instance_ratio_cutoff",
    "match_instances",
    "max_distance_nm",
    "normalized_distance",
    "overall_scores",
    "pooled_iou",
    "score_instances",
]

CHALLENGE_SOURCE = (
    "janelia-cellmap/cellmap-segmentation-challenge@6b9ad6893ef1059227917af2a59cc2e61d84fa7e "
    "src/cellmap_segmentation_challenge/utils/eval_utils/"
)
"""Where the scoring rules implemented here were read."""

CHALLENGE_INSTANCE_CLASSES: tuple[str, ...] = (
    "nuc", "vim", "ves", "endo", "lyso", "ld", "perox", "mito", "np", "mt", "cell", "instance",
)  # fmt: skip
"""The challenge's ``INSTANCE_CLASSES`` (its ``config.py``)."""

INSTANCE_CLASSES: tuple[str, ...] = tuple(c for c in CLASSES if c in CHALLENGE_INSTANCE_CLASSES)
"""Our classes the challenge scores as instances (``("nuc",)``); the others are semantic."""

HAUSDORFF_BASE = 1.01
"""Normalised distance ``HAUSDORFF_BASE ** (-d / ||voxel_size||)``."""

RATIO_FINAL, RATIO_INITIAL, RATIO_DECAY = 10.0, 50.0, 5.0
"""The challenge's defaults for the too-many-instances cutoff (:func:`instance_ratio_cutoff`)."""

MATCH_COUNT_WEIGHT = 1e-6
"""Added to each matched pair's IoU: the challenge's integer costs (scale ``10^6``, unmatched
``10^6 + 1``) make every match worth ``1/10^6`` on top of its IoU, a tie-break towards more
matches."""

SKIPPED = "skipped_too_many_instances"
SCORED = "scored"

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


# ------------------------------------------------------------------------------ semantic


def pooled_iou(tp: float, fp: float, fn: float) -> float:
    """IoU of voxel counts summed over crops; 1 when ``TP + FP + FN = 0`` (nothing anywhere)."""
    denominator = tp + fp + fn
    return float(tp / denominator) if denominator > 0 else 1.0


# ------------------------------------------------------------------------------ instances


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the connected components of a 3D boolean mask (26-connectivity, as ``cc3d``'s default).

    Returns:
        ``(labels, n)``: int32 labels of the mask's shape, 0 background, components ``1..n``.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D mask, got shape {mask.shape}")
    labels, n = ndimage.label(mask, structure=_STRUCTURE_26, output=np.int32)
    return labels, int(n)


class SequentialIds:
    """Maps arbitrary instance ids to ``1..n`` in order of first appearance, chunk by chunk, so a
    large crop's ids (often ``uint64``) can be relabelled into ``uint32`` without sorting it whole.

    Args:
        background: raw values that become 0 (background or unannotated), e.g. a label
            encoding's ``absent`` and ``unknown`` codes.
    """

    def __init__(self, background: Sequence[int] = (0,)) -> None:
        self._ids: dict[int, int] = {int(b): 0 for b in background}
        self.n = 0

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` (any integer dtype and shape) → uint32 of the same shape."""
        unique, inverse = np.unique(np.asarray(ids), return_inverse=True)
        table = np.empty(unique.size, dtype=np.uint32)
        for k, value in enumerate(unique.tolist()):
            if value not in self._ids:
                self.n += 1
                self._ids[value] = self.n
            table[k] = self._ids[value]
        return table[inverse].reshape(np.shape(ids))


def instance_ratio_cutoff(n_truth: int) -> float:
    """Most predicted instances per ground-truth instance before a crop is skipped:
    ``10 + 50 exp(-n_truth / 5)`` (the challenge's ``ratio_cutoff`` with its defaults)."""
    return RATIO_FINAL + RATIO_INITIAL * math.exp(-n_truth / RATIO_DECAY)


def max_distance_nm(voxel_size: Sequence[float], shape: Sequence[int]) -> float:
    """The Hausdorff cap of a crop: half its smallest physical extent, nm."""
    return float(min(v * s / 2 for v, s in zip(voxel_size, shape, strict=True)))


def normalized_distance(distance: float | np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
    """``1.01 ** (-d / ||voxel_size||)`` (``d`` in nm); infinite distances give 0."""
    d = np.asarray(distance, dtype=np.float64)
    scale = float(np.linalg.norm(np.asarray(voxel_size, dtype=np.float64)))
    with np.errstate(over="ignore"):
        return np.where(np.isinf(d), 0.0, HAUSDORFF_BASE ** (-d / scale))


def _iou_pairs(
    truth: np.ndarray, pred: np.ndarray, n_truth: int, n_pred: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(truth_id, pred_id, IoU)`` of every overlapping pair (ids ``1..n``)."""
    t, p = truth.ravel(), pred.ravel()
    truth_sizes = np.bincount(t, minlength=n_truth + 1)
    pred_sizes = np.bincount(p, minlength=n_pred + 1)
    both = (t > 0) & (p > 0)
    key = t[both].astype(np.int64) * (n_pred + 1) + p[both].astype(np.int64)
    pairs, intersection = np.unique(key, return_counts=True)
    rows, cols = pairs // (n_pred + 1), pairs % (n_pred + 1)
    union = truth_sizes[rows] + pred_sizes[cols] - intersection
    return rows, cols, intersection / union


def match_instances(
    truth: np.ndarray, pred: np.ndarray, n_truth: int | None = None, n_pred: int | None = None
) -> dict[int, int]:
    """One-to-one matching of predicted to ground-truth instances maximising the summed IoU.

    Only overlapping pairs (IoU > 0) can match; among matchings of equal summed IoU the one with
    more pairs wins (the challenge's min-cost flow, solved here as an assignment problem on
    ``IoU + 1e-6`` over the instances that overlap anything).

    Args:
        truth: ``(Z, Y, X)`` ground-truth ids ``0..n_truth`` (0 background).
        pred: same shape, predicted ids ``0..n_pred``.
        n_truth, n_pred: the largest ids (default: the arrays' maxima).

    Returns:
        ``{pred_id: truth_id}`` of the matched pairs.
    """
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ")
    n_truth = int(truth.max(initial=0)) if n_truth is None else n_truth
    n_pred = int(pred.max(initial=0)) if n_pred is None else n_pred
    if n_truth == 0 or n_pred == 0:
        return {}
    rows, cols, iou = _iou_pairs(truth, pred, n_truth, n_pred)
    if rows.size == 0:
        return {}
    # a dense matrix over only the instances that overlap something
    truth_ids, r = np.unique(rows, return_inverse=True)
    pred_ids, c = np.unique(cols, return_inverse=True)
    weight = np.zeros((truth_ids.size, pred_ids.size))
    weight[r, c] = iou + MATCH_COUNT_WEIGHT
    assigned_r, assigned_c = linear_sum_assignment(weight, maximize=True)
    return {
        int(pred_ids[j]): int(truth_ids[i])
        for i, j in zip(assigned_r, assigned_c, strict=True)
        if weight[i, j] > 0
    }


def _directed_max(
    source: np.ndarray, target: np.ndarray, voxel_size: np.ndarray, slab: int = 64
) -> float:
    """Largest distance (nm) from a voxel of ``source`` to the nearest voxel of ``target``.

    One feature transform of ``~target`` (int32 indices of the nearest target voxel; 12 bytes a
    voxel, far less than ``distance_transform_edt``'s float64 distances of every voxel), then the
    distances at the source voxels only, slab by slab along z.
    """
    features = ndimage.distance_transform_edt(
        ~target, sampling=voxel_size, return_distances=False, return_indices=True
    )
    largest = 0.0
    for z0 in range(0, source.shape[0], slab):
        z, y, x = np.nonzero(source[z0 : z0 + slab])
        if z.size == 0:
            continue
        z = z + z0
        nearest = features[:, z, y, x].astype(np.float64)
        offset = (nearest - np.stack((z, y, x))) * voxel_size[:, None]
        largest = max(largest, float(np.sqrt((offset**2).sum(axis=0)).max()))
    return largest


def hausdorff_distance_nm(
    a: np.ndarray, b: np.ndarray, voxel_size: Sequence[float], cap: float = math.inf
) -> float:
    """Symmetric Hausdorff distance between two voxel sets, nm (voxel centres), capped at ``cap``.

    Both empty: 0; one empty: ``cap``. Computed inside the two sets' common bounding box, which
    holds every voxel either set could be nearest to, so the result is exact.

    Args:
        a, b: ``(Z, Y, X)`` bool masks.
        voxel_size: ``(z, y, x)`` nm.
        cap: the largest distance reported.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float(cap)
    box = ndimage.find_objects((a | b).astype(np.uint8))[0]
    a, b = a[box], b[box]
    vs = np.asarray(voxel_size, dtype=np.float64)
    d = max(_directed_max(a, b, vs), _directed_max(b, a, vs))
    return float(min(d, cap))


class InstanceScore(NamedTuple):
    """One crop × instance class, in the form the challenge pools per class.

    Attributes:
        tp, fp, fn: matched pairs, unmatched predictions, unmatched ground-truth instances.
        hausdorff_norm_sum: sum of the normalised Hausdorff distances (one per ground-truth
            instance, plus one per unmatched prediction).
        hausdorff_count: how many distances that sum holds.
        hausdorff_sum_nm: the same distances in nm, summed (for reading: mean = sum / count).
        n_truth, n_pred: ground-truth instances and predicted components.
        status: ``scored``, or ``skipped_too_many_instances`` (zero counts, no distances).
    """

    tp: int
    fp: int
    fn: int
    hausdorff_norm_sum: float
    hausdorff_count: int
    hausdorff_sum_nm: float
    n_truth: int
    n_pred: int
    status: str


def score_instances(
    truth: np.ndarray, prediction: np.ndarray, voxel_size: Sequence[float]
) -> InstanceScore:
    """Score one crop of an instance class as the challenge does.

    Args:
        truth: ``(Z, Y, X)`` ground-truth instance ids ``0..n`` (0 background and unannotated;
            relabel arbitrary ids with :class:`SequentialIds` first).
        prediction: same shape, bool: the thresholded prediction (unannotated voxels False).
        voxel_size: ``(z, y, x)`` nm of both grids.

    Returns:
        :class:`InstanceScore`.
    """
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ")
    pred, n_pred = connected_components(prediction)
    n_ids = int(truth.max(initial=0))
    sizes = np.bincount(truth.ravel(), minlength=n_ids + 1)
    present = np.nonzero(sizes[1:])[0] + 1
    n_truth = int(present.size)
    cap = max_distance_nm(voxel_size, truth.shape)
    if n_truth > 0 and n_pred / n_truth > instance_ratio_cutoff(n_truth):
        return InstanceScore(0, 0, 0, 0.0, 0, 0.0, n_truth, n_pred, SKIPPED)
    mapping = match_instances(truth, pred, n_ids, n_pred)
    match_of = {t: p for p, t in mapping.items()}
    truth_boxes = ndimage.find_objects(truth) if n_ids else []
    pred_boxes = ndimage.find_objects(pred) if n_pred else []
    distances = []
    for t in present.tolist():
        p = match_of.get(t)
        if p is None:
            distances.append(cap)
            continue
        box = _union_box(truth_boxes[t - 1], pred_boxes[p - 1])
        distances.append(hausdorff_distance_nm(truth[box] == t, pred[box] == p, voxel_size, cap))
    tp = len(mapping)
    distances += [cap] * (n_pred - tp)
    d = np.asarray(distances, dtype=np.float64)
    return InstanceScore(
        tp=tp,
        fp=n_pred - tp,
        fn=n_truth - tp,
        hausdorff_norm_sum=float(normalized_distance(d, voxel_size).sum()),
        hausdorff_count=int(d.size),
        hausdorff_sum_nm=float(d.sum()),
        n_truth=n_truth,
        n_pred=n_pred,
        status=SCORED,
    )


def _union_box(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True)
    )


# ------------------------------------------------------------------------------ aggregation


class InstanceClassScores(NamedTuple):
    """Per instance class over crops: ``f1``, mean normalised Hausdorff, ``combined``."""

    f1: float
    hausdorff_norm: float
    combined: float


def instance_class_scores(
    tp: float, fp: float, fn: float, hausdorff_norm_sum: float, hausdorff_count: float
) -> InstanceClassScores:
    """The challenge's per-class instance scores from counts and distances pooled over crops.

    ``F1 = 2ΣTP / (2ΣTP + ΣFP + ΣFN)`` (0 when only the distances exist), mean normalised
    distance ``Σ / count`` (0 without distances), ``combined = sqrt(F1 × mean)``; all three 1 when
    there are neither counts nor distances.
    """
    denominator = 2 * tp + fp + fn
    if denominator == 0 and hausdorff_count == 0:
        return InstanceClassScores(1.0, 1.0, 1.0)
    f1 = float(2 * tp / denominator) if denominator > 0 else 0.0
    hd = float(hausdorff_norm_sum / hausdorff_count) if hausdorff_count > 0 else 0.0
    return InstanceClassScores(f1, hd, math.sqrt(f1 * hd))


class OverallScores(NamedTuple):
    """``instance``: mean combined score over instance classes; ``semantic``: mean pooled IoU over
    semantic classes; ``overall``: ``sqrt(instance × semantic)``. NaN where a part has no class."""

    instance: float
    semantic: float
    overall: float


def overall_scores(
    instance_combined: Sequence[float], semantic_iou: Sequence[float]
) -> OverallScores:
    """The challenge's overall scores: plain means over classes, then their geometric mean.

    Args:
        instance_combined: ``combined`` of each instance class scored (NaNs are dropped).
        semantic_iou: pooled IoU of each semantic class scored (NaNs are dropped).
    """
    inst = [float(v) for v in instance_combined if math.isfinite(float(v))]
    sem = [float(v) for v in semantic_iou if math.isfinite(float(v))]
    instance = float(np.mean(inst)) if inst else math.nan
    semantic = float(np.mean(sem)) if sem else math.nan
    return OverallScores(instance, semantic, math.sqrt(instance * semantic))
