"""One window grid per volume (issue 34 item 1): evaluation's counts do not depend on the slab
size, and evaluation's probabilities are ``cellseg predict``'s over the same region."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from cellseg.classes import CLASSES, GROUPS
from cellseg.data.store import EM_GROUP, LABELS_ROOT, Crop, read_crop_geometry
from cellseg.evaluation import EvaluationSettings, evaluate_crops
from cellseg.inference import PredictionGrid, Predictor, predict_crop
from cellseg.prediction import predict_volume
from cellseg.prediction_geometry import PredictionSettings
from checkpoint_builders import demo_unet_checkpoint
from store_builders import annotation, write_multiscale
from tiny_nets import SeededConvNet, tiny_predictor

REPO = Path(__file__).resolve().parents[1]
EM_SHAPE = (40, 48, 56)  # EM voxels at 8 nm, voxel 0's lower corner at 0 nm
CROP_START, CROP_SHAPE = (64.0, 96.0, 48.0), (26, 20, 36)  # at 4 nm (13 x 10 x 18 model voxels)
CLASSES_SCORED = ("ecs", "mito_mem", "nuc")


class ConvNet(SeededConvNet):
    """3x3x3 convolutions (seeded): a window's border voxels differ from the same voxels inside
    another window, so which windows a voxel gets decides its value."""

    def __init__(self) -> None:
        super().__init__(3, width=6, seed=3, scale=6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.net(x - 0.5)


def conv_predictor() -> Predictor:
    """A 3D model with a 32-deep window (the case the issue measured: with overlap 0.25 the
    windows of per-slab grids did not line up)."""
    return tiny_predictor(ConvNet().eval(), "3d", (12, 16, 16))


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> tuple[Path, Crop]:
    """Random EM at 8 nm, a crop inside it at 4 nm with three random classes (some unknown)."""
    path = tmp_path_factory.mktemp("grid") / "vol" / "vol.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    rng = np.random.default_rng(7)
    em = rng.integers(0, 256, EM_SHAPE, dtype=np.uint8)
    write_multiscale(root, EM_GROUP, [em], [(8.0,) * 3], [(4.0,) * 3])
    for name in CLASSES_SCORED:
        labels = rng.integers(0, 2, CROP_SHAPE).astype(np.uint8)
        labels[rng.random(CROP_SHAPE) < 0.05] = 255
        write_multiscale(
            root, f"{LABELS_ROOT}/crop1/{name}", [labels], [(4.0,) * 3],
            [tuple(s + 2.0 for s in CROP_START)], annotation(name),
        )  # fmt: skip
    crop = Crop(path, EM_GROUP, path, f"{LABELS_ROOT}/crop1", CLASSES_SCORED, "test")
    return path, crop


def test_counts_do_not_depend_on_the_slab_size(volume):
    _, crop = volume
    model = conv_predictor()
    tables = {
        slab: evaluate_crops(model, [crop], EvaluationSettings(slab_voxels=slab, device="cpu"))
        for slab in (1, 4, 5, 7, 13, 32)
    }
    counts = {
        slab: t.set_index("class")[["tp", "fp", "fn", "tn"]].to_numpy()
        for slab, t in tables.items()
    }
    reference = counts[32]  # one slab: the whole crop at once
    assert reference[:, :3].sum() > 1000  # something is predicted and scored
    for slab, values in counts.items():
        np.testing.assert_array_equal(values, reference, err_msg=f"slab_voxels = {slab}")
    # the logits themselves agree, slab by slab (summed in one order: float noise at most)
    geometry = read_crop_geometry(crop, 8.0)
    whole = torch.cat([g for *_, g in predict_crop(model, geometry, EvaluationSettings())], 1)
    for slab in (1, 5, 7):
        parts = predict_crop(model, geometry, EvaluationSettings(slab_voxels=slab))
        torch.testing.assert_close(torch.cat([g for *_, g in parts], 1), whole, atol=1e-5, rtol=0)


def crop_roi(grid: PredictionGrid) -> str:
    """The crop's prediction grid as a ``--roi`` (nm, voxel edges)."""
    r = np.asarray(grid.resolution_nm)
    lo = grid.origin_nm - r / 2
    hi = lo + np.asarray(grid.shape) * r
    return ",".join(f"{a:g}:{b:g}" for a, b in zip(lo, hi, strict=True))


def stored_probabilities(out: Path) -> np.ndarray:
    return np.stack(
        [np.asarray(zarr.open_array(str(out / f"probabilities/{c}/s0"))) for c in CLASSES]
    )


def test_evaluation_probabilities_equal_cellseg_predict_3d(volume, tmp_path):
    """The crop's probabilities from evaluation's path (predict_crop, in slabs) and from
    ``predict_volume`` over the crop's box (blocks of another shape) agree to 1e-5: the same
    windows and weights, summed in the same order; only a window's forward pass in another batch
    may differ in the last bits (a float32 logit of magnitude < 10 has ulp ~1e-6)."""
    path, crop = volume
    model = conv_predictor()
    geometry = read_crop_geometry(crop, 8.0)
    grid = PredictionGrid.for_crop(geometry, 8.0)
    assert grid.shape == (13, 10, 18) and tuple(grid.start) == (8, 12, 6)
    slabs = predict_crop(model, geometry, EvaluationSettings(slab_voxels=3))
    evaluated = torch.cat([model.probabilities(g) for *_, g in slabs], 1).numpy()
    out = tmp_path / "pred.zarr"
    settings = PredictionSettings(
        chunk_voxels=4, block_voxels=(4, 8, 8), dtype="float32", pyramid_levels=1, device="cpu"
    )
    roi = tuple(tuple(float(v) for v in r.split(":")) for r in crop_roi(grid).split(","))
    predict_volume(None, path / EM_GROUP, out, settings, roi=roi, predictor=model)
    predicted = stored_probabilities(out)
    assert predicted.shape == evaluated.shape
    np.testing.assert_allclose(predicted, evaluated, atol=1e-5, rtol=0)


def test_evaluation_probabilities_equal_the_predict_cli_2d(volume, tmp_path):
    """The same through the ``cellseg predict`` command with a checkpoint (a 2D demo UNet)."""
    path, crop = volume
    checkpoint = tmp_path / "best.pt"
    torch.manual_seed(0)
    torch.save(demo_unet_checkpoint(), checkpoint)
    model = Predictor.from_checkpoint(checkpoint)
    geometry = read_crop_geometry(crop, 8.0)
    grid = PredictionGrid.for_crop(geometry, 8.0)
    slabs = predict_crop(model, geometry, EvaluationSettings(slab_voxels=4))
    evaluated = torch.cat([model.probabilities(g) for *_, g in slabs], 1).numpy()
    out = tmp_path / "pred.zarr"
    arguments = ["--checkpoint", str(checkpoint), "--em", str(path / EM_GROUP), "--out", str(out)]
    arguments += [
        "--roi",
        crop_roi(grid),
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--groups",
        "all",
    ]
    arguments += ["--chunk-voxels", "8", "--block-voxels", "8", "16", "16", "--threads", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "cellseg", "predict", *arguments],
        env=os.environ | {"PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    predicted = stored_probabilities(out)
    assert predicted.shape == evaluated.shape
    # a 2D model's windows are summed y-x (evaluation) or x-y (prediction's carry axis): float
    # rounding of a sum of at most 4 float32 terms, far below 1e-5 after the sigmoid
    np.testing.assert_allclose(predicted, evaluated, atol=1e-5, rtol=0)
    # a group (issue 33): its probability the union of evaluation's member probabilities,
    # computed naively here; its mask the union of evaluation's member predictions
    members = [CLASSES.index(m) for m in GROUPS["mito"]]
    union = 1.0 - np.prod([1.0 - evaluated[c].astype(np.float64) for c in members], axis=0)
    np.testing.assert_allclose(
        np.asarray(zarr.open_array(str(out / "probabilities/mito/s0"))), union, atol=1e-5, rtol=0
    )
    np.testing.assert_array_equal(
        np.asarray(zarr.open_array(str(out / "masks/mito/s0"))),
        np.any([evaluated[c] > 0.5 for c in members], axis=0),
    )
