"""Group maps in a prediction store: each whole organelle (``mito``, ``golgi``, ``ves``, ``endo``,
``er``; :data:`cellseg.classes.GROUPS`) as a probability array and a mask of its own, beside the
14 classes (issue 33). Which groups (``predict.groups``, :func:`store_groups`): ``auto`` (the
default) those whose labels the run's training crops held (``best.pt``'s ``trained_groups``: a
run without group labels, the demo's, writes the store of before), ``all`` every group, ``none``
none. Each costs two arrays: 10 more beside the 28 made the demo's store 37 % bigger.

One answer per voxel with training and evaluation:

* a group's **probability** is the probability of the union of its members,
  ``1 - prod_m (1 - p_m)``, from the members' probabilities (as blended, adjusted and before
  they are stored) by :func:`cellseg.groups.union_probability`, the function the loss's group
  term calls; it is stored in the store's dtype like a class's;
* a group's **mask** is the union of its members' masks as stored (each member's stored
  probability above its threshold, :func:`cellseg.prediction_store.mask_of`): how evaluation
  scores a group label (:func:`cellseg.groups.group_prediction`, the union of the members'
  thresholded predictions), at every pyramid level. It is *not* the group's probability above a
  threshold: two members at 0.4 each make a union probability of 0.64 but no mask, as evaluation
  predicts no member there.

The arrays are ``probabilities/{group}`` and ``masks/{group}``, named like the classes' (no
group shares a class's name), with the same chunks, pyramid, ``multiscales`` and label
attributes, written block by block through the same chunk writer, markers and lost-chunk
checks; a store records the groups it holds in its settings (``groups``), which a store without
them does not carry (so its settings, and its resumption, are as before).

A model's untrained classes (:mod:`cellseg.trained_classes`) have no arrays and probability 0
(:meth:`cellseg.inference.Predictor.probabilities`): a group is the union of its trained
members, and a group with none is left out, as evaluation and the figures leave it out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import zarr

from cellseg.classes import CLASSES, GROUP_NAMES, GROUPS
from cellseg.groups import member_indexes, union_probability
from cellseg.prediction_store import quantize
from cellseg.trained_classes import trained_names

__all__ = [
    "GROUPS_KEY",
    "GROUP_CHOICES",
    "MemberMasks",
    "group_probability",
    "pyramid_mask",
    "store_groups",
]

GROUP_CHOICES: tuple[str, ...] = ("auto", "all", "none")
"""The values of ``predict.groups`` (``--groups``)."""

GROUPS_KEY = "groups"
"""The key of a store's settings that lists its groups (absent: none)."""

Box = tuple[slice, slice, slice]


def store_groups(settings: Any, predictor: Any) -> tuple[str, ...]:
    """The groups a store holds, in :data:`cellseg.classes.GROUP_NAMES` order: with
    ``settings.groups`` ``auto`` those whose labels ``predictor``'s training crops held, ``all``
    every group, ``none`` none; in each case only a group with a trained member.

    Args:
        settings: :class:`cellseg.prediction_geometry.PredictionSettings`.
        predictor: :class:`cellseg.inference.Predictor` (its ``trained_groups`` and
            ``trained_classes``).
    """
    chosen = {"auto": predictor.trained_groups, "all": GROUP_NAMES, "none": ()}[settings.groups]
    return tuple(trained_names(predictor.trained_classes, chosen))


def group_probability(probabilities: torch.Tensor, group: str, dtype: str) -> np.ndarray:
    """A group's probability as stored: ``1 - prod_m (1 - p_m)`` over its members
    (:func:`cellseg.groups.union_probability`), quantised to ``dtype`` like a class's.

    Args:
        probabilities: ``(14, ...)`` float32 class probabilities of a block (CPU).
        group: a name of :data:`cellseg.classes.GROUP_NAMES`.
        dtype: the store's probability dtype.

    Returns:
        ``(...)`` in ``dtype``.
    """
    members = probabilities[member_indexes(group)]
    return quantize(union_probability(torch.log1p(-members), dim=0), dtype)


class MemberMasks:
    """The union of each group's member masks, gathered class by class as a block is written.

    :meth:`add` takes each class's mask as it is written; once a group's last member is in, the
    group is ready (its members are consecutive classes, so at most one group's union is held:
    one block-sized ``uint8`` array).

    Args:
        groups: the groups to gather (:func:`store_groups`).
        classes: the classes the store holds; a member outside them has no mask (untrained).
    """

    def __init__(self, groups: Sequence[str], classes: Sequence[str]) -> None:
        held = {CLASSES.index(name) for name in classes}
        self.waiting = {g: set(member_indexes(g)) & held for g in groups}
        self.unions: dict[str, np.ndarray] = {}

    def add(self, c: int, mask: np.ndarray) -> Iterator[str]:
        """Class ``c``'s mask (``uint8`` 0/1); yields each group it completes, whose union
        :meth:`pop` then hands over."""
        for group, waiting in self.waiting.items():
            if c not in waiting:
                continue
            held = self.unions.get(group)
            self.unions[group] = (
                mask.copy() if held is None else np.bitwise_or(held, mask, out=held)
            )
            waiting.discard(c)
            if not waiting:
                yield group

    def pop(self, group: str) -> np.ndarray:
        """The union of ``group``'s member masks (``uint8`` 0/1), forgotten here."""
        return self.unions.pop(group)


def pyramid_mask(
    root: zarr.Group, group: str, classes: Sequence[str]
) -> Callable[[int, Box, np.ndarray], np.ndarray]:
    """A group's mask at a level ``k`` > 0 of the pyramid: the union of its members' masks of
    that level (written before the groups' levels) over the box; the group's own stored
    probability is not used. ``classes``: those the store holds (an untrained member has no
    mask).

    Returns:
        ``mask(k, box, stored) -> uint8 0/1`` shaped like ``stored``, for the pyramid writer.
    """
    members = [name for name in GROUPS[group] if name in classes]

    def mask(k: int, box: Box, stored: np.ndarray) -> np.ndarray:
        union = np.zeros(stored.shape, dtype=np.uint8)
        for name in members:
            np.bitwise_or(union, np.asarray(root[f"masks/{name}/s{k}"][box]), out=union)
        return union

    return mask
