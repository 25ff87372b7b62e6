"""Anisotropic voxels (issue 33, "anisotropic training"): ``data.resolution_nm`` as ``[z, y, x]``.

A serial-section store like cardona2010_sstem (50 nm sections of 4 nm pixels, with a 50x8x8 nm
``s1`` as the importer's anisotropic pyramid writes it) against hand-computed levels, grids,
reads and counts: every axis at its own spacing, nothing assumed isotropic.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import zarr

from cellseg.classes import CLASS_INDEX
from cellseg.data.frequencies import class_frequencies
from cellseg.data.multiscale import resolution_problem
from cellseg.data.patches import CropReader, PatchGrid
from cellseg.data.store import discover_crops, read_crop_geometry
from cellseg.inference import EMReader, PredictionGrid, Predictor
from cellseg.prediction import PredictionSettings, predict_volume
from cellseg.reporting.figures import pixel_aspect
from cellseg.viewer import neuroglancer_state, read_sources
from cellseg.visualization import class_panels_figure, crop_panels_figure
from store_builders import SEMANTIC, annotation, write_multiscale
from tiny_nets import SeededConvNet

EM_GROUP = "recon-1/em/fibsem-uint8"
SECTION = (50.0, 8.0, 8.0)


def pm_s1() -> np.ndarray:
    """pm on the 50x8x8 nm level: ``(z + y + x) % 2`` (4 x 8 x 8 voxels), so a read along any
    axis at the wrong spacing breaks the alternation."""
    z, y, x = np.indices((4, 8, 8))
    return ((z + y + x) % 2).astype(np.uint8)


@pytest.fixture
def sstem(tmp_path):
    """EM of 6 sections x 32 x 32 pixels at 50x4x4 nm from 0 nm, with its 50x8x8 ``s1``; one crop
    of pm over sections 1-4 and pixels 8-23 in y and x (s0 at 50x4x4, s1 at 50x8x8)."""
    em = (np.arange(6 * 32 * 32).reshape(6, 32, 32) % 251).astype(np.uint8)
    em_s1 = em.reshape(6, 16, 2, 16, 2).mean(axis=(2, 4)).round().astype(np.uint8)
    s1 = pm_s1()
    s0 = s1.repeat(2, axis=1).repeat(2, axis=2)
    store = tmp_path / "data" / "sstem" / "sstem.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    write_multiscale(
        root,
        EM_GROUP,
        [em, em_s1],
        [(50.0, 4.0, 4.0), SECTION],
        [(25.0, 2.0, 2.0), (25.0, 4.0, 4.0)],
    )
    write_multiscale(
        root,
        "recon-1/labels/groundtruth/crop1/pm",
        [s0, s1],
        [(50.0, 4.0, 4.0), SECTION],
        # voxel centres: z from 75 (section 1), y and x from 34 (pixel 8; s1: 36)
        [(75.0, 34.0, 34.0), (75.0, 36.0, 36.0)],
        annotation("pm", SEMANTIC),
    )
    return store, em_s1


def test_levels_are_chosen_and_refused_axis_by_axis(sstem):
    store, _ = sstem
    (crop,) = discover_crops(store.parent.parent)
    geometry = read_crop_geometry(crop)
    em, pm = geometry.em, geometry.labels["pm"]
    assert em.level_for(SECTION).path == "s1" and pm.level_for(SECTION).path == "s1"
    assert em.level_for([50, 4, 4]).path == "s0"
    # within a factor of 2 on every axis: 40 nm sections read 50 nm ones
    assert resolution_problem(pm, SECTION) is None
    assert resolution_problem(pm, [40, 8, 8]) is None
    # 50 nm is more than 2x an isotropic 10 nm: left out, as before
    problem = resolution_problem(pm, 10.0)
    assert problem is not None and "no scale level near 10.0 nm" in problem
    problem = resolution_problem(pm, [10, 8, 8])
    assert problem is not None and "no scale level near [10, 8, 8] nm" in problem
    # the geometry check accepts the per-axis size (it raised for any 50 nm data at 8 nm)
    read_crop_geometry(crop, SECTION)


def test_patch_grid_spaces_each_axis_by_its_own_voxel_size():
    grid = PatchGrid.build(np.array([100.0, 50.0, 60.0]), (3, 2, 4), SECTION)
    np.testing.assert_array_equal(grid.z_nm, [50.0, 100.0, 150.0])
    np.testing.assert_array_equal(grid.yx_nm[:, 0, 0], [46.0, 54.0])
    np.testing.assert_array_equal(grid.yx_nm[0, :, 1], [48.0, 56.0, 64.0, 72.0])
    # one number: the isotropic grid of before
    iso = PatchGrid.build(np.array([100.0, 50.0, 60.0]), (3, 2, 4), 8.0)
    np.testing.assert_array_equal(iso.z_nm, [92.0, 100.0, 108.0])


def test_a_patch_at_50x8x8_reads_one_section_and_one_s1_voxel_per_step(sstem):
    store, _ = sstem
    (crop,) = discover_crops(store.parent.parent)
    geometry = read_crop_geometry(crop, SECTION)
    reader = CropReader(geometry, SECTION, em_range=(0.0, 255.0))
    # centred between s1 voxels (1, 2, 2) and (2, 5, 5): 2 x 4 x 4 voxels on s1's centres
    centre = np.array([75.0 + 1.5 * 50, 36.0 + 3.5 * 8, 36.0 + 3.5 * 8])
    _, target = reader.read(PatchGrid.build(centre, (2, 4, 4), SECTION))
    np.testing.assert_array_equal(target[CLASS_INDEX["pm"]], pm_s1()[1:3, 2:6, 2:6])


def test_prediction_grid_and_em_reader_per_axis(sstem):
    store, em_s1 = sstem
    (crop,) = discover_crops(store.parent.parent)
    geometry = read_crop_geometry(crop, SECTION)
    grid = PredictionGrid.for_crop(geometry, SECTION)
    # EM box 0-300 x 0-128 x 0-128 nm; the crop 50-250 x 32-96 x 32-96 nm: voxels
    # z 50/50 = 1 to 250/50 = 5, y and x 32/8 = 4 to 96/8 = 12
    assert grid.shape == (4, 8, 8) and grid.start == (1, 4, 4)
    np.testing.assert_array_equal(grid.origin_nm, [75.0, 36.0, 36.0])
    assert grid.resolution_nm == (50.0, 8.0, 8.0)
    # nearest prediction voxel of label voxel centres along z and x
    np.testing.assert_array_equal(grid.nearest_index(0, np.array([75.0, 125.0, 230.0])), [0, 1, 3])
    np.testing.assert_array_equal(grid.nearest_index(2, np.array([34.0, 38.0, 43.0])), [0, 0, 1])
    level = geometry.em.level_for(SECTION)
    array = geometry.em.open_level(level)
    box = [(0, 2), (0, 3), (0, 4)]
    expected = em_s1[1:3, 4:7, 4:8].astype(np.float32) / 255
    for direct in (True, False):  # read as stored, and interpolated on s1's own centres
        reader = EMReader(array, level, grid.origin_nm, SECTION, (0, 0, 0), (0.0, 255.0), direct)
        assert (reader.offset is not None) == direct
        np.testing.assert_allclose(reader.read(box), expected, atol=1e-6)


def test_frequencies_weigh_a_stored_voxel_by_its_volume_per_axis(sstem):
    store, _ = sstem
    crops = discover_crops(store.parent.parent)
    result = class_frequencies(crops, SECTION, allow_missing_classes=True)
    pm = result["per_class"]["pm"]
    # s1 is read: 4 x 8 x 8 voxels of exactly the model's size, half of them pm
    assert pm["annotated_voxels"] == 256 and pm["positive_voxels"] == 128
    assert result["resolution_nm"] == list(SECTION)
    # at 50x4x4 (s0 read) each stored voxel is one model voxel: 4 x 16 x 16
    finer = class_frequencies(crops, [50, 4, 4], allow_missing_classes=True)
    assert finer["per_class"]["pm"]["annotated_voxels"] == 1024


def test_a_prediction_store_at_50x8x8_records_each_axis(sstem, tmp_path):
    """``cellseg predict`` of a model at ``[50, 8, 8]``: the store's voxel size and OME-NGFF
    scales per axis, on the EM's s1 grid, and the viewer opens at its centre."""
    store, _ = sstem
    network = SeededConvNet(3, width=4, seed=0, scale=4).eval()
    model = Predictor(network, "conv", "3d", (4, 8, 8), SECTION, em_range=(0.0, 255.0))
    settings = PredictionSettings(chunk_voxels=8, block_voxels=(8, 16, 16), pyramid_levels=2)
    out = tmp_path / "pred.zarr"
    predict_volume(None, store / EM_GROUP, out, settings, predictor=model)
    root = zarr.open_group(str(out), mode="r", zarr_format=2)
    assert root.attrs["cellseg"]["prediction"]["resolution_nm"] == list(SECTION)
    datasets = root["probabilities/pm"].attrs["multiscales"][0]["datasets"]
    s0_scale, s0_translation = (t[t["type"]] for t in datasets[0]["coordinateTransformations"])
    # the EM spans 0-300 x 0-128 x 0-128 nm: 6 x 16 x 16 voxels centred from (25, 4, 4), which
    # is the EM's s1
    assert s0_scale == list(SECTION) and s0_translation == [25.0, 4.0, 4.0]
    assert root["probabilities/pm/s0"].shape == (6, 16, 16)
    s1_scale, _ = (t[t["type"]] for t in datasets[1]["coordinateTransformations"])
    assert s1_scale == [100.0, 16.0, 16.0]
    sources = read_sources(out)
    assert sources.resolution_nm == SECTION
    # the centre voxel: translation + (n - 1) r / 2 per axis
    assert sources.centre_nm == (25.0 + 2.5 * 50, 4.0 + 7.5 * 8, 4.0 + 7.5 * 8)
    state = neuroglancer_state(sources, "http://localhost:1")
    assert state["crossSectionScale"] == 8.0 and state["projectionScale"] == 1024 * 50.0


def test_figures_draw_a_z_slice_pixel_y_over_x_high():
    """A z slice of voxels 8 nm in y and 4 nm in x is drawn with pixels twice as high as wide
    (cellseg.reporting.figures.pixel_aspect); isotropic pixels stay square."""

    class Model:
        resolution_nm = (50.0, 8.0, 4.0)

    assert pixel_aspect(Model()) == 2.0
    em = np.zeros((4, 6), dtype=np.float32)
    target = np.full((len(CLASS_INDEX), 4, 6), np.nan, dtype=np.float32)
    target[CLASS_INDEX["pm"]] = 0.0
    probabilities = np.zeros((len(CLASS_INDEX), 4, 6), dtype=np.float32)
    for aspect in (2.0, 1.0):
        figure = crop_panels_figure([(em, target, probabilities, "z=0")], aspect=aspect)
        assert [ax.get_aspect() for ax in figure.axes[:3]] == [aspect] * 3
        plt.close(figure)
        figure = class_panels_figure(em, target, probabilities, ["pm"], aspect=aspect)
        assert {ax.get_aspect() for ax in figure.axes if ax.images} == {aspect}
        plt.close(figure)
