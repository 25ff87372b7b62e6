"""Per-class panels (issue 34 item 4): EM, truth and prediction of every class and group a crop
annotates, each in its palette colour; a group's prediction is the union of its members'."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from cellseg.classes import CLASS_INDEX, CLASSES, NUM_CLASSES, NUM_GROUPS
from cellseg.data.store import EM_GROUP, LABELS_ROOT, Crop, read_crop_geometry
from cellseg.evaluation import EvaluationSettings, evaluate_crops
from cellseg.evaluation_slices import FigureSliceCollector
from cellseg.figure_slices import FigureSlices, ModelFigureSettings, annotated_names, figure_crop
from cellseg.inference import Predictor
from cellseg.palette import rgb
from cellseg.reporting.figures import crop_class_panels
from cellseg.visualization import (
    OVERLAY_ALPHA,
    class_panels_figure,
    crop_panels_figure,
    overlay,
    slice_dice,
)
from tiny_nets import MemberNet, member_em_store, tiny_predictor, write_level


def evaluated_slices(predictor: Predictor, crops: list[Crop], seed: int) -> FigureSlices:
    """The figure slices an evaluation of ``crops`` keeps (one-slice slabs, mode ``train``)."""
    settings = EvaluationSettings(slab_voxels=1, adjustment_modes=("train",))
    collector = FigureSliceCollector(
        predictor, crops, ModelFigureSettings(seed=seed), "train", 0.5, settings.overlap
    )
    evaluate_crops(predictor, crops, settings, log=io.StringIO(), figures=collector)
    return collector.slices()


def panels(figure) -> dict[str, np.ndarray]:
    """Each titled per-class panel's picture, by title's first line (``"pm: truth"``)."""
    found = {}
    for ax in figure.axes:
        title = ax.get_title().split("\n")[0]
        if ": " in title and ax.images:
            found[title] = np.asarray(ax.images[0].get_array())
    return found


def test_overlay_blends_the_class_colour_over_the_em_by_hand():
    em = np.array([[0.0, 1.0]])
    picture = overlay(em, np.array([[True, False]]), "nuc")
    expected = OVERLAY_ALPHA * np.array(rgb("nuc"))
    np.testing.assert_allclose(picture[0, 0], expected)
    np.testing.assert_allclose(picture[0, 1], [1.0, 1.0, 1.0])  # no mask: the EM's grey


def test_slice_dice_counts_only_annotated_voxels():
    truth = np.array([1.0, 1.0, 0.0, 0.0, np.nan])
    prediction = np.array([True, False, True, False, True])
    assert slice_dice(prediction, truth) == pytest.approx(2 / 4)  # TP 1, FP 1, FN 1
    assert slice_dice(np.zeros(2, bool), np.zeros(2)) is None


def test_every_annotated_class_and_group_gets_truth_and_prediction_in_its_colour():
    h, w = 4, 6
    em = np.full((h, w), 0.5)
    target = np.full((NUM_CLASSES + NUM_GROUPS, h, w), np.nan)
    target[CLASS_INDEX["pm"]] = 0
    target[CLASS_INDEX["pm"], :, :2] = 1
    target[NUM_CLASSES + 0] = 0  # mito, the first group
    target[NUM_CLASSES + 0, :, 2:4] = 1
    target[NUM_CLASSES + 0, 0, 5] = np.nan  # one unannotated voxel
    probabilities = np.zeros((NUM_CLASSES, h, w))
    probabilities[CLASS_INDEX["pm"], :, :3] = 0.9
    probabilities[CLASS_INDEX["mito_mem"], :, 2] = 0.9
    probabilities[CLASS_INDEX["mito_lum"], :, 3] = 0.9
    figure = class_panels_figure(em, target, probabilities, title="crop")
    try:
        found = panels(figure)
        # only what the crop annotates: pm and the mito group, nothing else
        assert sorted(found) == ["mito: prediction", "mito: truth", "pm: prediction", "pm: truth"]
        grey = np.full(3, 0.5)

        def coloured(picture: np.ndarray, name: str) -> np.ndarray:
            blend = (1 - OVERLAY_ALPHA) * grey + OVERLAY_ALPHA * np.array(rgb(name))
            return np.isclose(picture, blend).all(axis=-1)

        expected = np.zeros((h, w), bool)
        expected[:, :2] = True
        np.testing.assert_array_equal(coloured(found["pm: truth"], "pm"), expected)
        expected[:, 2] = True  # pm predicted one column too far
        np.testing.assert_array_equal(coloured(found["pm: prediction"], "pm"), expected)
        # the group's prediction: the union of mito_mem (x 2) and mito_lum (x 3)
        expected = np.zeros((h, w), bool)
        expected[:, 2:4] = True
        np.testing.assert_array_equal(coloured(found["mito: prediction"], "mito"), expected)
        np.testing.assert_array_equal(coloured(found["mito: truth"], "mito"), expected)
        titles = [ax.get_title() for ax in figure.axes]
        assert "pm: prediction\nDice 0.80" in titles  # TP 8, FP 4, FN 0
        assert "mito: prediction\nDice 1.00" in titles
    finally:
        plt.close(figure)
    with pytest.raises(ValueError, match="mito: not channels of a 14-channel target"):
        class_panels_figure(em, target[:NUM_CLASSES], probabilities, names=["mito"])


# ------------------------------------------------------------------------------ from a crop


@pytest.fixture
def crops(tmp_path: Path) -> list[Crop]:
    """EM at 8 nm: x index 0-1 at 255, 2-3 at 170, 4-7 at 0. ``crop_a`` annotates pm (x >= 4
    of the EM) and the mito group (x 0-3); ``crop_b`` only pm."""
    path, root = member_em_store(tmp_path)
    pm = np.zeros((4, 8, 8), dtype=np.uint8)
    pm[..., 4:] = 1
    mito = np.zeros((4, 8, 8), dtype=np.uint8)
    mito[..., :4] = 1
    write_level(root, f"{LABELS_ROOT}/crop_a/pm", pm, 0.0)
    write_level(root, f"{LABELS_ROOT}/crop_a/mito", mito, 0.0)
    write_level(root, f"{LABELS_ROOT}/crop_b/pm", pm, 0.0)
    return [
        Crop(path, EM_GROUP, path, f"{LABELS_ROOT}/crop_b", ("pm",), "test"),
        Crop(path, EM_GROUP, path, f"{LABELS_ROOT}/crop_a", ("pm", "mito"), "test"),
    ]


def test_the_richest_crop_shows_its_classes_and_groups(crops):
    predictor = tiny_predictor(MemberNet(), "3d", (2, 4, 4), model="fake")
    geometries = [read_crop_geometry(crop, 8.0) for crop in crops]
    assert [annotated_names(g) for g in geometries] == [["pm"], ["pm", "mito"]]
    for seed in range(5):  # whatever the seeded order, the crop with more labels
        assert figure_crop(crops, geometries, seed) == 1
    figure = crop_class_panels(evaluated_slices(predictor, crops, 42))
    try:
        assert "crop_a, z=2" in figure.get_suptitle()
        found = panels(figure)
        assert sorted(found) == ["mito: prediction", "mito: truth", "pm: prediction", "pm: truth"]
        for name in ("pm", "mito"):
            # the network is right everywhere: the prediction panel is the truth panel
            np.testing.assert_allclose(found[f"{name}: prediction"], found[f"{name}: truth"])
        mito = found["mito: truth"]
        assert not np.allclose(mito[:, :4], mito[:, :4].mean(axis=-1, keepdims=True))  # coloured
        np.testing.assert_allclose(mito[:, 4:], 0.0)  # EM 0 and no mito: black
    finally:
        plt.close(figure)


def test_an_untrained_group_is_marked_and_never_painted(crops):
    """A model that trained pm alone (issue 33): crop_a's mito panel says "not trained" over the
    bare EM, and no mito member is painted in the all-classes prediction, though the network's
    mito channels are confident."""
    predictor = tiny_predictor(MemberNet(), "3d", (2, 4, 4), model="fake")
    predictor = replace(predictor, trained_classes=("pm",))
    geometries = [read_crop_geometry(crop, 8.0) for crop in crops]
    # each crop annotates one trained name: a seed whose order puts crop_a (with mito) first
    seed = next(k for k in range(20) if figure_crop(crops, geometries, k, ("pm",)) == 1)
    figure = crop_class_panels(evaluated_slices(predictor, crops, seed))
    try:
        titles = [ax.get_title() for ax in figure.axes]
        assert "crop_a" in figure.get_suptitle() and "mito: prediction\nnot trained" in titles
        bare = panels(figure)["mito: prediction"]
        assert np.allclose(bare, bare[..., :1])  # grey EM: no colour blended in
        assert not any("Dice" in t and t.startswith("mito") for t in titles)
        everything = (
            next(ax for ax in figure.axes if ax.get_title() == "prediction (all classes)")
            .images[0]
            .get_array()
        )
        painted = {tuple(np.round(v, 3)) for v in np.asarray(everything).reshape(-1, 3)}
        for member in ("mito_mem", "mito_lum"):
            assert tuple(np.round(rgb(member), 3)) not in painted
        assert tuple(np.round(rgb("pm"), 3)) in painted
    finally:
        plt.close(figure)


def test_sample_panels_keep_the_figure_title_apart_from_the_row_titles():
    """The rows' titles (crop and slice) once replaced the figure's (model and adjustment)."""
    target = np.zeros((NUM_CLASSES, 4, 4))
    row = (np.zeros((4, 4)), target, target, "d/crop1, z=2")
    figure = crop_panels_figure([row, (*row[:3], "d/crop2, z=3")], "unet_2d: test crops")
    try:
        assert figure.get_suptitle() == "unet_2d: test crops"
        texts = [t.get_text() for ax in figure.axes for t in ax.texts]
        assert "d/crop1, z=2" in texts and "d/crop2, z=3" in texts
    finally:
        plt.close(figure)


def test_sample_panels_legend_lists_the_trained_classes_only():
    """A run trained on pm alone drew a legend of all 14 colours, 13 of which it never paints."""
    target = np.zeros((NUM_CLASSES, 4, 4))
    row = (np.zeros((4, 4)), target, target, "d/crop1, z=2")
    for classes, expected in ((("pm",), ["pm"]), (CLASSES, list(CLASSES))):
        figure = crop_panels_figure([row], "run", classes=classes)
        try:
            (legend,) = figure.legends
            labels = [text.get_text() for text in legend.get_texts()]
            assert labels == [*expected, "unannotated"]
        finally:
            plt.close(figure)
