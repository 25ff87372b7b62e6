"""Evaluation: sliding windows, hand-made crops with known predictions, checkpoints, predictions."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from torch import nn

from cellseg.classes import CLASS_INDEX, CLASSES, NUM_CLASSES
from cellseg.cli import main
from cellseg.data.datasplit import write_datasplit
from cellseg.data.store import EM_GROUP, LABELS_ROOT, Crop, read_crop_geometry
from cellseg.errors import CellsegError
from cellseg.evaluation import (
    INSTANCE_COLUMNS,
    METRIC_COLUMNS,
    EvaluationSettings,
    add_parser,
    evaluate_checkpoint,
    evaluate_crops,
)
from cellseg.inference import PredictionGrid, Predictor, predict_crop, sliding_window_logits
from checkpoint_builders import demo_unet_checkpoint
from store_builders import INSTANCE, annotation, write_multiscale
from tiny_nets import tiny_predictor

ECS, NUC = CLASS_INDEX["ecs"], CLASS_INDEX["nuc"]


# ------------------------------------------------------------------------------ sliding windows


def pointwise_net(spatial_dims: int) -> nn.Module:
    """A fully convolutional network with 1-voxel receptive field: windows cannot change it."""
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    torch.manual_seed(0)
    return nn.Sequential(conv(1, 8, 1), nn.Tanh(), conv(8, NUM_CLASSES, 1)).eval()


@pytest.mark.parametrize("blend_mode", ["gaussian", "constant"])
@pytest.mark.parametrize(
    ("shape", "roi"), [((1, 1, 20, 36, 44), (8, 16, 16)), ((3, 1, 36, 44), (16, 16))]
)
def test_sliding_window_equals_whole_volume_forward(shape, roi, blend_mode):
    net = pointwise_net(len(roi))
    image = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    settings = EvaluationSettings(overlap=0.25, blend_mode=blend_mode, sw_batch_size=3)
    windows = sliding_window_logits(net, image, roi, settings)
    with torch.no_grad():
        whole = net(image)
    assert windows.shape == whole.shape
    torch.testing.assert_close(windows, whole, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ a hand-made store


def write_level(root: zarr.Group, group: str, data: np.ndarray, voxel: float, start: float):
    """A one-level multiscale group whose first voxel's lower corner is at ``start`` nm."""
    write_multiscale(
        root, group, [data], [(voxel,) * 3], [(start + voxel / 2,) * 3], chunks=data.shape
    )


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, list[Crop]]:
    """EM at 8 nm, bright (255) for EM x index < 4, dark (0) beyond; two crops starting at 8 nm:

    * ``crop_a`` at 8 nm, shape (2, 4, 6): ``ecs`` = label x < 4, ``nuc`` its complement, and
      voxel (0, 0, 0) unknown (255) in both;
    * ``crop_b`` at 4 nm, shape (4, 8, 12): ``ecs`` = label x < 7.
    """
    path = tmp_path / "toy" / "toy.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    em = np.zeros((4, 8, 8), dtype=np.uint8)
    em[..., :4] = 255
    write_level(root, EM_GROUP, em, 8.0, 0.0)
    ecs_a = np.zeros((2, 4, 6), dtype=np.uint8)
    ecs_a[..., :4] = 1
    nuc_a = 1 - ecs_a
    ecs_a[0, 0, 0] = nuc_a[0, 0, 0] = 255
    write_level(root, f"{LABELS_ROOT}/crop_a/ecs", ecs_a, 8.0, 8.0)
    write_level(root, f"{LABELS_ROOT}/crop_a/nuc", nuc_a, 8.0, 8.0)
    ecs_b = np.zeros((4, 8, 12), dtype=np.uint8)
    ecs_b[..., :7] = 1
    write_level(root, f"{LABELS_ROOT}/crop_b/ecs", ecs_b, 4.0, 8.0)
    crops = [
        Crop(path, EM_GROUP, path, f"{LABELS_ROOT}/crop_a", ("ecs", "nuc"), "test"),
        Crop(path, EM_GROUP, path, f"{LABELS_ROOT}/crop_b", ("ecs",), "test"),
    ]
    return path, crops


class ThresholdNet(nn.Module):
    """Known output: ``ecs`` where the EM is bright, ``nuc`` where dark, nothing else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], NUM_CLASSES, *x.shape[2:]), -10.0)
        logits[:, ECS] = 40 * (x[:, 0] - 0.5)
        logits[:, NUC] = -40 * (x[:, 0] - 0.5)
        return logits


def fake_predictor(dim: str, shift: torch.Tensor | None = None) -> Predictor:
    return tiny_predictor(
        ThresholdNet(), dim, (2, 4, 4) if dim == "3d" else (4, 4), model="fake", logit_shift=shift
    )


# Hand-computed. Prediction voxels are centred at 12 + 8k nm (k = 0..5 in x); EM x index = 1 + k,
# so ecs is predicted for k < 3 (x < 36 nm), nuc for k >= 3.
# crop_a (8 nm, label x = prediction k): per (z, y) row ecs predicted 0..2, true 0..3 -> TP 3, FN 1,
# TN 2; nuc predicted 3..5, true 4..5 -> TP 2, FP 1, TN 3; 8 rows, minus the unknown voxel at
# x = 0 (an ecs TP, a nuc TN).
# crop_b (4 nm): label x centres 10, 14, 18, ... nm -> nearest prediction k = x // 2, so ecs is
# predicted for label x 0..5, true 0..6 -> TP 6, FN 1, TN 5 per row; 4 x 8 = 32 rows.
EXPECTED = {
    ("toy/crop_a", "ecs"): (23, 0, 8, 16),
    ("toy/crop_a", "nuc"): (16, 8, 0, 23),
    ("toy/crop_b", "ecs"): (192, 0, 32, 160),
}


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_metrics_csv_matches_hand_computed_counts(store, tmp_path, dim):
    _, crops = store
    # slabs of one slice exercise the streaming path
    settings = EvaluationSettings(slab_voxels=1, adjustment_modes=("train",), label_chunk_voxels=50)
    table = evaluate_crops(fake_predictor(dim), crops, settings)
    path = tmp_path / "metrics.csv"
    table.to_csv(path, index=False)
    read = pd.read_csv(path)
    assert list(read.columns) == list(METRIC_COLUMNS)
    got = {(r.crop, r["class"]): (r.tp, r.fp, r.fn, r.tn) for _, r in read.iterrows()}
    assert got == EXPECTED
    row = read[(read.crop == "toy/crop_b")].iloc[0]
    assert row.dice == pytest.approx(2 * 192 / (2 * 192 + 32))
    assert row.voxel_size_x_nm == 4.0 and row.prediction_voxel_size_nm == 8.0
    assert not read["empty"].any()


def test_nuc_gets_challenge_style_instance_columns(store):
    """crop_a's nuc is stored as semantic 0/1: its ground truth is one connected instance (label
    x 4..5) and the prediction one component (x 3..5): matched, Hausdorff 1 voxel = 8 nm (the
    crop's cap, half its 16 nm z extent, is also 8 nm). Semantic classes get no instance values."""
    _, crops = store
    table = evaluate_crops(fake_predictor("3d"), crops, EvaluationSettings(slab_voxels=1))
    nuc = table[table["class"] == "nuc"].iloc[0]
    assert (nuc.instance_tp, nuc.instance_fp, nuc.instance_fn) == (1, 0, 0)
    assert nuc.hausdorff_count == 1 and nuc.hausdorff_mean_nm == pytest.approx(8.0)
    assert nuc.hausdorff_norm_sum == pytest.approx(1.01 ** (-8 / np.sqrt(3 * 8.0**2)))
    assert nuc.instance_status == "scored"
    others = table[table["class"] != "nuc"]
    assert others[list(INSTANCE_COLUMNS)].isna().all().all()


def test_instance_ids_are_matched_and_unannotated_voxels_ignored(store, tmp_path):
    """An instance-encoded nuc at 4 nm, shape (6, 8, 12): id 7 at y < 6, x >= 6 and id 300 at
    y >= 6, x >= 8; unknown (255) along z = 0, y = 7. The fake model predicts nuc at label
    x >= 6 (nearest prediction k = x // 2 >= 3): one component over all y, which overlaps id 7
    most (IoU 216/282 against 44/282) and matches it. Its farthest voxels (y = 7) are 2 voxels
    (8 nm) from id 7; id 300 is unmatched (the cap: half the 24 nm z extent)."""
    path, _ = store
    root = zarr.open_group(str(path), mode="a", zarr_format=2)
    nuc = np.zeros((6, 8, 12), dtype=np.uint16)
    nuc[:, :6, 6:] = 7
    nuc[:, 6:, 8:] = 300
    nuc[0, 7, :] = 255
    write_multiscale(
        root, f"{LABELS_ROOT}/crop_n/nuc", [nuc], [(4.0,) * 3], [(10.0,) * 3],
        attributes=annotation("nuc", INSTANCE), chunks=(3, 8, 12),
    )  # fmt: skip
    crop = Crop(path, EM_GROUP, path, f"{LABELS_ROOT}/crop_n", ("nuc",), "test")
    settings = EvaluationSettings(slab_voxels=1, label_chunk_voxels=96)  # chunks of one slice
    row = evaluate_crops(fake_predictor("2d"), [crop], settings).iloc[0]
    assert (row.instance_tp, row.instance_fp, row.instance_fn) == (1, 0, 1)
    assert row.hausdorff_count == 2 and row.hausdorff_mean_nm == pytest.approx((8 + 12) / 2)
    scale = np.sqrt(3 * 4.0**2)
    assert row.hausdorff_norm_sum == pytest.approx(1.01 ** (-8 / scale) + 1.01 ** (-12 / scale))


def test_adjustment_modes_train_applies_the_shift_and_none_ignores_it(store):
    _, crops = store
    shift = torch.zeros(NUM_CLASSES)
    shift[ECS] = -100.0  # the trained shift suppresses ecs everywhere
    settings = EvaluationSettings(adjustment_modes=("train", "none"))
    table = evaluate_crops(fake_predictor("3d", shift), crops[1:], settings)
    by_mode = table.set_index("adjustment")
    assert by_mode.loc["train", "tp"] == 0 and by_mode.loc["train", "fn"] == 224
    assert by_mode.loc["none", "tp"] == 192


def test_empty_class_scores_one_and_is_flagged(store):
    path, _ = store
    root = zarr.open_group(str(path), mode="a", zarr_format=2)
    # er_lum annotated, absent everywhere, never predicted by the fake model
    write_level(root, f"{LABELS_ROOT}/crop_c/er_lum", np.zeros((2, 2, 2), np.uint8), 8.0, 8.0)
    crop = Crop(path, EM_GROUP, path, f"{LABELS_ROOT}/crop_c", ("er_lum",), "test")
    table = evaluate_crops(fake_predictor("2d"), [crop], EvaluationSettings())
    row = table.iloc[0]
    assert (row.tp, row.fp, row.fn, row.tn) == (0, 0, 0, 8)
    assert row["empty"] and row.dice == 1.0 and row.iou == 1.0


def test_prediction_grid_covers_the_crop(store):
    _, crops = store
    geometry = read_crop_geometry(crops[1], 8.0)
    grid = PredictionGrid.for_crop(geometry, 8.0)
    assert grid.shape == (2, 4, 6)
    np.testing.assert_allclose(grid.origin_nm, [12.0, 12.0, 12.0])
    slabs = list(predict_crop(fake_predictor("3d"), geometry, EvaluationSettings(slab_voxels=1)))
    assert [(z0, z1) for z0, z1, _ in slabs] == [(0, 1), (1, 2)]
    assert all(logits.shape == (NUM_CLASSES, 1, 4, 6) for _, _, logits in slabs)


# ------------------------------------------------------------------------------ checkpoints


def test_evaluate_checkpoint_and_predictions_zarr(store, tmp_path):
    path, crops = store
    checkpoint = tmp_path / "best.pt"
    torch.save(demo_unet_checkpoint(["toy/crop_z"], ["other/crop_a"]), checkpoint)
    datasplit = tmp_path / "datasplit.csv"
    write_datasplit(crops, datasplit)
    out = tmp_path / "metrics" / "unet_2d.csv"
    predictions = tmp_path / "metrics" / "unet_2d.zarr"
    evaluate_checkpoint(
        checkpoint, datasplit, out, EvaluationSettings(device="cpu"), predictions_path=predictions
    )
    table = pd.read_csv(out)
    assert sorted(zip(table.crop, table["class"], strict=True)) == sorted(EXPECTED)
    assert (table.tp + table.fp + table.fn + table.tn).tolist() == [
        sum(EXPECTED[(c, k)]) for c, k in zip(table.crop, table["class"], strict=True)
    ]
    assert set(table.adjustment) == {"train"} and (table.model == "unet").all()
    group = zarr.open_group(str(predictions / "toy" / "crop_b" / "ecs"), mode="r", zarr_format=2)
    scale = group.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    assert scale["scale"] == [8.0, 8.0, 8.0] and group["s0"].shape == (2, 4, 6)
    assert group["s0"].dtype == np.uint8
    # run again, the store it wrote is replaced (it used to be refused as a zarr store)
    (predictions / "toy" / "crop_b" / "ecs" / "s0" / "0.0.0").unlink()
    evaluate_checkpoint(
        checkpoint, datasplit, out, EvaluationSettings(device="cpu"), predictions_path=predictions
    )
    assert (predictions / "toy" / "crop_b" / "ecs" / "s0" / "0.0.0").is_file()
    # predictions are never written into the data store
    with pytest.raises(CellsegError, match="data store"):
        evaluate_crops(fake_predictor("2d"), crops, EvaluationSettings(), path / "predictions")


def test_a_model_is_never_scored_on_a_crop_it_trained_or_validated_on(store, tmp_path):
    _, crops = store
    names = sorted(crop.name for crop in crops)
    datasplit = tmp_path / "datasplit.csv"
    write_datasplit(crops, datasplit)
    checkpoint = tmp_path / "best.pt"
    state = demo_unet_checkpoint([names[0], "toy/crop_z"], [names[-1]])
    torch.save(state, checkpoint)
    out = tmp_path / "metrics.csv"
    with pytest.raises(CellsegError) as refused:
        evaluate_checkpoint(checkpoint, datasplit, out, EvaluationSettings(device="cpu"))
    message = str(refused.value)
    assert "\n" not in message and str(checkpoint) in message
    assert f"{names[0]}, {names[-1]}" in message and "toy/crop_z" not in message
    assert not out.exists()
    # a checkpoint that does not say what it was trained on cannot be cleared either
    del state["data_identity"]
    torch.save(state, checkpoint)
    with pytest.raises(CellsegError, match="does not record which crops"):
        evaluate_checkpoint(checkpoint, datasplit, out, EvaluationSettings(device="cpu"))


def test_an_untrained_class_gets_no_row_and_no_array(store, tmp_path, capsys):
    """``cellseg evaluate`` of a run that trained every class but ``nuc`` (which crop_a
    annotates): no nuc row, no nuc array, a line naming it; the other rows are those of the same
    weights trained on all 14, which score as a checkpoint recording no set does (issue 33)."""
    _, crops = store
    datasplit = tmp_path / "datasplit.csv"
    write_datasplit(crops, datasplit)
    torch.manual_seed(0)
    state = demo_unet_checkpoint(["toy/crop_z"])
    runs = {"unrecorded": None, "all": list(CLASSES), "no_nuc": [c for c in CLASSES if c != "nuc"]}
    tables = {}
    for run, trained in runs.items():
        checkpoint = tmp_path / run / "best.pt"
        checkpoint.parent.mkdir()
        torch.save(state if trained is None else {**state, "trained_classes": trained}, checkpoint)
        out = tmp_path / run / "metrics.csv"
        assert main(["evaluate", "--checkpoint", str(checkpoint), "--datasplit", str(datasplit),
                     "--out", str(out), "--predictions", str(tmp_path / run / "p.zarr"),
                     "--device", "cpu"]) == 0  # fmt: skip
        tables[run] = pd.read_csv(out).drop(columns="inference_seconds")
    log = capsys.readouterr().err
    pd.testing.assert_frame_equal(tables["all"], tables["unrecorded"])
    assert "nuc" in set(tables["all"]["class"]) and "nuc" not in set(tables["no_nuc"]["class"])
    kept = tables["all"][tables["all"]["class"] != "nuc"].reset_index(drop=True)
    # check_dtype: an instance column read back all empty is float, with a nuc row a string
    pd.testing.assert_frame_equal(tables["no_nuc"], kept, check_dtype=False)
    assert "toy/crop_a: 1 classes" in log and "not scored, not trained: nuc" in log
    assert "untrained classes: nuc: no training crop annotates them" in log
    stores = {run: zarr.open_group(str(tmp_path / run / "p.zarr"), mode="r") for run in runs}
    assert set(stores["all"]["toy/crop_a"].group_keys()) == set(CLASSES)
    assert set(stores["no_nuc"]["toy/crop_a"].group_keys()) == set(CLASSES) - {"nuc"}
    assert stores["no_nuc"].attrs["cellseg"]["untrained_classes"] == ["nuc"]
    assert "untrained_classes" not in stores["all"].attrs["cellseg"]


def test_not_a_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / "best.pt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(CellsegError, match="not a cellseg model checkpoint"):
        Predictor.from_checkpoint(bad)


def test_settings_reject_bad_values_and_read_the_config_section():
    with pytest.raises(CellsegError, match="overlap"):
        EvaluationSettings(overlap=1.0)
    with pytest.raises(CellsegError, match="adjustment"):
        EvaluationSettings(adjustment_modes=("sideways",))
    settings = EvaluationSettings.from_config(
        {"overlap": 0.5, "adjustment_modes": ["none"], "rank_by": "pooled", "figure_seed": 1}
    )
    assert settings.overlap == 0.5 and settings.adjustment_modes == ("none",)


def test_command_line_parser():
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["evaluate", "--checkpoint", "a.pt", "--datasplit", "d.csv", "--out", "m.csv",
         "--adjustment", "train", "--adjustment", "none"]
    )  # fmt: skip
    assert args.adjustment == ["train", "none"] and args.out == Path("m.csv")


@pytest.mark.parametrize(
    "array", [EM_GROUP + "/s0", f"{LABELS_ROOT}/crop_b/ecs/s0"], ids=["em", "labels"]
)
def test_a_corrupt_chunk_names_the_array(store, array):
    path, crops = store
    (path / array / "0.0.0").write_bytes(b"truncated")  # a broken copy: no codec decodes it
    with pytest.raises(CellsegError) as error:
        evaluate_crops(fake_predictor("3d"), crops[1:], EvaluationSettings(), log=io.StringIO())
    message = str(error.value)
    assert message.startswith(f"{path}/{array}: chunk (0, 0, 0)") and "\n" not in message
    assert "copy the array again" in message
