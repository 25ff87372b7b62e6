"""Evaluation keeps the slices the figures draw (cellseg.evaluation_slices): their probabilities
are the ones evaluation scored, checked against an independent prediction of that one slice
(predict_slab), their EM is what the network read and their truth is the crop's labels."""

from __future__ import annotations

import io

import numpy as np
import pytest

from cellseg.classes import CLASS_INDEX, GROUP_INDEX, NUM_CLASSES
from cellseg.data.store import EM_GROUP, LABELS_ROOT, Crop, read_crop_geometry
from cellseg.evaluation import EvaluationSettings, evaluate_checkpoint, evaluate_crops
from cellseg.evaluation_slices import FigureSliceCollector
from cellseg.figure_slices import ModelFigureSettings, read_figure_slices, sample_slices
from cellseg.inference import predict_slab
from tiny_nets import SeededConvNet, tiny_predictor, write_level


def toy_crops(tmp_path) -> list[Crop]:
    """EM 6 x 12 x 12 at 8 nm (seeded noise); crop_a annotates pm (x >= 6) over 5 slices and
    the mito group, crop_b pm over 6."""
    import zarr

    path = tmp_path / "toy" / "toy.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    rng = np.random.default_rng(3)
    write_level(root, EM_GROUP, rng.integers(0, 256, (6, 12, 12), dtype=np.uint8), 0.0)
    pm = np.zeros((6, 12, 12), dtype=np.uint8)
    pm[..., 6:] = 1
    write_level(root, f"{LABELS_ROOT}/crop_a/pm", pm[:5], 0.0)
    write_level(root, f"{LABELS_ROOT}/crop_a/mito", 1 - pm[:5], 0.0)
    write_level(root, f"{LABELS_ROOT}/crop_b/pm", pm, 0.0)
    return [
        Crop(path, EM_GROUP, path, f"{LABELS_ROOT}/crop_a", ("pm", "mito"), "test"),
        Crop(path, EM_GROUP, path, f"{LABELS_ROOT}/crop_b", ("pm",), "test"),
    ]


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_figure_slices_are_what_evaluation_predicted(tmp_path, dim):
    """Slabs of 4 slices (a pick inside a slab, at an offset), 4 samples of 2 crops (the last
    two at seeded random slices): each kept slice equals predict_slab of that slice alone."""
    crops = toy_crops(tmp_path)
    shape = (6, 6) if dim == "2d" else (4, 6, 6)
    network = SeededConvNet(int(dim[0]), 4, seed=1, scale=3.0)
    predictor = tiny_predictor(network, dim, shape, logit_shift=torch_shift())
    settings = EvaluationSettings(slab_voxels=4, adjustment_modes=("train", "none"), overlap=0.5)
    figure = ModelFigureSettings(samples=4, seed=5)
    collector = FigureSliceCollector(predictor, crops, figure, "train", 0.5, settings.overlap)
    evaluate_crops(predictor, crops, settings, log=io.StringIO(), figures=collector)
    slices = collector.slices()
    geometries = [read_crop_geometry(crop, 8.0) for crop in crops]
    picks = sample_slices(2, [5, 6], 4, 5)
    assert [(s.crop, s.z) for s in slices.samples] == [(crops[i].name, z) for i, z in picks]
    assert slices.classes is not None and slices.classes.crop == crops[0].name  # more labels
    assert slices.classes.z == 2 and slices.names == ("pm", "mito")
    for s in (*slices.samples, slices.classes):
        index = next(i for i, crop in enumerate(crops) if crop.name == s.crop)
        em, logits = predict_slab(predictor, geometries[index], (s.z, s.z + 1), settings)
        reference = predictor.probabilities(logits, "train")[:, 0].numpy()
        # to float rounding: a slab batches other windows with this slice's than one slice does
        np.testing.assert_allclose(s.probabilities, reference, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(s.em, em[0])
        # the truth: pm where x >= 6 (the crops' label grid is the prediction grid)
        pm = s.target[CLASS_INDEX["pm"]]
        np.testing.assert_array_equal(pm, np.broadcast_to(np.arange(12) >= 6, (12, 12)))
        assert np.isnan(s.target[CLASS_INDEX["nuc"]]).all()  # not annotated
    assert slices.samples[0].target.shape[0] == NUM_CLASSES
    mito = slices.classes.target[NUM_CLASSES + GROUP_INDEX["mito"]]
    np.testing.assert_array_equal(mito, np.broadcast_to(np.arange(12) < 6, (12, 12)))


def torch_shift():
    import torch

    return torch.linspace(-1.0, 1.0, NUM_CLASSES)  # mode train differs from none


def test_evaluate_checkpoint_writes_the_figure_slices(tmp_path, monkeypatch):
    """Through evaluate_checkpoint: the file holds the run's key, mode, threshold and the
    model's resolution, next to the metrics."""
    import cellseg.evaluation as evaluation

    crops = toy_crops(tmp_path)
    predictor = tiny_predictor(SeededConvNet(2, 4, seed=1, scale=3.0), "2d", (6, 6), "unet")
    monkeypatch.setattr(evaluation, "read_scored_crops", lambda *a, **k: crops)
    monkeypatch.setattr(evaluation.Predictor, "from_checkpoint", lambda *a, **k: predictor)
    monkeypatch.setattr(evaluation, "check_unseen", lambda *a, **k: None)
    out = tmp_path / "metrics" / "unet_2d.csv"
    out.parent.mkdir()
    settings = EvaluationSettings(threshold=0.3, device="cpu")
    evaluate_checkpoint(
        "best.pt", "datasplit.csv", out, settings, log=io.StringIO(),
        figure_slices_path=out.with_suffix(".figure_slices.npz"),
        figure_settings=ModelFigureSettings(samples=2, seed=1),
    )  # fmt: skip
    slices = read_figure_slices(out.with_suffix(".figure_slices.npz"))
    assert (slices.model, slices.mode, slices.threshold) == ("unet_2d", "train", 0.3)
    assert slices.resolution_nm == (8.0, 8.0, 8.0) and len(slices.samples) == 2
