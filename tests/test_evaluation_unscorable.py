"""A test crop with nothing to score is skipped with one line; the other crops keep their metrics
(issue 22 §4: an all-unknown crop used to crash ``evaluate_crops`` with an IndexError and lose
every crop's metrics). Fed as a user would: a store, a datasplit and ``cellseg evaluate``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr

from cellseg.cli import main
from cellseg.data.datasplit import write_datasplit
from cellseg.data.store import EM_GROUP, LABELS_ROOT, Crop
from checkpoint_builders import demo_unet_checkpoint
from store_builders import write_multiscale


def write_level(root: zarr.Group, group: str, data: np.ndarray) -> None:
    """One 8 nm level whose first voxel's lower corner is at 8 nm."""
    write_multiscale(root, group, [data], [(8.0,) * 3], [(12.0,) * 3], chunks=data.shape)


def test_an_all_unknown_test_crop_is_skipped_and_the_others_are_scored(tmp_path: Path, capsys):
    store = tmp_path / "toy" / "toy.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    write_multiscale(
        root, EM_GROUP, [np.full((4, 8, 8), 120, np.uint8)], [(8.0,) * 3], [(4.0,) * 3]
    )
    good = np.zeros((2, 4, 6), dtype=np.uint8)
    good[..., :3] = 1
    write_level(root, f"{LABELS_ROOT}/crop_a/ecs", good)
    write_level(root, f"{LABELS_ROOT}/crop_b/ecs", np.full((2, 4, 6), 255, np.uint8))  # unknown
    write_level(root, f"{LABELS_ROOT}/crop_b/pm", np.full((2, 4, 6), 255, np.uint8))
    # crop_c: pm all unknown, ecs annotated: ecs is scored, pm said not to be
    write_level(root, f"{LABELS_ROOT}/crop_c/ecs", good)
    write_level(root, f"{LABELS_ROOT}/crop_c/pm", np.full((2, 4, 6), 255, np.uint8))
    crops = [
        Crop(store, EM_GROUP, store, f"{LABELS_ROOT}/crop_a", ("ecs",), "test"),
        Crop(store, EM_GROUP, store, f"{LABELS_ROOT}/crop_b", ("ecs", "pm"), "test"),
        Crop(store, EM_GROUP, store, f"{LABELS_ROOT}/crop_c", ("ecs", "pm"), "test"),
    ]
    datasplit = tmp_path / "datasplit.csv"
    write_datasplit(crops, datasplit)
    checkpoint = tmp_path / "best.pt"
    torch.save(demo_unet_checkpoint(["other/crop_1"], ["other/crop_2"]), checkpoint)
    out = tmp_path / "metrics.csv"
    arguments = ["--checkpoint", str(checkpoint), "--datasplit", str(datasplit), "--out", str(out)]
    code = main(["evaluate", *arguments, "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    (skipped,) = [line for line in err.splitlines() if "skipped" in line]
    assert skipped == (
        "[unet_2d] skipped toy/crop_b: none of its classes (ecs, pm) has an annotated voxel (all "
        "unknown), so there is nothing to score; fix its labels or remove it from the datasplit"
    )
    (crop_c,) = [line for line in err.splitlines() if "toy/crop_c:" in line]
    assert crop_c.endswith("; not scored, no annotated voxel: pm")
    table = pd.read_csv(out)
    assert sorted(zip(table.crop, table["class"], strict=True)) == [
        ("toy/crop_a", "ecs"),
        ("toy/crop_c", "ecs"),
    ]
    assert (table.tp + table.fp + table.fn + table.tn == 48).all()
