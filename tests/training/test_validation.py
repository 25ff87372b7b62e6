"""Validation Dice during training with group labels (issue 33): a group is scored as the union
of its members' thresholded predictions, beside the classes, and joins the mean that selects
``best.pt``; checked against counts worked out by hand on a few voxels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cellseg.classes import CLASS_INDEX, CLASSES, GROUP_INDEX, GROUP_NAMES, NUM_CLASSES
from cellseg.losses import BalancedSoftmaxPartialTverskyLoss
from cellseg.training.validation import dice_columns, validate

NAN = math.nan
LOW = 0.1


class Patches:
    """Two fixed 1 x 4 patches (what ``validate`` reads of a ``FixedPatches``)."""

    def __init__(self, targets: torch.Tensor) -> None:
        self.targets = targets
        self.groups = targets.shape[1] > NUM_CLASSES

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, item: int) -> dict:
        return {"image": torch.zeros(1, 1, 4), "target": self.targets[item]}


class Fixed(torch.nn.Module):
    """A network whose output is the logits of fixed probabilities, whatever the image."""

    def __init__(self, probabilities: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.logit(probabilities)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.logits[: image.shape[0]]


def hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    """``(probabilities (2, 14, 1, 4), target (2, 19, 1, 4))``: ``pm`` annotated in patch 0 and
    the ``mito`` group in both; every other label unannotated.

    * ``pm``, patch 0: truth 1 1 0 0, predicted 1 0 1 0: TP 1, FP 1, FN 1, Dice 0.5.
    * ``mito``, patch 0: truth 1 1 0 ?, union of members 1 1 0 1 (voxel 2 has ``mito_mem`` and
      ``mito_lum`` at 0.4 each: their union probability is 0.64, yet neither is predicted, so the
      union of the predictions is 0, as evaluation scores it): TP 2.
    * ``mito``, patch 1: truth 0 0 1 1, union 0 0 0 1: TP 1, FN 1.
    * pooled ``mito``: TP 3, FP 0, FN 1: Dice 6/7.
    """
    p = torch.full((2, NUM_CLASSES, 1, 4), LOW, dtype=torch.float64)
    p[0, CLASS_INDEX["pm"], 0] = torch.tensor([0.9, LOW, 0.9, LOW])
    p[0, CLASS_INDEX["mito_mem"], 0] = torch.tensor([0.9, LOW, 0.4, 0.9])
    p[0, CLASS_INDEX["mito_lum"], 0] = torch.tensor([LOW, 0.6, 0.4, LOW])
    p[1, CLASS_INDEX["mito_ribo"], 0] = torch.tensor([LOW, LOW, LOW, 0.8])
    target = torch.full((2, NUM_CLASSES + len(GROUP_NAMES), 1, 4), NAN)
    target[0, CLASS_INDEX["pm"], 0] = torch.tensor([1.0, 1.0, 0.0, 0.0])
    mito = NUM_CLASSES + GROUP_INDEX["mito"]
    target[0, mito, 0] = torch.tensor([1.0, 1.0, 0.0, NAN])
    target[1, mito, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    return p.float(), target


def run_validation(
    probabilities: torch.Tensor, target: torch.Tensor, trained: tuple[str, ...] = CLASSES
) -> dict:
    loss = BalancedSoftmaxPartialTverskyLoss([0.1] * NUM_CLASSES, min_annotated_voxels=1)
    return validate(
        Fixed(probabilities), loss, Patches(target), torch.device("cpu"), (0, 0), 2, "none",
        trained=trained,
    )  # fmt: skip


def test_group_dice_joins_the_class_dice_and_the_mean() -> None:
    probabilities, target = hand_case()
    result = run_validation(probabilities, target)
    dice = result["dice"]
    assert dice.shape == (NUM_CLASSES + len(GROUP_NAMES),)
    assert dice[CLASS_INDEX["pm"]] == pytest.approx(0.5)
    assert dice[NUM_CLASSES + GROUP_INDEX["mito"]] == pytest.approx(6 / 7)
    others = [i for i in range(len(dice)) if i not in (1, NUM_CLASSES + GROUP_INDEX["mito"])]
    assert np.isnan(dice[others]).all(), "labels no patch annotates are left out"
    # the score that selects best.pt: the mean over the present classes and groups
    assert result["mean_dice"] == pytest.approx((0.5 + 6 / 7) / 2)
    columns = dice_columns(dice)
    assert list(columns)[-len(GROUP_NAMES) :] == [f"val_dice_{g}" for g in GROUP_NAMES]
    assert columns["val_dice_mito"] == pytest.approx(6 / 7)


def test_without_group_labels_validation_scores_the_14_classes_alone() -> None:
    probabilities, target = hand_case()
    result = run_validation(probabilities, target[:, :NUM_CLASSES])
    assert result["dice"].shape == (NUM_CLASSES,)
    assert result["mean_dice"] == pytest.approx(0.5)
    assert list(dice_columns(result["dice"])) == [f"val_dice_{c}" for c in CLASSES]


def test_untrained_classes_and_groups_are_not_scored() -> None:
    """A run whose training crops annotated pm alone (issue 33): pm's Dice as before, the mito
    group (no trained member) NaN and out of the mean that selects best.pt; with one member
    trained the group is scored again."""
    probabilities, target = hand_case()
    result = run_validation(probabilities, target, trained=("pm",))
    assert result["dice"][CLASS_INDEX["pm"]] == pytest.approx(0.5)
    assert np.isnan(result["dice"][NUM_CLASSES + GROUP_INDEX["mito"]])
    assert result["mean_dice"] == pytest.approx(0.5)
    some = run_validation(probabilities, target, trained=("pm", "mito_ribo"))
    assert some["mean_dice"] == pytest.approx((0.5 + 6 / 7) / 2)
