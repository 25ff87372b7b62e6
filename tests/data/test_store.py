from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from cellseg.classes import CLASS_INDEX
from cellseg.data.dataset import FixedPatches, PatchSpec
from cellseg.data.multiscale import LabelEncoding
from cellseg.data.patches import CropReader, PatchGrid
from cellseg.data.store import Crop, discover_crops, read_crop_geometry
from cellseg.errors import CellsegError
from store_builders import INSTANCE, SEMANTIC

# EM: 8 nm voxels, first voxel centred at 4 nm, value = z + 2y + x (linear, so trilinear
# interpolation is exact anywhere inside).
EM_SHAPE = (8, 32, 32)
EM = np.fromfunction(lambda z, y, x: z + 2 * y + x, EM_SHAPE).astype(np.uint8)

# crop1 at 4 nm (s0) and 8 nm (s1); its box starts at (20, 36, 52) nm, not a multiple of 8.
S0_TRANSLATION = (22.0, 38.0, 54.0)
S1_TRANSLATION = (24.0, 40.0, 56.0)  # + half the growth of the voxel size (8 - 4) / 2
S1_SHAPE = (4, 6, 8)


def mito_levels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    s1 = rng.integers(0, 2, S1_SHAPE).astype(np.uint8)
    s1[0, 0, 0] = 255  # unknown
    s0 = s1.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    return s0, s1


def nuc_levels() -> tuple[np.ndarray, np.ndarray]:
    s1 = np.zeros(S1_SHAPE, dtype=np.uint8)
    s1[:, :3] = 3  # instance 3
    s1[:, 3:, :2] = 7  # instance 7
    s1[:, 5, 7] = 255
    return s1.repeat(2, 0).repeat(2, 1).repeat(2, 2), s1


@pytest.fixture
def store(make_store):
    mito0, mito1 = mito_levels()
    nuc0, nuc1 = nuc_levels()
    scales = [(4.0, 4.0, 4.0), (8.0, 8.0, 8.0)]
    translations = [S0_TRANSLATION, S1_TRANSLATION]
    return make_store(
        "ds1",
        EM,
        {
            "crop1": {
                "mito_mem": ([mito0, mito1], scales, translations, SEMANTIC),
                "nuc": ([nuc0, nuc1], scales, translations, INSTANCE),
            }
        },
    )


def crop_of(store) -> Crop:
    (crop,) = discover_crops(store.parent.parent)
    return crop


def test_discover_finds_crop_and_its_classes(store):
    crop = crop_of(store)
    assert crop.classes == ("mito_mem", "nuc")
    assert crop.name == "ds1/crop1"
    assert crop.label_path == "recon-1/labels/groundtruth/crop1/[mito_mem,nuc]"


def test_level_choice_and_geometry(store):
    geometry = read_crop_geometry(crop_of(store), 8.0)
    assert geometry.labels["mito_mem"].level_for(8.0).path == "s1"
    assert geometry.labels["mito_mem"].level_for(4.0).path == "s0"
    assert geometry.labels["mito_mem"].level_for(5.0).path == "s0"
    start, stop = geometry.bounds_nm
    np.testing.assert_allclose(start, [20, 36, 52])
    np.testing.assert_allclose(stop, [20 + 32, 36 + 48, 52 + 64])


def test_voxel_at_known_nm_coordinate_has_known_value(store):
    reader = CropReader(read_crop_geometry(crop_of(store), 8.0), 8.0, em_range=(0.0, 255.0))
    _, mito1 = mito_levels()
    _, nuc1 = nuc_levels()
    # a 1×4×4 grid whose points are the centres of s1 voxels z=2, y=1..4, x=3..6
    centre = np.array(
        [S1_TRANSLATION[0] + 2 * 8, S1_TRANSLATION[1] + 2.5 * 8, S1_TRANSLATION[2] + 4.5 * 8]
    )
    em, target = reader.read(PatchGrid.build(centre, (1, 4, 4), 8.0))
    mito = target[2, 0]  # mito_mem is channel 2
    np.testing.assert_array_equal(mito, mito1[2, 1:5, 3:7].astype(np.float32))
    expected_nuc = np.where(nuc1[2, 1:5, 3:7] > 0, 1.0, 0.0)
    np.testing.assert_array_equal(target[13, 0], expected_nuc)
    # every class the crop does not annotate is NaN
    others = [c for c in range(14) if c not in (2, 13)]
    assert np.isnan(target[others]).all()
    # EM is linear in the index of the 8 nm EM grid (first voxel centred at 4 nm)
    z, y, x = np.meshgrid(
        [centre[0]],
        centre[1] + np.arange(-12, 13, 8),
        centre[2] + np.arange(-12, 13, 8),
        indexing="ij",
    )
    index = [(c - 4.0) / 8.0 for c in (z, y, x)]
    np.testing.assert_allclose(em, (index[0] + 2 * index[1] + index[2]) / 255.0, atol=1e-5)


def test_outside_crop_is_nan_and_unknown_is_nan(store):
    reader = CropReader(read_crop_geometry(crop_of(store), 8.0), 8.0)
    # grid of 1×1×3 points on z, y of s1 voxel (0, 0); x = one voxel left of the crop, voxel 0, 1
    centre = np.array([S1_TRANSLATION[0], S1_TRANSLATION[1], S1_TRANSLATION[2]])
    _, target = reader.read(PatchGrid.build(centre, (1, 1, 3), 8.0))
    row = target[2, 0, 0]
    assert np.isnan(row[0]), "left of the crop is unannotated, not background"
    assert np.isnan(row[1]), "value 255 (unknown) must be NaN"
    assert row[2] == mito_levels()[1][0, 0, 1]
    assert np.isnan(target[13, 0, 0, 0]) and target[13, 0, 0, 1] == 1.0


def test_label_encoding_from_attributes():
    instance = LabelEncoding.from_attributes(
        {"cellmap": {"annotation": {"annotation_type": INSTANCE}}}, "x"
    )
    values = np.array([0, 1, 5, 254, 255])
    np.testing.assert_array_equal(instance.to_target(values), [0, 1, 1, 1, np.nan])
    semantic = LabelEncoding.from_attributes({}, "x")
    np.testing.assert_array_equal(semantic.to_target(values), [0, 1, np.nan, np.nan, np.nan])
    for encoding, expected in ((instance, [0, 1, 1, 1, np.nan]), (semantic, [0, 1] + [np.nan] * 3)):
        for dtype in (np.uint8, np.int64):  # the uint8 table and the comparisons
            np.testing.assert_array_equal(encoding.decode(values.astype(dtype)), expected)
    with pytest.raises(CellsegError, match=r"annotation_type\.type"):
        LabelEncoding.from_attributes(
            {"cellmap": {"annotation": {"annotation_type": {"type": "x"}}}}, "x"
        )


def test_missing_array_is_a_one_line_error(store):
    root = zarr.open_group(str(store), mode="a", zarr_format=2)
    del root["recon-1/labels/groundtruth/crop1/nuc/s1"]
    with pytest.raises(CellsegError) as error:
        read_crop_geometry(crop_of(store), 8.0)
    message = str(error.value)
    assert "\n" not in message and "crop1/nuc/s1" in message and "missing" in message


def test_missing_multiscales_is_a_one_line_error(store):
    root = zarr.open_group(str(store), mode="a", zarr_format=2)
    root["recon-1/em/fibsem-uint8"].attrs.put({})
    with pytest.raises(CellsegError, match="fibsem-uint8: missing 'multiscales'"):
        read_crop_geometry(crop_of(store))


def test_resolution_no_level_can_serve(make_store):
    labels = np.zeros((2, 2, 2), dtype=np.uint8)
    store = make_store(
        "coarse", EM, {"crop2": {"ecs": ([labels], [(32.0,) * 3], [(16.0,) * 3], SEMANTIC)}}
    )
    with pytest.raises(CellsegError, match=r"no scale level near 8\.0 nm"):
        read_crop_geometry(crop_of(store), 8.0)


def test_store_is_opened_read_only(store):
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    mtimes = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    spec = PatchSpec((2, 8, 8), 8.0)
    patches = FixedPatches([crop_of(store)], spec, patches_per_crop=3)
    for item in range(len(patches)):
        patches[item]
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


def test_zero_size_levels_are_never_read_and_an_empty_group_is_one_line(make_store):
    labels = np.ones((4, 4, 4), dtype=np.uint8)
    empty = np.zeros((0, 4, 4), dtype=np.uint8)
    scales = [(4.0,) * 3, (8.0,) * 3]
    translations = [S0_TRANSLATION, S1_TRANSLATION]
    store = make_store(
        "zero", EM, {"crop5": {"ecs": ([labels, empty], scales, translations, SEMANTIC)}}
    )
    geometry = read_crop_geometry(crop_of(store), 8.0)  # the 8 nm level is empty: 4 nm serves
    levels = geometry.labels["ecs"].levels
    assert [level.shape for level in levels] == [(4, 4, 4)]
    assert geometry.labels["ecs"].level_for(8.0) == levels[0]
    root = zarr.open_group(str(store), mode="a", zarr_format=2)
    root["recon-1/labels/groundtruth/crop5/ecs/s0"].resize((0, 4, 4))
    with pytest.raises(CellsegError) as error:
        read_crop_geometry(crop_of(store), 8.0)
    message = str(error.value)
    assert "\n" not in message and "crop5/ecs: every level" in message and "zero size" in message


# ------------------------------------------------------------------ damaged or inconsistent data


def corrupt(array_dir, key: str) -> None:
    """Overwrite one stored chunk with bytes no codec can decode (a broken copy)."""
    chunk = array_dir / key
    assert chunk.is_file(), chunk
    chunk.write_bytes(b"not a blosc frame" * 4)


@pytest.mark.parametrize("cache_bytes", [None, 1 << 20])
def test_corrupt_chunk_names_the_array_and_chunk(store, cache_bytes):
    from cellseg.data.patches import ArrayCache

    corrupt(store / "recon-1/labels/groundtruth/crop1/mito_mem/s1", "0.0.0")
    cache = None if cache_bytes is None else ArrayCache(cache_bytes)
    reader = CropReader(read_crop_geometry(crop_of(store), 8.0), 8.0, cache=cache)
    centre = np.array(S1_TRANSLATION) + 8.0
    with pytest.raises(CellsegError) as error:
        reader.read(PatchGrid.build(centre, (1, 2, 2), 8.0))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        f"{store}/recon-1/labels/groundtruth/crop1/mito_mem/s1: chunk (0, 0, 0)"
    )
    assert "crop1/mito_mem/s1/0.0.0" in message and "cannot be decoded" in message
    assert "download or copy the array again" in message


def test_corrupt_chunk_is_found_among_the_chunks_of_the_region(store):
    geometry = read_crop_geometry(crop_of(store), 8.0)
    corrupt(store / "recon-1/em/fibsem-uint8/s0", "0.2.1")  # voxels y 16:24, x 8:16
    array = geometry.em.open_level(geometry.em.finest)
    np.testing.assert_array_equal(array[:, :16, :], EM[:, :16, :])  # other chunks still read
    with pytest.raises(CellsegError) as error:
        array[2:5, 10:30, 0:20]
    message = str(error.value)
    assert "fibsem-uint8/s0: chunk (0, 2, 1) (file " in message
    assert "reading voxels [2:5, 10:30, 0:20]" in message and "\n" not in message
    with pytest.raises(CellsegError, match=r"reading voxels \[0:8, 0:32, 0:32\]"):
        array[...]


def test_missing_label_chunk_reads_as_the_fill_value_which_is_absent(make_store):
    # zarr skips chunks holding only the fill value (zarr-python 3's write_empty_chunks=False, as
    # cellseg's demo writes); zarr's spec reads a chunk that is not stored as the fill value, 0
    labels = np.zeros((8, 16, 16), dtype=np.uint8)
    labels[:, 8:, 8:] = 1  # one chunk of four holds the object; three hold only absent (0)
    store = make_store(
        "sparse", EM, {"crop1": {"ecs": ([labels], [(8.0,) * 3], [(4.0,) * 3], SEMANTIC)}}
    )
    array_dir = store / "recon-1/labels/groundtruth/crop1/ecs/s0"
    assert sorted(p.name for p in array_dir.iterdir() if not p.name.startswith(".")) == ["0.1.1"]
    reader = CropReader(read_crop_geometry(crop_of(store), 8.0), 8.0)
    centre = np.array([4.0 + 3.5 * 8, 4.0 + 7.5 * 8, 4.0 + 7.5 * 8])  # the crop's centre
    _, target = reader.read(PatchGrid.build(centre, (8, 16, 16), 8.0))
    ecs = target[CLASS_INDEX["ecs"]]
    np.testing.assert_array_equal(ecs, labels.astype(np.float32))  # absent (0), not unknown


def test_missing_chunk_of_a_label_array_without_fill_value_is_refused(make_store):
    labels = np.ones((8, 16, 16), dtype=np.uint8)
    store = make_store(
        "nofill", EM, {"crop1": {"ecs": ([labels], [(8.0,) * 3], [(4.0,) * 3], SEMANTIC)}}
    )
    array_dir = store / "recon-1/labels/groundtruth/crop1/ecs/s0"
    crop = crop_of(store)
    read_crop_geometry(crop, 8.0)  # a null fill value with every chunk stored is fine
    metadata = json.loads((array_dir / ".zarray").read_text())
    (array_dir / ".zarray").write_text(json.dumps({**metadata, "fill_value": None}))
    read_crop_geometry(crop, 8.0)
    (array_dir / "0.1.0").unlink()
    with pytest.raises(CellsegError) as error:
        read_crop_geometry(crop, 8.0)
    message = str(error.value)
    assert message.startswith(f"{array_dir}: 1 of 4 chunks are missing") and "\n" not in message
    assert "fill_value is null" in message and "copy the array again" in message


def test_a_level_whose_scale_disagrees_with_its_shape_is_named(make_store):
    mito0, mito1 = mito_levels()
    # s1 holds 8 nm voxels, but its scale says 4 nm: it would cover half the crop
    scales = [(4.0, 4.0, 4.0), (4.0, 4.0, 4.0)]
    store = make_store(
        "badscale",
        EM,
        {"crop1": {"mito_mem": ([mito0, mito1], scales, [S0_TRANSLATION] * 2, SEMANTIC)}},
    )
    with pytest.raises(CellsegError) as error:
        read_crop_geometry(crop_of(store), 8.0)
    message = str(error.value)
    assert message.startswith(
        f"{store}/recon-1/labels/groundtruth/crop1/mito_mem/s1: scale [4, 4, 4] nm"
    )
    assert "s1 needs voxels of [8, 8, 8] nm" in message
    assert "multiscales[0].datasets[1].coordinateTransformations" in message
    assert "\n" not in message


def test_a_crop_outside_the_em_because_of_its_scale_names_the_scale_that_fits(make_store):
    # 4 × 8 × 8 voxels of 8 nm from the EM's corner fit the 64 × 256 × 256 nm EM; written as
    # 32 nm voxels they reach 128 nm in z and 256 nm in y and x, beyond it
    labels = np.zeros((4, 8, 8), dtype=np.uint8)
    store = make_store(
        "wrongscale", EM, {"crop1": {"ecs": ([labels], [(32.0,) * 3], [(20.0,) * 3], SEMANTIC)}}
    )
    with pytest.raises(CellsegError) as error:
        read_crop_geometry(crop_of(store))
    message = str(error.value)
    assert message.startswith(
        f"{store}/recon-1/labels/groundtruth/crop1/ecs/s0: scale [32, 32, 32] nm"
    )
    assert "outside the EM volume [0, 0, 0]–[64, 256, 256] nm" in message
    # z: min(2 * 20, (64 - 20) / 3.5) = 12.57…; y, x: min(40, (256 - 20) / 7.5) = 31.47…
    assert (
        "only voxel sizes up to [12.5714, 31.4667, 31.4667] nm fit (e.g. the EM's [8, 8, 8] nm)"
        in message
    )
    assert "fix the scale in multiscales[0].datasets[0].coordinateTransformations" in message
    assert "\n" not in message


def test_crop_outside_em_volume_by_its_translation(make_store):
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    store = make_store(
        "far", EM, {"crop9": {"ecs": ([labels], [(8.0,) * 3], [(4.0, 4.0, 300.0)], SEMANTIC)}}
    )
    with pytest.raises(CellsegError) as error:
        read_crop_geometry(crop_of(store))
    message = str(error.value)
    assert "outside the EM volume" in message and "\n" not in message
    assert "its first voxel already lies outside, so no voxel size fits" in message
    assert "fix the translation in multiscales[0].datasets[0].coordinateTransformations" in message


def rewrite_units(store, unit: str, per_nm: float) -> None:
    """Every multiscale group of ``store`` rewritten with axes in ``unit`` (``per_nm`` units a
    nm): the same voxels, declared as OME-NGFF allows."""
    root = zarr.open_group(str(store), mode="r+", zarr_format=2)
    for group in ("recon-1/em/fibsem-uint8", "recon-1/labels/groundtruth/crop1/mito_mem",
                  "recon-1/labels/groundtruth/crop1/nuc"):  # fmt: skip
        node = root[group]
        multiscales = json.loads(json.dumps(node.attrs["multiscales"]))
        for axis in multiscales[0]["axes"]:
            axis["unit"] = unit
        for dataset in multiscales[0]["datasets"]:
            for transform in dataset["coordinateTransformations"]:
                key = transform["type"]
                transform[key] = [v * per_nm for v in transform[key]]
        node.attrs["multiscales"] = multiscales


@pytest.mark.parametrize(("unit", "per_nm"), [("micrometer", 1e-3), ("angstrom", 10.0)])
def test_scales_declared_in_micrometres_or_angstroms_are_read_in_nm(store, unit, per_nm):
    grid = PatchGrid.build(np.array([40.0, 60.0, 80.0]), (2, 4, 4), 8.0)
    before = CropReader(read_crop_geometry(crop_of(store), 8.0), 8.0, em_range=(0.0, 255.0))
    em, target = before.read(grid)
    rewrite_units(store, unit, per_nm)
    geometry = read_crop_geometry(crop_of(store), 8.0)
    level = geometry.labels["mito_mem"].level_for(8.0)
    assert level.path == "s1" and level.voxel_size_nm == pytest.approx((8.0, 8.0, 8.0))
    assert level.translation_nm == pytest.approx(S1_TRANSLATION)
    em_after, target_after = CropReader(geometry, 8.0, em_range=(0.0, 255.0)).read(grid)
    np.testing.assert_allclose(em_after, em, atol=1e-6)
    np.testing.assert_array_equal(target_after, target)


def test_an_unknown_axis_unit_is_one_line(store):
    rewrite_units(store, "furlong", 1.0)
    with pytest.raises(CellsegError) as error:
        read_crop_geometry(crop_of(store), 8.0)
    assert str(error.value) == (
        f"{store}/recon-1/em/fibsem-uint8: multiscales[0].axes[0].unit is 'furlong', which is no "
        "length unit cellseg knows; use an OME-NGFF length unit (nanometer, micrometer, "
        "angstrom, …) with the scales and translations in it"
    )
