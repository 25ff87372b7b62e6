"""Challenge-style scores: hand-built crops with known matches and distances, checked against
independent references (brute-force point distances, brute-force matchings), and the official
scorer's own values on 10 crops (``tests/fixtures/challenge_reference``, copied from
``shared/challenge_reference``; its README says how the scorer was called) and on 4 crops whose
matching is tied (``tie_reference_scores.json`` there: built for these tests, scored the same
way)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from cellseg import challenge
from cellseg.challenge import (
    CORRECTED,
    INSTANCE_CLASSES,
    INSTANCE_COLUMNS,
    OFFICIAL,
    SequentialIds,
    TruthIds,
    connected_components,
    hausdorff_distance_nm,
    instance_class_scores,
    instance_ratio_cutoff,
    match_instances,
    max_distance_nm,
    normalized_distance,
    overall_scores,
    pooled_iou,
    score_instance_modes,
    score_instances,
)

VOXEL = (16.0, 8.0, 4.0)  # anisotropic, nm (z, y, x)


def brute_hausdorff(a: np.ndarray, b: np.ndarray, voxel_size) -> float:
    """Symmetric Hausdorff distance from every pair of voxel centres (no distance transform)."""
    pa = np.argwhere(a) * np.asarray(voxel_size)
    pb = np.argwhere(b) * np.asarray(voxel_size)
    d = cdist(pa, pb)
    return float(max(d.min(axis=1).max(), d.min(axis=0).max()))


def present(labels: np.ndarray) -> list[int]:
    """The nonzero ids of a label image."""
    return [int(i) for i in np.unique(labels) if i != 0]


def ious(truth: np.ndarray, pred: np.ndarray) -> dict[tuple[int, int], float]:
    """IoU of every (truth id, pred id) pair of present ids, by explicit masks."""
    out = {}
    for t in present(truth):
        for p in present(pred):
            a, b = truth == t, pred == p
            union = np.count_nonzero(a | b)
            out[t, p] = np.count_nonzero(a & b) / union if union else 0.0
    return out


def worth(iou: float) -> int:
    """A pair's integer worth in the challenge's min-cost flow: unmatched costs 10^6 + 1, a match
    int((1 - IoU) 10^6) with IoU rounded to float32."""
    return 10**6 + 1 - int((1.0 - float(np.float32(iou))) * 10**6)


def optimal_matchings(truth: np.ndarray, pred: np.ndarray) -> tuple[int, list[dict[int, int]]]:
    """The largest total worth over all one-to-one matchings of overlapping pairs, and every
    matching (``{pred: truth}``) that reaches it."""
    iou = ious(truth, pred)
    t_ids, p_ids = present(truth), present(pred)
    found: dict[int, list[dict[int, int]]] = {}
    for choice in itertools.product([None, *p_ids], repeat=len(t_ids)):
        used = [p for p in choice if p is not None]
        pairs = [(t, p) for t, p in zip(t_ids, choice, strict=True) if p is not None]
        if len(used) != len(set(used)) or any(iou[t, p] == 0 for t, p in pairs):
            continue
        found.setdefault(sum(worth(iou[t, p]) for t, p in pairs), []).append(
            {p: t for t, p in pairs}
        )
    best = max(found)
    return best, found[best]


def brute_best_matching(truth: np.ndarray, pred: np.ndarray) -> float:
    """Largest ``Σ (IoU + 1e-6)`` over all one-to-one matchings of overlapping pairs."""
    iou = ious(truth, pred)
    t_ids, p_ids = present(truth), present(pred)
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
    best, matchings = optimal_matchings(truth, pred)
    assert sum(worth(iou[t, p]) for p, t in mapping.items()) == best
    assert mapping in matchings
    # the integer worth keeps the IoU order: the summed IoU is the best to 10^-6 per pair
    total = sum(iou[t, p] + 1e-6 for p, t in mapping.items())
    assert total == pytest.approx(brute_best_matching(truth, pred), abs=1e-5)


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
    extra = cube(shape, (5, 6), (8, 11), (2, 4))  # not touching anything: component 2
    score = score_instances(truth, found | extra, VOXEL, CORRECTED)
    cap = max_distance_nm(VOXEL, shape)  # min(48, 48, 48) nm
    shifted = brute_hausdorff(truth == 1, found, VOXEL)
    assert shifted == pytest.approx(8.0)  # 2 voxels x 4 nm
    assert (score.tp, score.fp, score.fn) == (1, 1, 1)
    assert (score.n_truth, score.n_pred, score.status) == (2, 2, "scored")
    assert score.hausdorff_count == 3  # truth 1, truth 2 (cap), the extra prediction (cap)
    assert score.hausdorff_sum_nm == pytest.approx(shifted + 2 * cap)
    expected = normalized_distance(np.array([shifted, cap, cap]), VOXEL).sum()
    assert score.hausdorff_norm_sum == pytest.approx(expected)
    # the official scorer measures missed truth 2 against the unmatched component numbered 2,
    # which lies beyond the cap: the same score here
    assert brute_hausdorff(truth == 2, extra, VOXEL) > cap
    assert score_instances(truth, found | extra, VOXEL, OFFICIAL) == score


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
    score = score_instances(truth, pred, VOXEL)  # ids 1..n: both modes count 1 instance
    assert score == score_instances(truth, pred, VOXEL, CORRECTED)
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
    assert overall_scores([], [0.5], OFFICIAL) == (0.0, 0.5, 0.0)  # combine_scores: 0 if absent


def test_components_are_numbered_in_raster_order_of_their_first_voxel():
    """The official scorer's Hausdorff step depends on the numbers cc3d gives: in a C-ordered
    array, the order of each component's first voxel in memory (z, y, x raster) order."""
    rng = np.random.default_rng(3)
    mask = rng.random((6, 9, 11)) < 0.12
    labels, n = connected_components(mask)
    assert n > 10
    first = [int(np.flatnonzero(labels.ravel() == k)[0]) for k in range(1, n + 1)]
    assert first == sorted(first)


def test_truth_ids_keep_their_values_and_drop_background():
    ids = TruthIds(background=(0, 255))
    first = ids(np.array([[0, 70000, 5], [255, 5, 2**40]], dtype=np.uint64))
    second = ids(np.array([[2**40 + 1, 2**40, 0]], dtype=np.uint64))
    assert first.dtype == np.uint32
    assert first.tolist() == [[0, 70000, 5], [0, 5, 2**31]]
    assert second.tolist() == [[2**31 + 1, 2**31, 0]]


# ------------------------------------------------------------------------------ the official scorer

FIXTURES = Path(__file__).parent / "fixtures" / "challenge_reference"
REFERENCE = json.loads((FIXTURES / "reference_scores.json").read_text())
TIES = json.loads((FIXTURES / "tie_reference_scores.json").read_text())
SEMANTIC = ("mito_lum", "er_lum")


def score_case(case: dict, mode: str) -> tuple[str, dict[str, float]]:
    """One fixture crop scored as its README says the reference was: unknown (255) voxels zeroed
    in truth and prediction, ``nuc`` as instances, two semantic classes; combined per crop."""
    data = np.load(FIXTURES / case["file"])
    truth = data["nuc_truth"]
    known = truth != 255
    score = score_instances(truth * known, (data["nuc_prediction"] * known) > 0,
                            case["voxel_size_nm"], mode)  # fmt: skip
    f1, hausdorff, combined = instance_class_scores(
        score.tp, score.fp, score.fn, score.hausdorff_norm_sum, score.hausdorff_count
    )
    values = {"f1": f1, "hausdorff": hausdorff, "combined": combined,
              "tp": score.tp, "fp": score.fp, "fn": score.fn}  # fmt: skip
    for name in SEMANTIC:
        t = data[f"{name}_truth"]
        known = t != 255
        a, b = (t * known) > 0, (data[f"{name}_prediction"] * known) > 0
        tp = int(np.count_nonzero(a & b))
        values[f"iou_{name}"] = pooled_iou(tp, int(b.sum()) - tp, int(a.sum()) - tp)
    overall = overall_scores([combined], [values[f"iou_{n}"] for n in SEMANTIC], mode)
    values |= {"semantic": overall.semantic, "overall": overall.overall}
    return score.status, values


@pytest.mark.parametrize("case", REFERENCE + TIES, ids=[c["case"] for c in REFERENCE + TIES])
def test_official_mode_reproduces_the_official_scorer(case):
    status, values = score_case(case, OFFICIAL)
    assert status == case["reference_status"]
    assert set(values) == set(case["reference"])
    for key, expected in case["reference"].items():
        assert values[key] == pytest.approx(expected, abs=1e-6, rel=0), key


def test_corrected_mode_changes_only_the_quirks():
    """random_blobs: an unmatched component's number equals a missed true id, which the official
    scorer measures against it; sparse_ids_ratio: ids {1, 50} with 421 components, which the
    official scorer scores (421 / 50 < 10.02) and the corrected one skips (421 / 2 > 10 + 50/e^0.4).
    Every other value of every case is the same in both modes."""
    changed = {}
    for case in REFERENCE:
        status, values = score_case(case, CORRECTED)
        reference = case["reference"]
        if status != case["reference_status"]:
            changed[case["case"], "status"] = status
        for key, expected in reference.items():
            if abs(values[key] - expected) > 1e-6:
                changed[case["case"], key] = values[key] - expected
    assert set(changed) == {
        ("random_blobs", "hausdorff"), ("random_blobs", "combined"), ("random_blobs", "overall"),
        ("sparse_ids_ratio", "status"), ("sparse_ids_ratio", "f1"),
        ("sparse_ids_ratio", "hausdorff"), ("sparse_ids_ratio", "combined"),
        ("sparse_ids_ratio", "overall"), ("sparse_ids_ratio", "tp"), ("sparse_ids_ratio", "fp"),
    }  # fmt: skip
    assert changed["random_blobs", "hausdorff"] > 0  # the official one was worse than the truth
    assert changed["sparse_ids_ratio", "status"] == "skipped_too_many_instances"
    assert changed["sparse_ids_ratio", "overall"] > 0  # nothing counted: combined 1


def test_both_modes_in_one_call_and_their_columns():
    data = np.load(FIXTURES / "random_blobs.npz")
    truth, pred = data["nuc_truth"], data["nuc_prediction"] > 0
    both = score_instance_modes(truth, pred, (8, 8, 8))
    assert both[OFFICIAL] == score_instances(truth, pred, (8, 8, 8), OFFICIAL)
    assert both[CORRECTED] == score_instances(truth, pred, (8, 8, 8), CORRECTED)
    columns = challenge.instance_columns(both)
    assert tuple(columns) == INSTANCE_COLUMNS
    assert columns["instance_tp"] == columns["corrected_instance_tp"] == both[OFFICIAL].tp
    assert columns["hausdorff_norm_sum"] != columns["corrected_hausdorff_norm_sum"]


# ------------------------------------------------------------------------------ matching ties


def lsa_pairs(rows, cols, iou, n_truth, n_pred) -> dict[int, int]:
    """The matching cellseg used before it ran the challenge's solver: the same integer worth
    maximised by ``scipy.optimize.linear_sum_assignment`` over the instances that overlap
    something; optimal too, but it breaks ties its own way."""
    truth_ids, r = np.unique(rows, return_inverse=True)
    pred_ids, c = np.unique(cols, return_inverse=True)
    weight = np.zeros((truth_ids.size, pred_ids.size))
    weight[r, c] = [worth(v) for v in iou]
    assigned_r, assigned_c = linear_sum_assignment(weight, maximize=True)
    return {
        int(pred_ids[j]): int(truth_ids[i])
        for i, j in zip(assigned_r, assigned_c, strict=True)
        if weight[i, j] > 0
    }


def tie_crop(case: dict) -> tuple[np.ndarray, np.ndarray]:
    """A tie fixture's ``nuc`` truth and thresholded prediction, unannotated voxels zeroed."""
    data = np.load(FIXTURES / case["file"])
    known = data["nuc_truth"] != 255
    return data["nuc_truth"] * known, (data["nuc_prediction"] * known) > 0


TIE_CHANGES = {  # what the old tie-break changed: the number of pairs, or only the distances
    "tie_one_pair": ("f1", "tp"),
    "tie_two_pairs": ("f1", "tp"),
    "tie_absent_ids": ("f1", "tp"),
    "tie_hausdorff": ("hausdorff",),
}


@pytest.mark.parametrize("case", TIES, ids=[c["case"] for c in TIES])
def test_ties_are_broken_as_the_official_scorer_breaks_them(case, monkeypatch):
    """Each tie fixture has several optimal matchings (brute force); the official scorer's choice
    is reproduced (``test_official_mode_reproduces_the_official_scorer``), and the matching cellseg
    used before (``linear_sum_assignment``) chose another, which changes the score: in three crops
    the number of pairs (one pair worth w3 against two worth w1 + w2 = w3), in the fourth only
    the Hausdorff part (two equally worth pieces of different shape)."""
    truth, pred = tie_crop(case)
    labels, _ = connected_components(pred)
    _, matchings = optimal_matchings(truth, labels)
    assert len(matchings) >= 2  # a real tie
    sizes = {len(m) for m in matchings}
    changed = TIE_CHANGES[case["case"]]
    assert (len(sizes) > 1) == ("tp" in changed)
    chosen = match_instances(truth.astype(np.int64), labels)
    assert chosen in matchings
    monkeypatch.setattr(challenge, "_match_pairs", lsa_pairs)
    old = match_instances(truth.astype(np.int64), labels)
    assert old in matchings and old != chosen
    _, values = score_case(case, OFFICIAL)
    differs = {k for k, v in case["reference"].items() if abs(values[k] - v) > 1e-6}
    assert set(changed) <= differs
    assert differs <= {*changed, "fp", "fn", "hausdorff", "combined", "overall"}


def test_the_flow_has_a_node_for_every_id_up_to_the_largest():
    """``tie_absent_ids`` (ids {4, 52}): the same pairs with the ids renumbered 1, 2 (no nodes
    for the absent ids) make the solver choose the other optimal matching, so absent ids must
    keep their nodes, as in the official scorer's network."""
    case = next(c for c in TIES if c["case"] == "tie_absent_ids")
    truth, pred = tie_crop(case)
    labels, _ = connected_components(pred)
    truth = truth.astype(np.int64)
    assert present(truth) == [4, 52]
    compact = np.searchsorted([0, 4, 52], truth)  # 4 -> 1, 52 -> 2
    ids = {1: 4, 2: 52}
    renumbered = {p: ids[t] for p, t in match_instances(compact, labels).items()}
    assert renumbered != match_instances(truth, labels)
    assert len(renumbered) != len(match_instances(truth, labels))  # here even F1 would change


def scores_under_every_optimal_matching(truth, pred, monkeypatch) -> list[dict]:
    """The official and corrected scores of the crop with the matching forced to each matching of
    the best total worth (all ties), by brute force."""
    labels, _ = connected_components(pred)
    _, matchings = optimal_matchings(truth, labels)
    out = []
    for forced in matchings:
        monkeypatch.setattr(challenge, "_match_pairs", lambda *_, m=forced: dict(m))
        out.append(score_instance_modes(truth, pred, VOXEL))
    return out


def mirror_tie(truth_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A (3, 3, 8)-voxel true instance in a (12, 12, 24) crop (cap 48 nm) and two 3-voxel
    predicted components, each overlapping one end voxel of it: mirror images across its centre."""
    shape = (12, 12, 24)
    truth = np.zeros(shape, np.uint32)
    truth[5:8, 5:8, 4:12] = truth_id
    pred = np.zeros(shape, bool)
    pred[6, 6, 2:5] = pred[6, 6, 11:14] = True
    return truth, pred


def test_a_tie_between_mirror_images_cannot_change_the_score(monkeypatch):
    """A true instance (id 3, so no component number equals it) between two predicted
    components that are mirror images of each other across its centre: equal IoU, so two
    optimal matchings, and by the mirror symmetry the same distances whichever is chosen."""
    truth, pred = mirror_tie(3)
    scores = scores_under_every_optimal_matching(truth, pred, monkeypatch)
    assert len(scores) == 2  # a real tie
    assert scores[0] == scores[1]
    monkeypatch.undo()
    assert score_instance_modes(truth, pred, VOXEL) == scores[0]


def test_a_mirror_tie_changes_the_official_hausdorff_through_the_numbering(monkeypatch):
    """The same tie with the true id 1: both matchings have one pair (same F1) and mirror-image
    distances (same corrected score), but under the official quirk the true id 1 also gathers
    the unmatched component 1 when component 2 is chosen (measured against both ends it is
    nearer), so the tie-break matters there; the solver picks component 2 (the last), as the
    official scorer's flow does for one instance and two equally worth pieces
    (``tie_hausdorff``)."""
    truth, pred = mirror_tie(1)
    scores = scores_under_every_optimal_matching(truth, pred, monkeypatch)
    assert len(scores) == 2
    counts = {(s[m].tp, s[m].fp, s[m].fn) for s in scores for m in (OFFICIAL, CORRECTED)}
    assert counts == {(1, 1, 0)}
    assert scores[0][CORRECTED] == scores[1][CORRECTED]  # mirror images
    official = sorted(s[OFFICIAL].hausdorff_sum_nm for s in scores)
    assert official[0] < official[1]
    monkeypatch.undo()
    assert match_instances(truth, connected_components(pred)[0]) == {2: 1}
    score = score_instances(truth, pred, VOXEL)
    assert score.hausdorff_sum_nm == official[0]
    # the official score_instance (ortools 9.15.6755) on this crop, as the fixtures were made
    assert score.hausdorff_norm_sum == pytest.approx(1.9626555210431045, abs=1e-12)


def test_large_sparse_ids_score_as_small_ones():
    """Ids far above any component number (here 2^31 + 7) go through ranks, not per-id arrays as
    long as the largest id; with no id at or below the component count both give one score."""
    data = np.load(FIXTURES / "random_blobs.npz")
    truth, pred = data["nuc_truth"].astype(np.int64), data["nuc_prediction"] > 0
    n_pred = connected_components(pred)[1]
    small = np.where(truth > 0, truth + n_pred, 0)  # ids above every component number
    large = np.where(truth > 0, truth + 2**31, 0)
    for mode in (OFFICIAL, CORRECTED):
        assert score_instances(large, pred, (8, 8, 8), mode) == score_instances(
            small, pred, (8, 8, 8), mode
        )
    # and then the official Hausdorff equals the corrected one: the quirk needs an id <= n_pred
    both = score_instance_modes(small, pred, (8, 8, 8))
    assert both[OFFICIAL].hausdorff_norm_sum == pytest.approx(both[CORRECTED].hausdorff_norm_sum)


@pytest.mark.parametrize("seed", range(4))
def test_the_flow_finds_an_optimal_matching_among_ties(seed):
    """IoUs drawn from a few exact values make ties common (equal sums: 1/8 + 1/4 = 3/8); the
    matching chosen is one of the best total worth. With such exact IoUs every optimal matching
    has the same number of pairs (the worth's +1 per pair prefers more pairs at equal IoU); a tie
    between different numbers of pairs needs IoUs that add up to within about 10^-6 (the
    ``tie_*_pair*`` fixtures)."""
    rng = np.random.default_rng(seed)
    ties = 0
    for _ in range(50):
        n_truth, n_pred = rng.integers(1, 5), rng.integers(1, 6)
        dense = rng.choice([0, 0, 1 / 8, 1 / 4, 3 / 8, 1 / 3, 1 / 2], size=(n_truth, n_pred))
        rows, cols = np.nonzero(dense)  # truth-major, as the official pairs are ordered
        if rows.size == 0:
            continue
        worths = {(t + 1, p + 1): worth(dense[t, p]) for t, p in zip(rows, cols, strict=True)}
        sizes: dict[int, set[int]] = {}
        count: dict[int, int] = {}
        for choice in itertools.product([None, *range(1, n_pred + 1)], repeat=int(n_truth)):
            pairs = [(t, p) for t, p in enumerate(choice, 1) if p is not None]
            used = [p for _, p in pairs]
            if len(used) == len(set(used)) and all(pair in worths for pair in pairs):
                total = sum(worths[pair] for pair in pairs)
                sizes.setdefault(total, set()).add(len(pairs))
                count[total] = count.get(total, 0) + 1
        best = max(sizes)
        ties += count[best] > 1
        assert len(sizes[best]) == 1
        chosen = challenge._match_pairs(
            rows + 1, cols + 1, dense[rows, cols], int(n_truth), int(n_pred)
        )
        assert len(set(chosen.values())) == len(chosen)  # one-to-one
        assert sum(worths[t, p] for p, t in chosen.items()) == best
        assert len(chosen) in sizes[best]
    assert ties >= 5  # the draws do tie (49 of 194 cases over the 4 seeds)
