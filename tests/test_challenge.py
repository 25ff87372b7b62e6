"""Challenge-style scores: hand-built crops with known matches and distances, checked against
independent references (brute-force point distances, brute-force matchings)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from cellseg.challenge import (
    INSTANCE_CLASSES,
    SequentialIds,
    connected_components,
    hausdorff_distance_nm,
    instance_class_scores,
    instance_ratio_cutoff,
    match_instances,
    max_distance_nm,
    normalized_distance,
    overall_scores,
    pooled_iou,
    score_instances,
)

VOXEL = (16.0, 8.0, 4.0)  # anisotropic, nm (z, y, x)


def brute_hausdorff(a: np.ndarray, b: np.ndarray, voxel_size) -> float:
    """Symmetric Hausdorff distance from every pair of voxel centres (no distance transform)."""
    pa = np.argwhere(a) * np.asarray(voxel_size)
    pb = np.argwhere(b) * np.asarray(voxel_size)
    d = cdist(pa, pb)
    return float(max(d.min(axis=1).max(), d.min(axis=0).max()))


def ious(truth: np.ndarray, pred: np.ndarray) -> dict[tuple[int, int], float]:
    """IoU of every (truth id, pred id) pair, by explicit masks."""
    out = {}
    for t in range(1, truth.max() + 1):
        for p in range(1, pred.max() + 1):
            a, b = truth == t, pred == p
            union = np.count_nonzero(a | b)
            out[t, p] = np.count_nonzero(a & b) / union if union else 0.0
    return out


def brute_best_matching(truth: np.ndarray, pred: np.ndarray) -> float:
    """Largest ``Σ (IoU + 1e-6)`` over all one-to-one matchings of overlapping pairs."""
    iou = ious(truth, pred)
    t_ids, p_ids = list(range(1, truth.max() + 1)), list(range(1, pred.max() + 1))
    best = 0.0
    # each truth instance takes a distinct prediction or none (None)
    for choice in itertools.product([None, *p_ids], repeat=len(t_ids)):
        used = [p for p in choice if p is not None]
        if len(used) != len(set(used)):
            continue
        pairs = [(t, p) for t, p in zip(t_ids, choice, strict=True) if p is not None]
        if any(iou[t, p] == 0 for t, p in pairs):
            continue
        best = max(best, sum(iou[t, p] + 1e-6 for t, p in pairs))
    return best


# ------------------------------------------------------------------------------ pieces


def test_connected_components_use_26_connectivity():
    mask = np.zeros((3, 3, 6), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # touching at a corner only: one component
    mask[2, 2, 4] = mask[2, 2, 5] = True  # two voxels apart from the rest
    labels, n = connected_components(mask)
    assert n == 2
    assert labels[0, 0, 0] == labels[1, 1, 1] != labels[2, 2, 4] == labels[2, 2, 5]


def test_sequential_ids_are_consistent_across_chunks_and_drop_background():
    ids = SequentialIds(background=(0, 255))
    first = ids(np.array([[0, 70000, 5], [255, 5, 5]], dtype=np.uint64))
    second = ids(np.array([[9, 70000, 0]], dtype=np.uint64))
    assert first.dtype == np.uint32
    assert first.tolist() == [[0, 2, 1], [0, 1, 1]]  # sorted within a chunk: 5 then 70000
    assert second.tolist() == [[3, 2, 0]]
    assert ids.n == 3


@pytest.mark.parametrize("seed", range(6))
def test_hausdorff_equals_brute_force_on_random_sets(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((4, 6, 7)) < 0.15
    b = rng.random((4, 6, 7)) < 0.15
    a[1, 2, 3] = b[3, 0, 6] = True  # never empty
    assert hausdorff_distance_nm(a, b, VOXEL) == pytest.approx(brute_hausdorff(a, b, VOXEL))


def test_hausdorff_known_values_cap_and_empty_sets():
    a = np.zeros((2, 3, 8), dtype=bool)
    b = a.copy()
    a[0, 0, 0] = True
    b[0, 0, 3] = True
    assert hausdorff_distance_nm(a, b, VOXEL) == pytest.approx(12.0)  # 3 voxels x 4 nm
    b[1, 2, 3] = True  # one more voxel: sqrt(16^2 + 16^2 + 12^2) = 25.6 from a
    assert hausdorff_distance_nm(a, b, VOXEL) == pytest.approx(math.sqrt(16**2 + 16**2 + 12**2))
    assert hausdorff_distance_nm(a, b, VOXEL, cap=20.0) == 20.0
    empty = np.zeros_like(a)
    assert hausdorff_distance_nm(empty, empty, VOXEL, cap=20.0) == 0.0
    assert hausdorff_distance_nm(a, empty, VOXEL, cap=20.0) == 20.0


def test_max_distance_and_normalisation():
    assert max_distance_nm(VOXEL, (10, 30, 100)) == pytest.approx(min(80, 120, 200))
    scale = math.sqrt(16**2 + 8**2 + 4**2)
    got = normalized_distance(np.array([0.0, 42.0, np.inf]), VOXEL)
    np.testing.assert_allclose(got, [1.0, 1.01 ** (-42 / scale), 0.0])


def test_ratio_cutoff_is_the_challenge_default():
    assert instance_ratio_cutoff(1) == pytest.approx(10 + 50 * math.exp(-1 / 5))
    assert instance_ratio_cutoff(100) == pytest.approx(10, abs=1e-6)


# ------------------------------------------------------------------------------ matching


def line(*runs: tuple[int, int, int], length: int = 20) -> np.ndarray:
    """A (1, 1, length) label image with ``label`` on ``[start, stop)`` for each run."""
    out = np.zeros((1, 1, length), dtype=np.int32)
    for label, start, stop in runs:
        out[0, 0, start:stop] = label
    return out


def test_matching_maximises_summed_iou_not_greedy():
    # truth 1 = [0, 10), truth 2 = [10, 20); pred A (1) = [3, 15), pred B (2) = [0, 3)
    truth = line((1, 0, 10), (2, 10, 20))
    pred = line((2, 0, 3), (1, 3, 15))
    iou = ious(truth, pred)
    assert iou[1, 1] == pytest.approx(7 / 15) and iou[2, 1] == pytest.approx(5 / 17)
    assert iou[1, 2] == pytest.approx(3 / 10) and iou[2, 2] == 0
    # greedy (A to truth 1) sums 0.467; A to truth 2 and B to truth 1 sums 0.594
    assert match_instances(truth, pred) == {1: 2, 2: 1}


def test_matching_needs_overlap_and_handles_empty_sides():
    truth = line((1, 0, 5))
    pred = line((1, 10, 15))
    assert match_instances(truth, pred) == {}
    assert match_instances(truth, np.zeros_like(pred)) == {}
    assert match_instances(np.zeros_like(truth), pred) == {}


@pytest.mark.parametrize("seed", range(8))
def test_matching_equals_brute_force_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, size=(1, 3, 5)).astype(np.int32)
    pred = rng.integers(0, 4, size=(1, 3, 5)).astype(np.int32)
    truth[0, 0, :3] = [1, 2, 3]
    pred[0, 2, :3] = [1, 2, 3]  # every id present
    mapping = match_instances(truth, pred)
    iou = ious(truth, pred)
    assert len(set(mapping.values())) == len(mapping)  # one-to-one
    assert all(iou[t, p] > 0 for p, t in mapping.items())
    total = sum(iou[t, p] + 1e-6 for p, t in mapping.items())
    assert total == pytest.approx(brute_best_matching(truth, pred), abs=1e-9)


# ------------------------------------------------------------------------------ one crop


def cube(shape, z, y, x) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[z[0] : z[1], y[0] : y[1], x[0] : x[1]] = True
    return out


def test_crop_with_a_shifted_match_a_miss_and_a_false_positive():
    shape = (6, 12, 24)
    truth = np.zeros(shape, dtype=np.uint32)
    truth[cube(shape, (1, 4), (1, 5), (1, 7))] = 1  # found, shifted by 2 x voxels
    truth[cube(shape, (1, 4), (7, 11), (15, 20))] = 2  # missed
    found = cube(shape, (1, 4), (1, 5), (3, 9))
    extra = cube(shape, (5, 6), (8, 11), (2, 4))  # not touching anything
    score = score_instances(truth, found | extra, VOXEL)
    cap = max_distance_nm(VOXEL, shape)  # min(48, 48, 48) nm
    shifted = brute_hausdorff(truth == 1, found, VOXEL)
    assert shifted == pytest.approx(8.0)  # 2 voxels x 4 nm
    assert (score.tp, score.fp, score.fn) == (1, 1, 1)
    assert (score.n_truth, score.n_pred, score.status) == (2, 2, "scored")
    assert score.hausdorff_count == 3  # truth 1, truth 2 (cap), the extra prediction (cap)
    assert score.hausdorff_sum_nm == pytest.approx(shifted + 2 * cap)
    expected = normalized_distance(np.array([shifted, cap, cap]), VOXEL).sum()
    assert score.hausdorff_norm_sum == pytest.approx(expected)


def test_hausdorff_of_a_match_is_capped():
    shape = (2, 2, 40)
    truth = np.zeros(shape, dtype=np.uint32)
    truth[:, :, 0:30] = 1
    pred = np.zeros(shape, dtype=bool)
    pred[:, :, 0:2] = True  # overlaps, but its far end is 28 voxels (112 nm) away
    score = score_instances(truth, pred, VOXEL)
    cap = max_distance_nm(VOXEL, shape)  # min(16, 8, 80) = 8 nm
    assert score.tp == 1 and score.hausdorff_sum_nm == pytest.approx(cap)


def test_empty_crops():
    shape = (2, 3, 4)
    none = score_instances(np.zeros(shape, np.uint32), np.zeros(shape, bool), VOXEL)
    assert (none.tp, none.fp, none.fn, none.hausdorff_count) == (0, 0, 0, 0)
    truth = np.zeros(shape, np.uint32)
    truth[0, 0, 0], truth[1, 2, 3] = 1, 2
    missed = score_instances(truth, np.zeros(shape, bool), VOXEL)
    cap = max_distance_nm(VOXEL, shape)
    assert (missed.tp, missed.fp, missed.fn, missed.hausdorff_count) == (0, 0, 2, 2)
    assert missed.hausdorff_norm_sum == pytest.approx(2 * float(normalized_distance(cap, VOXEL)))
    invented = score_instances(np.zeros(shape, np.uint32), truth > 0, VOXEL)
    assert (invented.tp, invented.fp, invented.fn, invented.hausdorff_count) == (0, 2, 0, 2)


@pytest.mark.parametrize(("n_pred", "status"), [(50, "scored"), (52, "skipped_too_many_instances")])
def test_too_many_predicted_instances_skip_the_crop(n_pred, status):
    shape = (1, 20, 20)
    truth = np.zeros(shape, np.uint32)
    truth[0, 0, 0] = 1
    pred = np.zeros(shape, bool)
    spots = [(y, x) for y in range(0, 20, 2) for x in range(0, 20, 2)][:n_pred]
    for y, x in spots:  # isolated voxels: one component each
        pred[0, y, x] = True
    score = score_instances(truth, pred, VOXEL)
    assert score.n_pred == n_pred and score.status == status
    assert instance_ratio_cutoff(1) == pytest.approx(50.94, abs=0.01)  # 51 allowed, 52 not
    if status != "scored":
        assert (score.tp, score.fp, score.fn, score.hausdorff_count) == (0, 0, 0, 0)
    else:
        assert (score.tp, score.fp, score.fn, score.hausdorff_count) == (1, n_pred - 1, 0, n_pred)


# ------------------------------------------------------------------------------ aggregation


def test_class_and_overall_scores():
    assert INSTANCE_CLASSES == ("nuc",)
    assert pooled_iou(2, 1, 1) == 0.5 and pooled_iou(0, 0, 0) == 1.0
    f1, hd, combined = instance_class_scores(tp=3, fp=1, fn=2, hausdorff_norm_sum=4.0,
                                             hausdorff_count=5)  # fmt: skip
    assert f1 == pytest.approx(6 / 9) and hd == pytest.approx(0.8)
    assert combined == pytest.approx(math.sqrt(6 / 9 * 0.8))
    assert instance_class_scores(0, 0, 0, 0.0, 0) == (1.0, 1.0, 1.0)
    assert instance_class_scores(0, 0, 2, 0.6, 2).f1 == 0.0
    overall = overall_scores([0.49], [0.5, 1.0, np.nan])
    assert overall.semantic == 0.75 and overall.instance == 0.49
    assert overall.overall == pytest.approx(math.sqrt(0.49 * 0.75))
    assert math.isnan(overall_scores([], [0.5]).overall)
