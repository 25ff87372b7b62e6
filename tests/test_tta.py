"""Test-time augmentation (issue 34 item 2): the transforms, the window logits against an explicit
average of transformed forward passes, and its record in evaluation, prediction and the summary."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from torch import nn

from cellseg.data.store import EM_GROUP, LABELS_ROOT, Crop
from cellseg.errors import CellsegError
from cellseg.evaluation import EvaluationSettings, evaluate_crops
from cellseg.inference import Blender, Predictor, WindowGrid
from cellseg.prediction import predict_volume
from cellseg.prediction_geometry import PredictionSettings
from cellseg.reporting.outputs import make_summary
from cellseg.tta import TTA, tta_transforms
from store_builders import annotation, write_multiscale
from tiny_nets import SeededConvNet, tiny_predictor


class ConvNet(SeededConvNet):
    """Seeded 3x3(x3) convolutions plus a position-dependent term: no symmetry of the window
    leaves its output unchanged, so every transform matters."""

    def __init__(self, dims: int) -> None:
        super().__init__(dims, width=4, seed=5, scale=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0, 1, x.shape[-1]) * torch.linspace(0, 2, x.shape[-2])[:, None]
        return self.scale * self.net(x + ramp)


def explicit_tta(network: nn.Module, mode: str, dims: int) -> nn.Module:
    """The reference: a network that averages its own transformed passes, written out here with
    torch.flip / torch.rot90 (spatial dims of ``(n, c, [D,] H, W)``: H, W the last two)."""

    def variants(x: torch.Tensor) -> list[tuple[torch.Tensor, object]]:
        h, w = x.ndim - 2, x.ndim - 1
        axes = [h, w] if dims == 2 else [2, h, w]
        out = []
        if mode == "mirror":
            for n in range(len(axes) + 1):
                for subset in itertools.combinations(axes, n):
                    flips = list(subset)
                    out.append((x.flip(flips) if flips else x, flips))
            return [(t, ("flip", f)) for t, f in out]
        # mirror_rot90: the 8 symmetries of the y-x square, times the z flip in 3D
        for z in [[]] if dims == 2 else [[], [2]]:
            for mirror in (False, True):
                for k in range(4):
                    t = x.flip(z) if z else x
                    t = t.flip([w]) if mirror else t
                    out.append((torch.rot90(t, k, dims=(h, w)), ("rot", z, mirror, k)))
        return out

    def undo(y: torch.Tensor, how: object) -> torch.Tensor:
        h, w = y.ndim - 2, y.ndim - 1
        if how[0] == "flip":
            return y.flip(how[1]) if how[1] else y
        _, z, mirror, k = how
        y = torch.rot90(y, -k, dims=(h, w))
        y = y.flip([w]) if mirror else y
        return y.flip(z) if z else y

    class Averaged(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            outputs = [undo(network(t), how) for t, how in variants(x)]
            return torch.stack(outputs).mean(0)

    return Averaged()


def predictor(dims: int, network: nn.Module, patch: tuple[int, ...]) -> Predictor:
    return tiny_predictor(network.eval(), f"{dims}d", patch)


def blended(model: Predictor, image: torch.Tensor, tta: str) -> torch.Tensor:
    """Blended logits of a ``(D, H, W)`` image through :class:`Blender` (overlap 0.5)."""
    grid = WindowGrid.over(image.shape, model.window, (0, 0, 0), 0.5)
    blender = Blender(model, grid, "gaussian", 3, "cpu", tta)

    def read(box):
        return image[tuple(slice(a, b) for a, b in box)]

    return next(blender.logits(read, [(None, [(0, n) for n in image.shape])]))[1]


@pytest.mark.parametrize(
    ("dim", "mode", "count"),
    [("2d", "none", 1), ("2d", "mirror", 4), ("2d", "mirror_rot90", 8),
     ("3d", "none", 1), ("3d", "mirror", 8), ("3d", "mirror_rot90", 16)],
)  # fmt: skip
def test_transforms_are_distinct_and_invertible(dim, mode, count):
    transforms = tta_transforms(mode, dim, (4, 6, 6))
    assert len(transforms) == count and transforms[0].flips == () and transforms[0].k == 0
    x = torch.arange(2 * 4 * 6 * 6, dtype=torch.float32).reshape(1, 2, 4, 6, 6)
    images = {tuple(t.apply(x).flatten().tolist()) for t in transforms}
    assert len(images) == count  # each a different permutation of the voxels
    for t in transforms:
        torch.testing.assert_close(t.invert(t.apply(x)), x, rtol=0, atol=0)
        if dim == "2d":  # a 2D model's single slice is never flipped along z
            assert 0 not in t.flips


def test_rotations_need_a_square_window_and_names_are_checked():
    with pytest.raises(CellsegError, match="square in y, x"):
        tta_transforms("mirror_rot90", "2d", (1, 16, 24))
    with pytest.raises(CellsegError, match="use one of none, mirror, mirror_rot90"):
        TTA.parse("flip")
    assert TTA.parse(False) is TTA.NONE and TTA.parse("off") is TTA.NONE


@pytest.mark.parametrize("mode", ["mirror", "mirror_rot90"])
@pytest.mark.parametrize(
    ("dims", "patch", "shape"), [(2, (8, 8), (3, 13, 11)), (3, (4, 6, 6), (7, 9, 10))]
)
def test_tta_logits_are_the_average_of_transformed_passes(mode, dims, patch, shape):
    network = ConvNet(dims)
    image = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    ours = blended(predictor(dims, network, patch), image, mode)
    # the reference: the same blending of windows whose network averages its passes itself
    reference = blended(predictor(dims, explicit_tta(network, mode, dims), patch), image, "none")
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    plain = blended(predictor(dims, network, patch), image, "none")
    assert (ours - plain).abs().max() > 1e-2  # the augmentation changed something


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> tuple[Path, Crop]:
    path = tmp_path_factory.mktemp("tta") / "vol" / "vol.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    rng = np.random.default_rng(4)
    write_multiscale(
        root, EM_GROUP, [rng.integers(0, 256, (8, 24, 24), dtype=np.uint8)], [(8.0,) * 3],
        [(4.0,) * 3],
    )  # fmt: skip
    labels = rng.integers(0, 2, (4, 12, 12)).astype(np.uint8)
    write_multiscale(
        root, f"{LABELS_ROOT}/crop1/ecs", [labels], [(8.0,) * 3], [(20.0, 36.0, 52.0)],
        annotation("ecs"),
    )  # fmt: skip
    return path, Crop(path, EM_GROUP, path, f"{LABELS_ROOT}/crop1", ("ecs",), "test")


def test_evaluation_scores_each_tta_and_prediction_records_it(volume, tmp_path):
    path, crop = volume
    model = predictor(3, ConvNet(3), (4, 8, 8))
    plain = evaluate_crops(model, [crop], EvaluationSettings(device="cpu"))
    both = evaluate_crops(
        model, [crop], EvaluationSettings(device="cpu", tta="none", tta_compare=("mirror",))
    )
    assert both["tta"].tolist() == ["none", "mirror"]
    counts = ["tp", "fp", "fn", "tn"]
    np.testing.assert_array_equal(both[counts].iloc[[0]], plain[counts])  # none: as before
    assert (both["predicted_voxels"] == 4 * 12 * 12).all()
    assert not np.array_equal(both[counts].iloc[0], both[counts].iloc[1])
    # the mirrored evaluation scores what mirrored prediction writes
    mirrored = evaluate_crops(model, [crop], EvaluationSettings(device="cpu", tta="mirror"))
    np.testing.assert_array_equal(mirrored[counts], both[counts].iloc[[1]])
    out = tmp_path / "pred.zarr"
    settings = PredictionSettings(
        chunk_voxels=4,
        block_voxels=(4, 12, 12),
        pyramid_levels=1,
        device="cpu",
        tta="mirror",
        dtype="float32",
    )
    roi = ((16.0, 48.0), (32.0, 128.0), (48.0, 144.0))  # the crop's box
    predict_volume(None, path / EM_GROUP, out, settings, roi=roi, predictor=model)
    spec = json.loads((out / ".zattrs").read_text())["cellseg"]["prediction"]
    assert spec["tta"] == "mirror"
    mask = np.asarray(zarr.open_array(str(out / "masks/ecs/s0"), mode="r"))
    truth = labels_of(path)
    tp = int((mask.astype(bool) & (truth == 1)).sum())
    assert tp == int(mirrored["tp"].iloc[0])


def labels_of(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(path / LABELS_ROOT / "crop1/ecs/s0"), mode="r"))


def test_summary_ranks_the_first_tta_and_compares_them(tmp_path):
    rows = []
    for tta, tp, seconds in (("none", 60, 1.0), ("mirror", 80, 4.0)):
        for crop in ("d/crop1", "d/crop2"):
            rows.append(
                {"model": "unet", "dim": "2d", "adjustment": "train", "tta": tta, "crop": crop,
                 "class": "ecs", "tp": tp, "fp": 100 - tp, "fn": 100 - tp, "tn": 10,
                 "dice": tp / 100, "inference_seconds": seconds, "predicted_voxels": 1000}
            )  # fmt: skip
    metrics = tmp_path / "unet_2d.csv"
    pd.DataFrame(rows).to_csv(metrics, index=False)
    train = tmp_path / "train_summary.json"
    train.write_text(
        json.dumps(
            {"model": "unet", "dim": "2d", "preset": "demo", "parameters": 1000, "epochs_run": 2,
             "best_epoch": 2, "best_val_mean_dice": 0.5, "stop_reason": "max_epochs",
             "train_seconds": 60.0, "gpus": 0, "gpu_hours": 0.0, "cpu_hours": 0.02}
        )
    )  # fmt: skip
    out = tmp_path / "out"
    make_summary(
        {"unet_2d": metrics}, {"unet_2d": train}, None, out / "summary.csv", out / "summary.md",
        out / "figures", costs_path=out / "costs.csv",
    )  # fmt: skip
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[0, "mean_dice"] == pytest.approx(0.6)  # the first tta only
    assert "tta" not in summary  # summary.csv: results only, the same as before
    costs = pd.read_csv(out / "costs.csv")
    assert costs.loc[0, "tta"] == "none"
    assert costs.loc[0, "inference_us_per_voxel"] == pytest.approx(1e6 * 2.0 / 2000)
    text = (out / "summary.md").read_text()
    assert "## Test-time augmentation" in text
    assert "| unet_2d | mirror | 0.8000 | +0.2000 | 0.8000 | 8.0 | 4000.00 |" in text


def test_evaluate_jobs_ask_for_the_passes_of_every_mode():
    import yaml

    from cellseg.config.resources import TTA_PASSES, evaluation_resources, tta_passes
    from cellseg.config.settings import resolve_settings

    for mode, passes in TTA_PASSES.items():  # the count of cellseg.tta's transforms
        for dim in ("2d", "3d"):
            assert len(tta_transforms(mode, dim, (4, 6, 6))) == passes[dim]
    config = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())
    rule = config["resources"]["evaluate"]
    settings = resolve_settings(config, "unet_3d")
    plain = evaluation_resources(config, settings, 10).runtime_min
    assert plain == rule["startup_min"] + rule["minutes_per_crop"] * 10
    config["inference"] = {"tta": "none", "tta_compare": ["mirror", "mirror_rot90"]}
    assert tta_passes(config["inference"], "3d") == 1 + 8 + 16
    study = evaluation_resources(config, settings, 10).runtime_min
    assert study == rule["startup_min"] + rule["minutes_per_crop"] * 10 * 25
