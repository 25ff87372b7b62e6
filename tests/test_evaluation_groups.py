"""Group labels in evaluation and the summary (issue 33 item 2): a group is scored as the union
of its members' thresholded predictions against its label (hand-computed), beside the 14
classes; summary.csv gains ``dice_<group>`` only when a metrics table has group rows, and the
statistics over the 14 classes do not move."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellseg.classes import CLASSES
from cellseg.data.store import EM_GROUP, LABELS_ROOT, Crop
from cellseg.evaluation import METRIC_COLUMNS, EvaluationSettings, evaluate_crops
from cellseg.groups import class_rows, group_columns
from cellseg.reporting.markdown import summary_markdown
from cellseg.reporting.summary import summarize
from cellseg.reporting.summary_inputs import metric_counts
from tiny_nets import MemberNet, member_em_store, tiny_predictor, write_level


@pytest.fixture
def group_crop(tmp_path: Path) -> list[Crop]:
    """EM at 8 nm, x index 0-1 at 255, 2-3 at 170, 4-7 at 0; one crop from 8 nm, shape
    (2, 4, 6), label x = k on EM x index 1 + k: ``pm`` = k >= 3 (fine), ``mito`` (group)
    = k in {0, 1, 3}, voxel (0, 0, 5) unknown."""
    path, root = member_em_store(tmp_path)
    pm = np.zeros((2, 4, 6), dtype=np.uint8)
    pm[..., 3:] = 1
    mito = np.zeros((2, 4, 6), dtype=np.uint8)
    mito[..., [0, 1, 3]] = 1
    mito[0, 0, 5] = 255
    write_level(root, f"{LABELS_ROOT}/crop_a/pm", pm, 8.0)
    write_level(root, f"{LABELS_ROOT}/crop_a/mito", mito, 8.0)
    return [Crop(path, EM_GROUP, path, f"{LABELS_ROOT}/crop_a", ("pm", "mito"), "test")]


def test_a_group_is_scored_as_the_union_of_its_members(group_crop):
    predictor = tiny_predictor(MemberNet(), "3d", (2, 4, 4), model="fake")
    settings = EvaluationSettings(slab_voxels=1, adjustment_modes=("train",))
    table = evaluate_crops(predictor, group_crop, settings)
    assert list(table.columns) == list(METRIC_COLUMNS)
    got = {r["class"]: (r.tp, r.fp, r.fn, r.tn) for _, r in table.iterrows()}
    # per (z, y) row: union predicted k = 0, 1 (mito_mem), 2 (mito_lum); true k = 0, 1, 3:
    # TP 2, FP 1 (k 2), FN 1 (k 3), TN 2 (k 4, 5); 8 rows, less the unknown voxel (a TN)
    assert got == {"pm": (24, 0, 0, 24), "mito": (16, 8, 8, 15)}
    mito = table[table["class"] == "mito"].iloc[0]
    assert mito.dice == pytest.approx(32 / 48)
    # the summary's group column: that crop's counts pooled
    assert group_columns(table) == {"dice_mito": pytest.approx(32 / 48)}


def metrics(groups: bool) -> pd.DataFrame:
    rows = []
    for i in range(4):
        for c, name in enumerate(("ecs", "pm")):
            rows.append(
                {"model": "unet_3d", "dim": "3d", "adjustment": "train", "crop": f"d/crop{i}",
                 "class": name, "tp": 10 + i + c, "fp": 3, "fn": 4 - c, "tn": 100,
                 "inference_seconds": 1.0}
            )  # fmt: skip
        if groups and i < 2:
            rows.append(
                {"model": "unet_3d", "dim": "3d", "adjustment": "train", "crop": f"d/crop{i}",
                 "class": "mito", "tp": 6, "fp": 2 * i, "fn": 2, "tn": 100,
                 "inference_seconds": 1.0}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_summary_gains_group_columns_only_with_group_rows(tmp_path):
    paths = {}
    for groups in (False, True):
        path = tmp_path / f"metrics_{groups}.csv"
        metrics(groups).to_csv(path, index=False)
        paths[groups] = path
    plain = summarize({"unet_3d": paths[False]}, expected=["unet_3d"]).table
    with_groups = summarize({"unet_3d": paths[True]}, expected=["unet_3d"]).table
    assert not [c for c in plain if c.startswith("dice_") and c[5:] not in CLASSES]
    extra = [c for c in with_groups if c not in plain]
    assert extra == ["dice_mito"]
    # crops 0 and 1 pooled: TP 12, FP 2, FN 4 -> 24 / 30
    assert with_groups["dice_mito"].iloc[0] == pytest.approx(24 / 30)
    # every other column, the headline mean over the 14 classes included, is unchanged
    pd.testing.assert_frame_equal(with_groups[list(plain.columns)], plain)
    # the 14-class counts every statistic reads ignore the group rows
    crops, counts = metric_counts(metrics(True))
    plain_crops, plain_counts = metric_counts(metrics(False))
    assert crops == plain_crops and np.array_equal(counts, plain_counts)
    assert len(class_rows(metrics(True))) == 8


def test_summary_md_shows_group_scores_only_with_group_rows(tmp_path):
    texts = {}
    for groups in (False, True):
        path = tmp_path / f"metrics_{groups}.csv"
        metrics(groups).to_csv(path, index=False)
        texts[groups] = summary_markdown(summarize({"unet_3d": path}, expected=["unet_3d"]))
    assert "Whole organelles" not in texts[False]
    section = texts[True].split("## Whole organelles (group labels)")[1].split("\n## ")[0]
    assert "| model | `mito` |" in section
    assert "| unet_3d | 0.800 |" in section  # 24 / 30, as the summary column
