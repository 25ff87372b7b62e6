"""Every class and group has its own colour, told apart from the others and from grey EM."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest

from cellseg.classes import CLASSES, GROUP_NAMES
from cellseg.palette import COLOURS, MIN_DISTANCE, UNANNOTATED, colour, rgb, rgb255


def test_one_colour_per_class_and_group_in_channel_order():
    assert tuple(COLOURS)[: len(CLASSES)] == CLASSES
    assert tuple(COLOURS)[len(CLASSES) :] == GROUP_NAMES
    assert len(set(COLOURS.values())) == len(COLOURS)


def test_any_two_colours_are_far_apart_and_none_is_grey():
    values = {name: np.array(rgb255(name), dtype=float) for name in COLOURS}
    closest = min(
        (float(np.linalg.norm(values[a] - values[b])), a, b)
        for a, b in itertools.combinations(COLOURS, 2)
    )
    assert closest[0] >= MIN_DISTANCE, closest
    for name, value in values.items():
        # a grey, white or black mask would vanish over EM (viewer) or read as unannotated
        assert value.max() - value.min() >= 60, name
    assert len({UNANNOTATED[1:3], UNANNOTATED[3:5], UNANNOTATED[5:7]}) == 1  # grey itself


def test_conversions_by_hand():
    assert colour("nuc") == "#EE7733"
    assert rgb255("nuc") == (0xEE, 0x77, 0x33)
    assert rgb("nuc") == pytest.approx((238 / 255, 119 / 255, 51 / 255))
    with pytest.raises(KeyError, match="'cytosol' has no colour"):
        colour("cytosol")


def test_the_documented_table_is_the_palette():
    """docs/evaluation.md's palette table names every colour as the code has it."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()
    table = dict(re.findall(r"^\| `([a-z_]+)` \| `(#[0-9A-F]{6})`", text, flags=re.MULTILINE))
    assert table == COLOURS
