"""Group labels (``mito``, …) in a crop (issue 33 item 2): discovered, listed in a datasplit,
read as group channels after the 14 with their members negative where the group is 0, and left
out of the class priors; a dataset without them reads exactly as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

from cellseg.classes import CLASS_INDEX, GROUP_INDEX, GROUPS, NUM_CLASSES, NUM_GROUPS
from cellseg.data.dataset import FixedPatches, PatchSpec, TrainPatches, decode_target
from cellseg.data.datasplit import read_datasplit, split_crops, write_datasplit
from cellseg.data.frequencies import class_frequencies
from cellseg.data.importer import import_mapping
from cellseg.data.patches import CropReader, PatchGrid
from cellseg.data.store import Crop, discover_crops, parse_label_path, read_crop_geometry
from cellseg.errors import CellsegError
from store_builders import SEMANTIC

SHAPE = (4, 8, 8)
WHOLE = np.array([4 + 8 * 1.5, 4 + 8 * 3.5, 4 + 8 * 3.5])  # the grid on the crop's voxels


def level(values: np.ndarray) -> tuple:
    return ([values.astype(np.uint8)], [(8.0,) * 3], [(4.0,) * 3], SEMANTIC)


@pytest.fixture
def group_store(make_store):
    """crop1: pm + mito (group); crop2: pm + mito_mem (fine), no group."""
    rng = np.random.default_rng(0)
    pm = (rng.random(SHAPE) < 0.2).astype(np.uint8)
    mito = (rng.random(SHAPE) < 0.4).astype(np.uint8)
    mito[:, :, :2] = 255
    mito_mem = (rng.random(SHAPE) < 0.3).astype(np.uint8)
    em = np.full((8, 16, 16), 100, dtype=np.uint8)
    crops = {
        "crop1": {"pm": level(pm), "mito": level(mito)},
        "crop2": {"pm": level(pm), "mito_mem": level(mito_mem)},
    }
    return make_store("ds", em, crops), pm, mito


def test_discovered_and_listed_in_the_datasplit(group_store, tmp_path):
    store = group_store[0]
    crops = discover_crops(store.parent.parent)
    assert [c.classes for c in crops] == [("pm", "mito"), ("pm", "mito_mem")]
    assert parse_label_path(crops[0].label_path) == (crops[0].crop_group, ("pm", "mito"))
    path = tmp_path / "datasplit.csv"
    write_datasplit(split_crops(crops, 0.0, 0.0), path)
    assert [c.classes for c in read_datasplit(path)] == [("pm", "mito"), ("pm", "mito_mem")]
    assert set(read_crop_geometry(crops[0], 8.0).labels) == {"pm", "mito"}


def test_reader_appends_groups_and_makes_members_negative_where_the_group_is_0(group_store):
    store, pm, mito = group_store
    crop = discover_crops(store.parent.parent)[0]
    geometry = read_crop_geometry(crop, 8.0)
    grid = PatchGrid.build(WHOLE, SHAPE, 8.0)
    _, target = CropReader(geometry, 8.0, groups=True).read(grid)
    assert target.shape == (NUM_CLASSES + NUM_GROUPS, *SHAPE)
    np.testing.assert_array_equal(target[CLASS_INDEX["pm"]], pm)
    group = target[NUM_CLASSES + GROUP_INDEX["mito"]]
    np.testing.assert_array_equal(group, np.where(mito == 255, np.nan, mito))
    for member in GROUPS["mito"]:
        # 0 where the group is 0; unknown where it is 1 (no fine label invented) or 255
        np.testing.assert_array_equal(target[CLASS_INDEX[member]], np.where(mito == 0, 0.0, np.nan))
    others = [NUM_CLASSES + GROUP_INDEX[g] for g in GROUP_INDEX if g != "mito"]
    assert np.isnan(target[others]).all() and np.isnan(target[CLASS_INDEX["er_mem"]]).all()
    # compact form decodes to the same target; infer_true_negatives leaves group positives alone
    _, compact = CropReader(geometry, 8.0, groups=True).read(grid, compact=True)
    torch.testing.assert_close(
        decode_target(torch.from_numpy(compact)), torch.from_numpy(target), equal_nan=True
    )
    _, inferred = CropReader(geometry, 8.0, infer_true_negatives=True, groups=True).read(grid)
    inside = (mito == 1) & (pm == 0)
    assert np.isnan(inferred[CLASS_INDEX["mito_mem"]][inside]).all()
    assert (inferred[CLASS_INDEX["pm"]][inside] == 0).all()  # pm was annotated 0 there anyway
    assert (inferred[CLASS_INDEX["er_mem"]][mito == 1] == 0).all()
    # pm (in no group) is 1: every unknown group is 0 there, the unknown mito strip included
    er = inferred[NUM_CLASSES + GROUP_INDEX["er"]]
    assert (er[(pm == 1) | (mito == 1)] == 0).all() and np.isnan(er[(pm == 0) & (mito != 1)]).all()
    strip = inferred[NUM_CLASSES + GROUP_INDEX["mito"]][:, :, :2]
    np.testing.assert_array_equal(strip, np.where(pm[:, :, :2] == 1, 0.0, np.nan))


def test_without_groups_the_reader_and_datasets_are_unchanged(group_store):
    store = group_store[0]
    fine = discover_crops(store.parent.parent)[1]
    spec = PatchSpec((4, 8, 8), 8.0)
    plain = TrainPatches([fine], spec, seed=1)
    assert not plain.groups and plain[0]["target"].shape == (NUM_CLASSES, *SHAPE)
    # a group crop read without groups (e.g. for a figure): its group array is not read
    crop = discover_crops(store.parent.parent)[0]
    _, target = CropReader(read_crop_geometry(crop, 8.0), 8.0).read(
        PatchGrid.build(WHOLE, SHAPE, 8.0)
    )
    assert target.shape == (NUM_CLASSES, *SHAPE)
    assert np.isnan(target[CLASS_INDEX["mito_mem"]]).all()


def test_datasets_with_a_group_crop_carry_group_channels_for_every_crop(group_store):
    store = group_store[0]
    crops = discover_crops(store.parent.parent)
    spec = PatchSpec((4, 8, 8), 8.0)
    train = TrainPatches(crops, spec, seed=1)
    assert train.groups
    shapes = {tuple(train[i]["target"].shape) for i in range(6)}
    assert shapes == {(NUM_CLASSES + NUM_GROUPS, *SHAPE)}
    fixed = FixedPatches(crops, spec, patches_per_crop=1)
    assert fixed[1]["target"].shape == (NUM_CLASSES + NUM_GROUPS, *SHAPE)
    # crop2 holds no group label: its group channels are unknown
    assert torch.isnan(fixed[1]["target"][NUM_CLASSES:]).all()


def test_a_group_label_gives_its_members_no_prior(group_store):
    store, pm, _ = group_store
    crops = discover_crops(store.parent.parent)
    result = class_frequencies([crops[0]], 8.0, allow_missing_classes=True)
    per_class = result["per_class"]
    assert set(per_class) == set(CLASS_INDEX)  # no group entry
    assert per_class["pm"]["positive_voxels"] == np.sum(pm == 1)
    for member in GROUPS["mito"]:
        assert per_class[member]["crops"] == 0
        assert per_class[member]["prior_source"].startswith("imputed")
    # with a crop annotating mito_mem finely, mito_mem's prior is that crop's alone
    both = class_frequencies(crops, 8.0, allow_missing_classes=True)["per_class"]
    assert both["mito_mem"]["crops"] == 1
    assert both["mito_lum"]["prior_source"].startswith("imputed")


def test_the_frequency_file_records_group_counts_and_the_trained_classes(group_store):
    store, _, mito = group_store
    crops = discover_crops(store.parent.parent)
    result = class_frequencies([crops[0]], 8.0, allow_missing_classes=True)
    # mito's members train through the group label: trained, though none has a prior
    assert result["trained_classes"] == ["pm", *GROUPS["mito"]]
    assert result["per_group"] == {
        "mito": {"annotated_voxels": float(np.sum(mito != 255)), "crops": 1}
    }
    # without a group label: no per_group entry, and the fine labels alone
    alone = class_frequencies([crops[1]], 8.0, allow_missing_classes=True)
    assert "per_group" not in alone and alone["trained_classes"] == ["pm", "mito_mem"]


def test_unknown_names_still_refused(group_store):
    store = group_store[0]
    crop = discover_crops(store.parent.parent)[0]
    bad = Crop(crop.em_store, crop.em_group, crop.label_store, crop.crop_group, ("mitochondria",))
    with pytest.raises(Exception, match=r"unknown class .mitochondria.*groups: mito"):
        read_crop_geometry(bad, 8.0)


def test_import_writes_a_group_mask_and_contested_voxels_as_unknown(tmp_path):
    em = np.zeros((3, 4, 5), dtype=np.uint8)
    mito = np.zeros((3, 4, 5), dtype=np.uint8)
    mito[:, :2, :2] = 1
    pm = np.zeros((3, 4, 5), dtype=np.uint8)
    pm[:, :, 1] = 1  # crosses mito at x = 1, y < 2: both claim those 6 voxels
    for name, array in (("em", em), ("mito", mito), ("pm", pm)):
        np.save(tmp_path / f"{name}.npy", array)
    labels = {"kind": "masks", "masks": {"pm": {"path": "pm.npy"}, "mito": {"path": "mito.npy"}}}
    dataset = {"name": "toy", "em": {"path": "em.npy"}, "voxel_size_nm": [8, 8, 8]}
    mapping = tmp_path / "mapping.yaml"

    def write(labels: dict) -> Path:
        mapping.write_text(yaml.safe_dump({"datasets": [{**dataset, "labels": labels}]}))
        return mapping

    with pytest.raises(CellsegError, match=r"6 voxels also lie.*labels.overlap: unknown"):
        import_mapping(write(labels), tmp_path / "refused")
    (store,) = import_mapping(write({**labels, "overlap": "unknown"}), tmp_path / "out")
    group = zarr.open_group(str(store), mode="r")["recon-1/labels/groundtruth/crop1"]
    contested = (mito == 1) & (pm == 1)
    np.testing.assert_array_equal(group["mito/s0"][...], np.where(contested, 255, mito))
    np.testing.assert_array_equal(group["pm/s0"][...], np.where(contested, 255, pm))
    # `all` holds CellMap ids of fine classes only: 0 on a mitochondrion, pm's id 2 on pm
    np.testing.assert_array_equal(
        group["all/s0"][...], np.where(contested, 255, np.where(pm == 1, 2, 0))
    )
    assert group["all"].attrs["cellseg"]["class_ids"] == {"pm": 2}
    assert group["mito"].attrs["cellmap"]["annotation"]["class_name"] == "mito"
    (crop,) = discover_crops(tmp_path / "out")
    assert crop.classes == ("pm", "mito")
