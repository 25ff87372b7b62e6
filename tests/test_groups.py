"""Tests of cellseg.groups (issue 33 item 2): group targets, the union term of the loss against a
naive float64 voxel loop, and the union scoring of a group against hand counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellseg.classes import (
    CLASS_INDEX,
    CLASSES,
    GROUP_INDEX,
    GROUP_NAMES,
    GROUPS,
    NUM_CLASSES,
    NUM_GROUPS,
)
from cellseg.groups import (
    apply_group_negatives,
    group_counts,
    group_partial_tversky,
    group_prediction,
    infer_group_negatives,
    split_groups,
)
from cellseg.losses import BalancedSoftmaxPartialTverskyLoss
from naive_tversky import naive_loss

NAN = float("nan")
PRIOR = [0.4, 0.05, 0.03, 0.1, 1e-4, 0.002, 0.01, 0.001, 0.005, 1e-5, 0.0, 0.02, 0.08, 0.9]


def test_group_table_is_the_challenge_groups_over_the_14() -> None:
    assert GROUP_NAMES == ("mito", "golgi", "ves", "endo", "er")
    assert GROUPS["mito"] == ("mito_mem", "mito_lum", "mito_ribo")
    members = [m for ms in GROUPS.values() for m in ms]
    assert len(members) == len(set(members)) and set(members) <= set(CLASSES)
    assert not set(GROUP_NAMES) & set(CLASSES)
    assert NUM_GROUPS == 5


def group_case(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, 14, ...)`` and a target ``(B, 19, ...)`` as a group-labelled crop gives it:
    mito and er annotated as groups (members negative where the group is 0, unknown where 1),
    ves with too few voxels, golgi and endo not annotated, some classes fine."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((shape[0], NUM_CLASSES, *shape[1:]), generator=g, dtype=torch.float64) * 2
    target = torch.full((shape[0], NUM_CLASSES + NUM_GROUPS, *shape[1:]), NAN, dtype=torch.float64)
    target[:, CLASS_INDEX["pm"]] = (
        torch.rand(shape, generator=g, dtype=torch.float64) < 0.2
    ).double()
    for name in ("mito", "er"):
        label = (torch.rand(shape, generator=g, dtype=torch.float64) < 0.4).double()
        label[torch.rand(shape, generator=g) < 0.2] = NAN
        target[:, NUM_CLASSES + GROUP_INDEX[name]] = label
        for member in GROUPS[name]:
            target[:, CLASS_INDEX[member]] = torch.where(label == 0, 0.0, NAN)
    target[0, NUM_CLASSES + GROUP_INDEX["ves"]].view(-1)[:3] = 1.0
    return logits, target


@pytest.mark.parametrize("impl", ["function", "autograd"])
@pytest.mark.parametrize(
    ("shape", "tau", "alpha", "beta"),
    [((2, 5, 6), 1.0, 0.6, 0.4), ((2, 3, 4, 5), 0.5, 0.3, 0.9)],
)
def test_loss_with_groups_matches_naive_loop(
    impl: str, shape: tuple[int, ...], tau: float, alpha: float, beta: float
) -> None:
    logits, target = group_case(shape, seed=1)
    loss = BalancedSoftmaxPartialTverskyLoss(
        PRIOR, tau=tau, alpha=alpha, beta=beta, implementation=impl, chunk_size=37
    )
    got = loss(logits, target).item()
    want = naive_loss(logits, target, PRIOR, tau, alpha, beta, 1e-6, 10)
    # the adjustment a_c is float32 in the loss (as in tests/test_losses.py's loop): 1e-7, not 1e-15
    assert got == pytest.approx(want, abs=1e-7, rel=0)
    # 14 class terms and 5 group terms, mito and er active, ves below min_annotated_voxels
    assert loss.last_tversky.shape == (NUM_CLASSES + NUM_GROUPS,)
    active = (loss.last_annotated >= 10).tolist()
    assert active[NUM_CLASSES:] == [True, False, False, False, True]


def test_group_gradients_agree_between_implementations() -> None:
    logits, target = group_case((2, 4, 5), seed=2)
    grads = []
    for impl in ("function", "autograd"):
        z = logits.clone().requires_grad_(True)
        BalancedSoftmaxPartialTverskyLoss(PRIOR, implementation=impl)(z, target).backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    logits, target = group_case((1, 3, 3), seed=2)
    z = logits.clone().requires_grad_(True)
    torch.autograd.gradcheck(
        lambda x: BalancedSoftmaxPartialTverskyLoss(PRIOR, implementation="autograd")(x, target),
        (z,),
    )


def test_group_terms_reach_the_members_only_where_annotated() -> None:
    logits, target = group_case((1, 4, 4), seed=3)
    target[:, :NUM_CLASSES] = NAN  # the group terms alone
    z = logits.clone().requires_grad_(True)
    BalancedSoftmaxPartialTverskyLoss(PRIOR, min_annotated_voxels=1)(z, target).backward()
    mito = target[0, NUM_CLASSES + GROUP_INDEX["mito"]]
    for member in GROUPS["mito"]:
        grad = z.grad[0, CLASS_INDEX[member]]
        assert (grad[torch.isnan(mito)] == 0).all() and (grad[~torch.isnan(mito)] != 0).all()
    assert (z.grad[0, CLASS_INDEX["pm"]] == 0).all()


@pytest.mark.parametrize("impl", ["function", "autograd"])
def test_no_group_annotated_is_bit_identical_to_14_channels(impl: str) -> None:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, NUM_CLASSES, 6, 7, generator=g)
    target = (torch.rand(2, NUM_CLASSES, 6, 7, generator=g) < 0.3).float()
    target[torch.rand(target.shape, generator=g) < 0.3] = NAN
    with_groups = torch.cat((target, torch.full((2, NUM_GROUPS, 6, 7), NAN)), dim=1)
    out = []
    for t in (target, with_groups):
        z = logits.clone().requires_grad_(True)
        value = BalancedSoftmaxPartialTverskyLoss(PRIOR, implementation=impl)(z, t)
        value.backward()
        out.append((value.detach(), z.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_reduction_none_and_bad_channels() -> None:
    logits, target = group_case((1, 4, 4), seed=5)
    per_term = BalancedSoftmaxPartialTverskyLoss(PRIOR, reduction="none")(logits, target)
    assert per_term.shape == (NUM_CLASSES + NUM_GROUPS,)
    with pytest.raises(ValueError, match="differ"):
        BalancedSoftmaxPartialTverskyLoss(PRIOR)(logits, target[:, :16])
    with pytest.raises(ValueError, match="groups"):
        split_groups(torch.zeros(1, NUM_CLASSES + 2, 3, 3))


def test_group_partial_tversky_skips_unannotated_groups() -> None:
    logits = torch.zeros(1, NUM_CLASSES, 2, 2)
    target = torch.full((1, NUM_GROUPS, 2, 2), NAN)
    target[0, GROUP_INDEX["ves"]] = torch.tensor([[1.0, 0.0], [NAN, 1.0]])
    ti, n = group_partial_tversky(logits, target, torch.zeros(NUM_CLASSES), 0.5, 0.5, 0.0)
    assert n.tolist() == [0, 0, 3, 0, 0]
    # p = 1/2 per member, 2 members: p_union = 3/4; TP = 1.5, FP = 0.75, FN = 0.5
    assert ti[GROUP_INDEX["ves"]].item() == pytest.approx(1.5 / (1.5 + 0.375 + 0.25))
    assert ti[GROUP_INDEX["mito"]].item() == 1.0


def test_apply_group_negatives_never_invents_a_positive() -> None:
    target = np.full((NUM_CLASSES, 4), NAN, dtype=np.float32)
    target[CLASS_INDEX["mito_ribo"]] = [1.0, NAN, NAN, 0.0]  # a finely annotated member wins
    label = np.array([0.0, 1.0, NAN, 0.0], dtype=np.float32)
    apply_group_negatives(target, "mito", label)
    np.testing.assert_array_equal(target[CLASS_INDEX["mito_mem"]], [0.0, NAN, NAN, 0.0])
    np.testing.assert_array_equal(target[CLASS_INDEX["mito_lum"]], [0.0, NAN, NAN, 0.0])
    np.testing.assert_array_equal(target[CLASS_INDEX["mito_ribo"]], [1.0, NAN, NAN, 0.0])
    assert np.isnan(target[CLASS_INDEX["pm"]]).all()


def test_group_counts_by_hand() -> None:
    binary = np.zeros((NUM_CLASSES, 6), dtype=bool)
    binary[CLASS_INDEX["er_mem"]] = [1, 0, 0, 1, 0, 1]
    binary[CLASS_INDEX["er_lum"]] = [0, 1, 0, 1, 0, 0]
    binary[CLASS_INDEX["pm"]] = 1  # not a member: ignored
    label = np.array([1, 1, 1, 0, 0, NAN])
    np.testing.assert_array_equal(group_prediction(binary, "er"), [1, 1, 0, 1, 0, 1])
    # voxel 5 unannotated; TP voxels 0,1; FN voxel 2; FP voxel 3; TN voxel 4
    np.testing.assert_array_equal(group_counts(binary, "er", label), [2, 1, 1, 1])


def test_infer_group_negatives_by_hand() -> None:
    mito, er = NUM_CLASSES + GROUP_INDEX["mito"], NUM_CLASSES + GROUP_INDEX["er"]
    target = np.full((NUM_CLASSES + NUM_GROUPS, 4), NAN, dtype=np.float32)
    target[mito, 0] = 1.0  # a mitochondrion
    target[CLASS_INDEX["pm"], 1] = 1.0  # a membrane (pm is in no group)
    target[CLASS_INDEX["mito_mem"], 2] = 1.0  # a fine mito member
    expected = target.copy()
    non_mito = [c for c in range(NUM_CLASSES) if CLASSES[c] not in GROUPS["mito"]]
    expected[non_mito, 0] = 0.0  # outside the group: exclusive classes
    expected[[g for g in range(NUM_CLASSES, NUM_CLASSES + NUM_GROUPS) if g != mito], 0] = 0.0
    expected[NUM_CLASSES:, 1] = 0.0  # pm: no group holds it
    expected[[g for g in range(NUM_CLASSES, NUM_CLASSES + NUM_GROUPS) if g != mito], 2] = 0.0
    compact = np.nan_to_num(target, nan=255).astype(np.uint8)
    np.testing.assert_array_equal(infer_group_negatives(target), expected)
    # members of a positive group stay unknown, the member's own group is not inferred
    assert np.isnan(target[CLASS_INDEX["mito_lum"], 0]) and np.isnan(target[mito, 2])
    assert np.isnan(target[:, 3]).all() and target[er, 0] == 0
    np.testing.assert_array_equal(
        infer_group_negatives(compact), np.nan_to_num(expected, nan=255).astype(np.uint8)
    )
