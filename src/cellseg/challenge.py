"""Challenge scores on our test crops, computed as the CellMap Segmentation Challenge's official
scorer computes them (``official``), and with two of its quirks corrected (``corrected``).

These are **challenge scores on our test crops, not leaderboard numbers**: the challenge
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
  2. ground-truth and predicted instances are matched one-to-one by a min-cost flow (OR-Tools'
     ``SimpleMinCostFlow``) whose edges are the pairs with IoU > 0 (IoU rounded to float32), of
     cost ``int((1 - IoU) 10^6)`` against ``10^6 + 1`` for leaving a ground-truth instance
     unmatched: it maximises the summed integer worth ``10^6 + 1 - cost`` of the matched pairs
     (:func:`matching_weights`). There is no IoU threshold: any overlap can match. Between tied
     matchings (equal summed worth) the solver's choice depends on the network's layout: a node
     per ground-truth id up to the largest (absent ids included), the arcs in a fixed order; a
     tie can even be between one pair and two, so F1 depends on it;
  3. before matching, a crop with too many predicted instances, ``n_pred / n_truth >
     10 + 50 exp(-n_truth / 5)`` with ``n_truth`` the *largest ground-truth id*, or with more
     than 5 million overlapping pairs, is skipped: it contributes nothing (zero counts, no
     distances);
  4. ``TP`` = matched pairs, ``FP`` = unmatched predictions, ``FN`` = unmatched ground truth;
  5. matched components are renamed to their match's id, unmatched ones keep their component
     number; then one Hausdorff distance (nm, voxel centres, Euclidean distance transform with
     the voxel size, stored as float32) per ground-truth id ``t`` between ``truth == t`` and
     ``renamed prediction == t``, or the cap when that is empty; plus the cap once per unmatched
     prediction. Distances are capped at ``min_axis(voxel_size × shape) / 2`` of the crop, then
     normalised to ``1.01 ** (-d / ||voxel_size||)`` (so a capped distance is not 0: for a
     400-voxel crop at 8 nm it is ``1.01 ** (-1600 / 13.9) = 0.32``);
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

Two modes (:data:`SCORER_MODES`). ``official`` reproduces that code exactly, quirks included
(``tests/test_challenge.py`` reproduces the scorer's own values on 10 crops to 1e-6: the
``challenge_*`` columns of ``summary.csv``). ``corrected`` (``challenge_corrected_*``) fixes two
behaviours that look unintended:

* Over-segmentation check: the official scorer counts ground-truth instances as the *largest id*
  (ids {1, 50}: 50 instances); corrected counts the distinct ids (2). Same when ids are 1..n.
* Hausdorff distance: the official scorer leaves unmatched components with their component
  number, which can equal another ground-truth id and then enters that instance's distance (an
  instance 11 nm from its match can score as if at the cap); corrected measures each
  ground-truth instance against its matched component only.

Both modes share the rest: the matching (:func:`match_instances`: OR-Tools' min-cost flow on the
network the official scorer builds, so ties are broken as there; ``tests/test_challenge.py``
reproduces the scorer's values on four tied crops where ``scipy``'s ``linear_sum_assignment``
chose otherwise), the 5-million-pair limit, and the arithmetic above. Also in both:

* A ground-truth array of an instance class stored as semantic 0/1 (no instance ids) is split into
  instances by connected components (26-connectivity) by :mod:`cellseg.evaluation`; the
  challenge's ground truth always has ids.
* With no instance class (or no semantic class) annotated in any crop the official overall score
  is 0 (that part counts 0); corrected makes it NaN (undefined).
* Ground-truth ids above 2^20 (:func:`score_instance_modes`) get flow nodes by rank, not one
  per id up to the largest as the official scorer's (millions of nodes there); only a tied
  matching in such a crop can be broken differently.

The challenge does not pin OR-Tools; the solver's tie-break is that of the installed version
(:data:`ORTOOLS_VERSION`, which ``summary.md`` names; checked against the official scorer with
9.15.6755).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import ortools
from ortools.graph.python import min_cost_flow
from scipy import ndimage

from cellseg.classes import CLASSES

__all__ = [
    "CHALLENGE_INSTANCE_CLASSES",
    "CHALLENGE_SOURCE",
    "CORRECTED",
    "INSTANCE_CLASSES",
    "INSTANCE_COLUMNS",
    "INSTANCE_SUM_COLUMNS",
    "INTEGER_INSTANCE_COLUMNS",
    "OFFICIAL",
    "ORTOOLS_VERSION",
    "SCORED",
    "SCORER_MODES",
    "SKIPPED",
    "STATUS_COLUMNS",
    "InstanceClassScores",
    "InstanceScore",
    "OverallScores",
    "SequentialIds",
    "TruthIds",
    "connected_components",
    "hausdorff_distance_nm",
    "instance_class_scores",
    "instance_column_names",
    "instance_columns",
    "instance_ratio_cutoff",
    "match_instances",
    "matching_weights",
    "max_distance_nm",
    "normalized_distance",
    "overall_scores",
    "pooled_iou",
    "score_instance_modes",
    "score_instances",
]

CHALLENGE_SOURCE = (
    "janelia-cellmap/cellmap-segmentation-challenge@6b9ad6893ef1059227917af2a59cc2e61d84fa7e "
    "src/cellmap_segmentation_challenge/utils/eval_utils/"
)
"""Where the scoring rules implemented here were read."""

ORTOOLS_VERSION: str = ortools.__version__
"""The OR-Tools whose min-cost flow matches the instances: its tie-break between matchings of equal
worth is the scores' (the challenge does not pin a version)."""

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

COST_SCALE = 1_000_000
"""The challenge's ``mcmf_cost_scale``: a match costs ``int((1 - IoU) COST_SCALE)``, leaving a
ground-truth instance unmatched ``COST_SCALE + 1`` (:func:`matching_weights`)."""

MAX_OVERLAP_EDGES = 5_000_000
"""The challenge's ``max_overlap_edges``: a crop with more overlapping (truth, prediction) pairs is
skipped like an over-segmented one."""

OFFICIAL, CORRECTED = "official", "corrected"
SCORER_MODES: tuple[str, ...] = (OFFICIAL, CORRECTED)
"""``official``: the challenge's scorer at :data:`CHALLENGE_SOURCE`, quirks included (leaderboard
arithmetic); ``corrected``: the same with its two quirks fixed (see the module docstring)."""

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

    Components are numbered in the order of their first voxel in C (z, y, x raster) order, as
    ``cc3d`` numbers a C-ordered array; the official scorer's Hausdorff step depends on these
    numbers (:func:`score_instance_modes`).

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


class TruthIds:
    """Ground-truth instance ids as the challenge sees them, chunk by chunk, in ``uint32``.

    The official scorer depends on the id *values* (its over-segmentation check divides by the
    largest id; an unmatched predicted component whose number equals an id enters that instance's
    Hausdorff distance), so ids ``1 .. 2^31 - 1`` are kept as they are. Larger ids (``uint64``
    ids exist) become ``2^31, 2^31 + 1, ...`` in order of first appearance: that changes no
    score, since a component number never reaches ``2^31`` and any largest id ``>= 2^31`` makes
    the ratio ``n_pred / largest id`` far below the cutoff. An id 0 that is not background is
    treated like a large id.

    Args:
        background: raw values that become 0 (background or unannotated), e.g. a label
            encoding's ``absent`` and ``unknown`` codes.
    """

    def __init__(self, background: Sequence[int] = (0,)) -> None:
        self._background = {int(b) for b in background}
        self._large: dict[int, int] = {}

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` (any integer dtype and shape) → uint32 of the same shape."""
        unique, inverse = np.unique(np.asarray(ids), return_inverse=True)
        table = np.empty(unique.size, dtype=np.uint32)
        for k, value in enumerate(unique.tolist()):
            if value in self._background:
                table[k] = 0
            elif 0 < value < _LARGE_ID:
                table[k] = value
            else:
                table[k] = self._large.setdefault(value, _LARGE_ID + len(self._large))
        return table[inverse].reshape(np.shape(ids))


_LARGE_ID = 2**31


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
    """``(truth_id, pred_id, IoU)`` of every overlapping pair (ids ``1..n``; IoU float64)."""
    t, p = truth.ravel(), pred.ravel()
    truth_sizes = np.bincount(t, minlength=n_truth + 1)
    pred_sizes = np.bincount(p, minlength=n_pred + 1)
    both = (t > 0) & (p > 0)
    key = t[both].astype(np.int64) * (n_pred + 1) + p[both].astype(np.int64)
    pairs, intersection = np.unique(key, return_counts=True)
    rows, cols = pairs // (n_pred + 1), pairs % (n_pred + 1)
    union = truth_sizes[rows] + pred_sizes[cols] - intersection
    return rows, cols, intersection / union


def matching_weights(iou: np.ndarray) -> np.ndarray:
    """The integer worth of matching each overlapping pair, as the challenge's min-cost flow sees it.

    The challenge rounds IoU to float32, costs a match ``int((1 - IoU) 10^6)`` (truncated) and an
    unmatched ground-truth instance ``10^6 + 1``; minimising the total cost is maximising the sum
    of ``10^6 + 1 - int((1 - IoU) 10^6)`` over the matched pairs (every pair is worth at least 1,
    so any overlap beats no match). Matchings of equal summed worth are ties; which one is chosen
    is the solver's (:func:`match_instances`). A tie can even have different numbers of pairs:
    one pair worth ``w3`` against two worth ``w1 + w2 = w3``, which needs ``IoU3`` within about
    ``2 10^-6`` above ``IoU1 + IoU2``.

    Returns:
        int64 weights, the shape of ``iou``.
    """
    iou32 = np.asarray(iou, dtype=np.float32).astype(np.float64)
    cost = ((1.0 - iou32) * COST_SCALE).astype(np.int64)  # int() truncates, as astype does
    return COST_SCALE + 1 - cost


def _match_pairs(
    rows: np.ndarray, cols: np.ndarray, iou: np.ndarray, n_truth: int, n_pred: int
) -> dict[int, int]:
    """``{pred_id: truth_id}``: the min-cost flow the official scorer solves, built the same way.

    The solver's choice between tied matchings depends on the network's node numbering and arc
    order, so both follow the official scorer's: node 0 the source, ground-truth id ``t`` node
    ``t`` (a node for *every* id up to ``n_truth``, present or not: the absent ones change the
    choice too), component ``p`` node ``n_truth + p``, the sink last; arcs source → each truth
    node, each truth node → sink (``10^6 + 1``, unmatched), the overlapping pairs in the order
    given, each component → sink; capacity 1, supply ``n_truth`` at the source.

    Args:
        rows, cols: ``(E,)`` truth and component ids (``1..n``) of the overlapping pairs, sorted
            by truth id, then component id (as :func:`_iou_pairs` returns them).
        iou: ``(E,)`` their IoU.
        n_truth: the largest truth id (number of truth nodes).
        n_pred: the number of components.
    """
    if rows.size == 0:
        return {}
    truth_nodes = np.arange(1, n_truth + 1, dtype=np.int64)
    sink = n_truth + n_pred + 1
    tails = np.concatenate(
        (np.zeros(n_truth, np.int64), truth_nodes, rows, np.arange(n_truth + 1, sink))
    )
    heads = np.concatenate(
        (truth_nodes, np.full(n_truth, sink), n_truth + cols, np.full(n_pred, sink))
    )
    costs = np.concatenate(
        (
            np.zeros(n_truth, np.int64),
            np.full(n_truth, COST_SCALE + 1, np.int64),
            COST_SCALE + 1 - matching_weights(iou),  # int((1 - IoU) 10^6)
            np.zeros(n_pred, np.int64),
        )
    )
    flow = min_cost_flow.SimpleMinCostFlow()
    flow.add_arcs_with_capacity_and_unit_cost(
        tails.astype(np.int32), heads.astype(np.int32), np.ones(tails.size, np.int64), costs
    )
    flow.set_node_supply(0, n_truth)
    flow.set_node_supply(sink, -n_truth)
    status = flow.solve()
    if status != flow.OPTIMAL:  # cannot happen: leaving every truth unmatched is feasible
        raise RuntimeError(f"min-cost flow matching failed: {status}")
    first = 2 * n_truth  # the pair arcs follow the source and unmatched arcs
    matched = flow.flows(np.arange(first, first + rows.size)) == 1
    return {int(p): int(t) for t, p in zip(rows[matched], cols[matched], strict=True)}


def match_instances(
    truth: np.ndarray, pred: np.ndarray, n_truth: int | None = None, n_pred: int | None = None
) -> dict[int, int]:
    """One-to-one matching of predicted to ground-truth instances, as the challenge matches them.

    The matching of largest summed integer worth (:func:`matching_weights`; any overlap can
    match, there is no IoU threshold), found by the challenge's own solver, OR-Tools'
    ``SimpleMinCostFlow``, on a network laid out as the official scorer lays it out
    (:func:`_match_pairs`), so that ties between matchings of equal worth are broken as there:
    the official choice depends on the ids, the absent ones included, and on the order of the
    pairs, and a tie can change the number of matched pairs. ``tests/test_challenge.py``
    reproduces the official scorer's choice on crops where ``scipy``'s
    ``linear_sum_assignment`` chooses differently.

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
    return _match_pairs(*_iou_pairs(truth, pred, n_truth, n_pred), n_truth, n_pred)


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
        n_truth, n_pred: distinct ground-truth instances and predicted components.
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


def score_instance_modes(
    truth: np.ndarray,
    prediction: np.ndarray,
    voxel_size: Sequence[float],
    modes: Sequence[str] = SCORER_MODES,
) -> dict[str, InstanceScore]:
    """Score one crop of an instance class as the challenge's scorer does (``official``) and with
    its two quirks corrected (``corrected``); the components and the matching are shared.

    Both modes: connected components of the prediction (26-connectivity), the matching of
    :func:`match_instances`, ``TP`` = matched pairs, ``FP`` = unmatched components, ``FN`` =
    unmatched ground-truth instances, one capped Hausdorff distance (nm) per ground-truth instance
    plus the cap once per unmatched component, normalised by :func:`normalized_distance`; a crop
    with more than :data:`MAX_OVERLAP_EDGES` overlapping pairs is skipped. They differ in:

    * the over-segmentation check ``n_pred / n > 10 + 50 exp(-n / 5)``: ``official`` takes ``n``
      = the largest ground-truth id, ``corrected`` the number of distinct ids;
    * the prediction a ground-truth instance ``t`` is measured against: ``corrected`` its matched
      component only; ``official`` every voxel that reads ``t`` once matched components are
      renamed to their match's id, i.e. its match plus an *unmatched* component whose own number
      is ``t``. Distances are rounded to float32 there, as the official scorer stores them.

    Args:
        truth: ``(Z, Y, X)`` ground-truth instance ids (0 background and unannotated; any ids,
            e.g. from :class:`TruthIds`).
        prediction: same shape, bool: the thresholded prediction (unannotated voxels False).
        voxel_size: ``(z, y, x)`` nm of both grids.
        modes: which of :data:`SCORER_MODES` to score.

    Returns:
        mode → :class:`InstanceScore`.
    """
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ")
    unknown = set(modes) - set(SCORER_MODES)
    if unknown:
        raise ValueError(f"unknown scorer modes {sorted(unknown)}; use {SCORER_MODES}")
    truth = np.asarray(truth)
    if truth.dtype == np.uint64:  # bincount and find_objects need a signed-compatible type
        truth = truth.astype(np.int64)
    pred, n_pred = connected_components(prediction)
    largest_id = int(truth.max(initial=0))
    labels, present = _dense_labels(truth, largest_id)
    n_truth = int(present.size)
    skipped = InstanceScore(0, 0, 0, 0.0, 0, 0.0, n_truth, n_pred, SKIPPED)
    ratio_skip = {
        OFFICIAL: largest_id > 0 and n_pred / largest_id > instance_ratio_cutoff(largest_id),
        CORRECTED: n_truth > 0 and n_pred / n_truth > instance_ratio_cutoff(n_truth),
    }
    scored = [m for m in modes if not ratio_skip[m]]
    out = {m: skipped for m in modes if ratio_skip[m]}
    if not scored:
        return out
    dense_max = int(labels.max(initial=0))
    mapping: dict[int, int] = {}  # component → dense truth label
    if n_truth and n_pred:
        rows, cols, iou = _iou_pairs(labels, pred, dense_max, n_pred)
        if rows.size > MAX_OVERLAP_EDGES:
            return {m: skipped for m in modes}
        # a flow node per id up to the largest, as the official scorer's (ranks above 2^20)
        mapping = _match_pairs(rows, cols, iou, dense_max, n_pred)
    match_of = {k: p for p, k in mapping.items()}
    cap = max_distance_nm(voxel_size, truth.shape)
    truth_boxes = ndimage.find_objects(labels, max_label=dense_max) if dense_max else []
    pred_boxes = ndimage.find_objects(pred) if n_pred else []
    keys = present.tolist() if labels is truth else list(range(1, n_truth + 1))
    tp = len(mapping)
    measured: dict[tuple[int, ...], float] = {}  # (label, *components): both modes share most
    for mode in scored:
        distances = []
        for k, t in zip(keys, present.tolist(), strict=True):
            components = [match_of[k]] if k in match_of else []
            if mode == OFFICIAL and t <= n_pred and t not in mapping:
                components.append(t)  # an unmatched component keeps its number: t
            key = (k, *components)
            if key not in measured:
                measured[key] = _distance_to_components(
                    labels, pred, k, components, truth_boxes[k - 1], pred_boxes, voxel_size, cap
                )
            distances.append(measured[key])
        distances += [cap] * (n_pred - tp)
        d = np.asarray(distances, dtype=np.float32 if mode == OFFICIAL else np.float64)
        d = d.astype(np.float64)
        out[mode] = InstanceScore(
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
    return {m: out[m] for m in modes}


def score_instances(
    truth: np.ndarray, prediction: np.ndarray, voxel_size: Sequence[float], mode: str = OFFICIAL
) -> InstanceScore:
    """One mode of :func:`score_instance_modes` (default: the official scorer)."""
    return score_instance_modes(truth, prediction, voxel_size, (mode,))[mode]


def _dense_labels(truth: np.ndarray, largest_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, present)``: the sorted ids present, and labels whose per-id arrays (sizes,
    boxes) stay small: ``truth`` itself when its largest id is at most :data:`_DENSE_IDS`, else
    the ids' ranks ``1..n`` (int32)."""
    if largest_id <= _DENSE_IDS:
        sizes = np.bincount(truth.ravel(), minlength=largest_id + 1)
        return truth, np.flatnonzero(sizes[1:]) + 1
    present = np.unique(truth[truth > 0])
    ranks = np.where(truth > 0, np.searchsorted(present, truth) + 1, 0).astype(np.int32)
    return ranks, present


_DENSE_IDS = 1 << 20


def _distance_to_components(
    truth: np.ndarray,
    pred: np.ndarray,
    t: int,
    components: Sequence[int],
    truth_box: tuple[slice, ...],
    pred_boxes: Sequence[tuple[slice, ...] | None],
    voxel_size: Sequence[float],
    cap: float,
) -> float:
    """Hausdorff distance (nm, capped) between instance ``t`` and the union of ``components``."""
    if not components:
        return cap
    box = truth_box
    for p in components:
        other = pred_boxes[p - 1]
        assert other is not None  # components are 1..n_pred, all present
        box = _union_box(box, other)
    b = np.isin(pred[box], components) if len(components) > 1 else pred[box] == components[0]
    return hausdorff_distance_nm(truth[box] == t, b, voxel_size, cap)


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
    instance_combined: Sequence[float], semantic_iou: Sequence[float], mode: str = CORRECTED
) -> OverallScores:
    """The challenge's overall scores: plain means over classes, then their geometric mean.

    Args:
        instance_combined: ``combined`` of each instance class scored (NaNs are dropped).
        semantic_iou: pooled IoU of each semantic class scored (NaNs are dropped).
        mode: a part without any class is 0 in ``official`` mode (the official scorer's
            ``combine_scores``), NaN (undefined) in ``corrected`` mode.
    """
    absent = 0.0 if mode == OFFICIAL else math.nan
    inst = [float(v) for v in instance_combined if math.isfinite(float(v))]
    sem = [float(v) for v in semantic_iou if math.isfinite(float(v))]
    instance = float(np.mean(inst)) if inst else absent
    semantic = float(np.mean(sem)) if sem else absent
    return OverallScores(instance, semantic, math.sqrt(instance * semantic))


INSTANCE_SUM_COLUMNS: tuple[str, ...] = (
    "instance_tp",
    "instance_fp",
    "instance_fn",
    "hausdorff_norm_sum",
    "hausdorff_count",
)
"""The per-crop instance values a class pools over crops (:func:`instance_class_scores`' args)."""

_MODE_PREFIX = {OFFICIAL: "", CORRECTED: "corrected_"}


def instance_column_names(mode: str) -> tuple[str, ...]:
    """A mode's per-crop instance columns of the metrics CSV: :data:`INSTANCE_SUM_COLUMNS`,
    ``hausdorff_mean_nm`` and ``instance_status``; unprefixed for ``official``, prefixed
    ``corrected_`` for ``corrected``."""
    names = (*INSTANCE_SUM_COLUMNS, "hausdorff_mean_nm", "instance_status")
    return tuple(_MODE_PREFIX[mode] + n for n in names)


INSTANCE_COLUMNS: tuple[str, ...] = tuple(c for m in SCORER_MODES for c in instance_column_names(m))
"""Every mode's per-crop instance columns (official first)."""

INTEGER_INSTANCE_COLUMNS: tuple[str, ...] = tuple(
    _MODE_PREFIX[m] + n
    for m in SCORER_MODES
    for n in ("instance_tp", "instance_fp", "instance_fn", "hausdorff_count")
)
STATUS_COLUMNS: tuple[str, ...] = tuple(_MODE_PREFIX[m] + "instance_status" for m in SCORER_MODES)


def instance_columns(scores: Mapping[str, InstanceScore]) -> dict[str, Any]:
    """The :data:`INSTANCE_COLUMNS` values of one crop × instance class from its scores per mode
    (:func:`score_instance_modes`); ``hausdorff_mean_nm`` is NaN without distances."""
    out: dict[str, Any] = {}
    for mode, score in scores.items():
        count = score.hausdorff_count
        values = (
            score.tp,
            score.fp,
            score.fn,
            score.hausdorff_norm_sum,
            count,
            score.hausdorff_sum_nm / count if count else math.nan,
            score.status,
        )
        out.update(zip(instance_column_names(mode), values, strict=True))
    return out
