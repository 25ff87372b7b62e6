"""Split units (issue 32): crops that overlap, touch, lie within the margin, or are copies of one
another under another name or root, share a split; a user CSV that splits them is refused."""

from __future__ import annotations

import io
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zarr

from cellseg.classes import CLASSES
from cellseg.cli import main
from cellseg.data.datasplit import make_datasplit, split_crops
from cellseg.data.split_units import (
    CropBox,
    em_fingerprint,
    gap_nm,
    linked,
    overlap_nm,
    place_crops,
    split_units,
)
from cellseg.data.store import Crop
from cellseg.errors import CellsegError
from store_builders import SEMANTIC, write_multiscale

EM_GROUP = "recon-1/em/fibsem-uint8"
GT = "recon-1/labels/groundtruth"


def box(name: str, start: tuple, stop: tuple, dataset: str = "d", classes=("ecs",)) -> CropBox:
    store = Path(f"/data/{dataset}/{dataset}.zarr")
    crop = Crop(store, EM_GROUP, store, f"{GT}/{name}", tuple(classes))
    return CropBox(crop, dataset, tuple(map(float, start)), tuple(map(float, stop)))


# ------------------------------------------------------------------ geometry, by hand


def test_overlap_touch_margin_and_nesting_by_hand():
    a = box("a", (0, 0, 0), (100, 100, 100))
    overlapping = box("b", (50, 0, 0), (150, 100, 100))
    touching = box("c", (100, 0, 0), (200, 100, 100))
    apart = box("e", (0, 140, 0), (100, 240, 100))  # 40 nm from a along y
    nested = box("f", (10, 20, 30), (20, 40, 60))
    assert gap_nm(a, overlapping) == -50.0 and linked(a, overlapping)
    assert overlap_nm(a, overlapping).tolist() == [50.0, 100.0, 100.0]
    assert gap_nm(a, touching) == 0.0 and linked(a, touching)
    assert overlap_nm(a, touching).tolist() == [0.0, 0.0, 0.0]
    assert gap_nm(a, apart) == 40.0
    assert not linked(a, apart) and not linked(a, apart, 39.0)
    assert linked(a, apart, 40.0) and linked(a, apart, 100.0)
    assert linked(a, nested) and overlap_nm(a, nested).tolist() == [10.0, 20.0, 30.0]
    # the same box in another dataset (another EM) shares nothing
    assert not linked(a, box("g", (0, 0, 0), (100, 100, 100), dataset="other"))
    # a diagonal neighbour 40 nm off along y and x is 40 nm away (largest per-axis gap)
    assert gap_nm(a, box("h", (0, 140, 140), (100, 200, 200))) == 40.0


def test_units_are_connected_components_of_linked_crops():
    # a–b overlap, b–c touch, a and c share nothing: one unit of three; d stands apart
    # (60 nm), e is another dataset on a's box
    boxes = [
        box("a", (0, 0, 0), (100, 100, 100)),
        box("d", (0, 0, 400), (100, 100, 500)),
        box("b", (0, 0, 80), (100, 100, 180)),
        box("c", (0, 0, 180), (100, 100, 280)),
        box("e", (0, 0, 0), (100, 100, 100), dataset="other"),
    ]
    assert split_units(boxes) == [[0, 2, 3], [1], [4]]
    assert split_units(boxes, margin_nm=119.0) == [[0, 2, 3], [1], [4]]
    assert split_units(boxes, margin_nm=120.0) == [[0, 1, 2, 3], [4]]
    assert split_units(boxes, split_by="dataset") == [[0, 1, 2, 3], [4]]
    with pytest.raises(CellsegError, match=r"data.split_by = 'cell': choose one of crop, dataset"):
        split_units(boxes, split_by="cell")
    with pytest.raises(CellsegError, match=r"data.split_margin_nm = -1.0: must be a number >= 0"):
        split_units(boxes, margin_nm=-1.0)


def test_split_crops_assigns_units_whole_and_singletons_as_before():
    rng = np.random.default_rng(0)
    classes = [[c for c in CLASSES if rng.random() < 0.5] or ["ecs"] for _ in range(20)]
    crops = [box(f"crop{i}", (0, 0, 0), (1, 1, 1), classes=classes[i]).crop for i in range(20)]
    singletons = [[i] for i in range(20)]
    for seed in range(5):
        assert split_crops(crops, 0.15, 0.25, seed) == split_crops(
            crops, 0.15, 0.25, seed, singletons
        )
    units = [[0, 1, 2], [3, 4], *([i] for i in range(5, 20))]
    for seed in range(10):
        split = split_crops(crops, 0.15, 0.25, seed, units)
        for unit in units:
            assert len({split[i].split for i in unit}) == 1, (seed, unit)
        annotated = {c for crop in crops for c in crop.classes}
        assert annotated <= {c for crop in split if crop.split == "train" for c in crop.classes}
        assert Counter(c.split for c in split)["test"] >= 1
    with pytest.raises(ValueError, match="every crop index exactly once"):
        split_crops(crops, 0.15, 0.25, 0, [[0, 1]])


# ------------------------------------------------------------------ stores: copies, datasets


def write_dataset(make_store, name: str, seed: int, places: dict[str, tuple]) -> Path:
    """A store ``name`` with random EM (seed) of 10 × 50 × 90 voxels at 32 nm (a 320 × 1600 ×
    2880 nm box from 0) and one crop per ``places`` entry: ``{crop: (start_nm, shape)}`` at
    32 nm, annotating ecs and pm."""
    em = np.random.default_rng(seed).integers(0, 255, (10, 50, 90), dtype=np.uint8)
    crops = {}
    for crop, (start, shape) in places.items():
        translation = tuple(s + 16.0 for s in start)  # centre of the first 32 nm voxel
        labels = np.zeros(shape, dtype=np.uint8)
        labels[: shape[0] // 2] = 1
        level = ([labels], [(32.0,) * 3], [translation], SEMANTIC)
        crops[crop] = {"ecs": level, "pm": ([1 - labels], [(32.0,) * 3], [translation], SEMANTIC)}
    return make_store(name, em, crops, em_voxel=(32.0,) * 3, em_translation=(16.0,) * 3)


SIX_APART = {f"crop{i}": ((0.0, 0.0, 448.0 * i), (2, 8, 8)) for i in range(6)}
"""Six 64 × 256 × 256 nm crops, 192 nm apart along x: six split units."""


def test_a_renamed_copy_under_a_second_root_is_one_dataset_with_the_original(make_store, tmp_path):
    original = write_dataset(make_store, "jrc_x", 0, SIX_APART)
    copy = tmp_path / "v2" / "jrc_x_v2" / "jrc_x_v2.zarr"
    shutil.copytree(original, copy)
    other = write_dataset(make_store, "jrc_y", 1, SIX_APART)
    assert em_fingerprint(original, EM_GROUP) == em_fingerprint(copy, EM_GROUP)
    assert em_fingerprint(original, EM_GROUP) != em_fingerprint(other, EM_GROUP)
    crops = make_datasplit([tmp_path / "data", tmp_path / "v2"], 0.15, 0.25, seed=3)
    assert len(crops) == 18
    split = {c.name: c.split for c in crops}
    for i in range(6):  # every copied crop is in its original's split
        assert split[f"jrc_x_v2/crop{i}"] == split[f"jrc_x/crop{i}"], split
    assert set(split.values()) == {"train", "validate", "test"}
    boxes, problems = place_crops(crops)
    assert not problems
    units = split_units([b for b in boxes if b is not None])
    assert sorted(len(u) for u in units) == [1] * 6 + [2] * 6


def test_split_by_dataset_holds_out_whole_datasets_and_their_copies(make_store, tmp_path, capsys):
    for seed, name in enumerate(("jrc_a", "jrc_b", "jrc_c", "jrc_d")):
        write_dataset(make_store, name, seed, SIX_APART)
    shutil.copytree(tmp_path / "data" / "jrc_a", tmp_path / "v2" / "jrc_a_v2")
    (tmp_path / "v2" / "jrc_a_v2" / "jrc_a.zarr").rename(
        tmp_path / "v2" / "jrc_a_v2" / "jrc_a_v2.zarr"
    )
    roots = [tmp_path / "data", tmp_path / "v2"]
    for seed in range(4):
        crops = make_datasplit(roots, 0.15, 0.25, seed=seed, split_by="dataset")
        by_dataset: dict[str, set[str]] = {}
        for crop in crops:
            dataset = crop.label_store.stem.removesuffix("_v2")  # a copy is its original
            by_dataset.setdefault(dataset, set()).add(crop.split)
        assert all(len(splits) == 1 for splits in by_dataset.values()), by_dataset
        assert sorted(s for (s,) in by_dataset.values()).count("train") == 2
        assert {s for (s,) in by_dataset.values()} == {"train", "validate", "test"}
    # two datasets (a copy counts once) cannot fill train, validate and test
    shutil.rmtree(tmp_path / "data" / "jrc_c")
    shutil.rmtree(tmp_path / "data" / "jrc_d")
    with pytest.raises(CellsegError) as error:
        make_datasplit(roots, 0.15, 0.25, seed=0, split_by="dataset")
    assert str(error.value) == (
        f"{roots[0]}, {roots[1]}: data.split_by is dataset (whole datasets held out), but the "
        "crops are of 2 dataset(s) (jrc_a, jrc_b; a copy of a dataset counts as that dataset), "
        "and train, validate and test need 3: add datasets, or set data.split_by: crop"
    )
    # through the command: one line, the output untouched
    out = tmp_path / "split.csv"
    args = ["datasplit", "--root", str(roots[0]), "--out", str(out), "--split-by", "dataset"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "data.split_by is dataset" in err and not out.exists()


def test_overlapping_crops_are_split_together_and_the_log_says_so(make_store, tmp_path):
    places = dict(SIX_APART)
    places["crop6"] = ((0.0, 128.0, 448.0 * 5 + 128.0), (2, 8, 8))  # overlaps crop5
    write_dataset(make_store, "jrc_x", 0, places)
    log = io.StringIO()
    for seed in range(6):
        crops = make_datasplit([tmp_path / "data"], 0.15, 0.25, seed=seed, log=log)
        split = {c.name: c.split for c in crops}
        assert split["jrc_x/crop5"] == split["jrc_x/crop6"]
    assert log.getvalue().splitlines()[0] == (
        "one split unit: jrc_x/crop5, jrc_x/crop6 (crops of one EM, copies included, whose boxes "
        "overlap, touch or lie within data.split_margin_nm = 0 nm share a split)"
    )


# ------------------------------------------------------------------ a user's CSV, refused


def row(split: str, store: Path, crop: str) -> str:
    return f'"{split}","{store}","{EM_GROUP}","{store}","{GT}/{crop}/[ecs,pm]"\n'


def test_a_user_csv_splitting_overlapping_touching_near_or_copied_crops_is_refused(
    make_store, tmp_path, capsys
):
    # crop24 (192 × 1024 × 1024 nm from 0) and crop25 (from (96, 256, 512) nm) overlap by
    # 96 × 768 × 512 nm: 37 748 736 of crop24's 201 326 592 nm³, 18.75 % (equal volumes)
    places = {
        "crop23": ((0.0, 1408.0, 0.0), (2, 2, 2)),  # far from the others
        "crop24": ((0.0, 0.0, 0.0), (6, 32, 32)),
        "crop25": ((96.0, 256.0, 512.0), (6, 32, 32)),
        "crop26": ((96.0, 256.0, 1536.0), (2, 8, 8)),  # touches crop25 (x 512 + 1024 = 1536)
        "crop27": ((96.0, 256.0, 1792.0), (2, 8, 8)),  # touches crop26 (x 1536 + 256 = 1792)…
        "crop28": ((96.0, 256.0, 2112.0), (2, 8, 8)),  # …and this one is 64 nm from crop27
    }
    store = write_dataset(make_store, "jrc_x", 0, places)
    copy = tmp_path / "v2" / "jrc_x_v2" / "jrc_x_v2.zarr"
    shutil.copytree(store, copy)
    csv = tmp_path / "datasplit.csv"
    csv.write_text(
        row("train", store, "crop23")
        + row("validate", store, "crop25")
        + row("test", store, "crop24")  # row 3: overlaps crop25
        + row("test", store, "crop26")  # row 4: touches crop25
        + row("train", store, "crop27")  # row 5: touches crop26 (test)
        + row("test", store, "crop28")  # row 6: 64 nm from crop27: refused at a 64 nm margin
        + row("test", copy, "crop23")  # row 7: a copy of crop23 (train)
    )
    out = tmp_path / "out.csv"
    assert main(["datasplit", "--from-csv", str(csv), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == f"cellseg datasplit: error: {csv}: 4 problems, one per line:"
    assert lines[1:] == [
        f"{csv}:3: jrc_x/crop24 (test) overlaps jrc_x/crop25 (validate) by 96×768×512 nm "
        "(19 % of crop24): put them in one split",
        f"{csv}:4: jrc_x/crop26 (test) touches jrc_x/crop25 (validate) (0 nm apart): put them "
        "in one split",
        f"{csv}:5: jrc_x/crop27 (train) touches jrc_x/crop26 (test) (0 nm apart): put them in "
        "one split",
        f"{csv}:7: jrc_x_v2/crop23 (test) is a copy of jrc_x/crop23 (train): the same box in "
        "identical EM (jrc_x_v2 and jrc_x: one dataset under two names or roots): put them in "
        "one split",
    ]
    assert not out.exists()
    # a 64 nm margin also refuses crop28, 64 nm from crop27 (a 63 nm margin does not)
    args = ["datasplit", "--from-csv", str(csv), "--out", str(out), "--split-margin-nm"]
    assert main([*args, "63"]) == 2
    assert "crop28" not in capsys.readouterr().err
    assert main([*args, "64"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "crop28" in line]
    assert line == (
        f"{csv}:6: jrc_x/crop28 (test) lies 64 nm from jrc_x/crop27 (train) "
        "(data.split_margin_nm = 64): put them in one split"
    )


def test_a_user_csv_spreading_a_dataset_is_refused_with_split_by_dataset(
    make_store, tmp_path, capsys
):
    a = write_dataset(make_store, "jrc_a", 0, SIX_APART)
    b = write_dataset(make_store, "jrc_b", 1, SIX_APART)
    c = write_dataset(make_store, "jrc_c", 2, SIX_APART)
    csv = tmp_path / "datasplit.csv"
    csv.write_text(
        row("train", a, "crop0")
        + row("train", a, "crop1")
        + row("validate", b, "crop0")
        + row("test", c, "crop0")
        + row("test", a, "crop2")  # jrc_a in train and test
    )
    out = tmp_path / "out.csv"
    assert main(["datasplit", "--from-csv", str(csv), "--out", str(out)]) == 0
    args = ["datasplit", "--from-csv", str(csv), "--out", str(out), "--split-by", "dataset"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"cellseg datasplit: error: {csv}:1: dataset jrc_a has crops in test, train, but "
        "data.split_by is dataset (whole datasets held out): put all its crops, and its copies', "
        "in one split, or set data.split_by: crop"
    )


def test_the_em_fingerprint_reads_voxels_not_chunk_files_nor_names(tmp_path):
    em = np.random.default_rng(0).integers(0, 255, (8, 16, 16), dtype=np.uint8)

    def store(name: str, chunks: tuple, translation: float = 4.0, data=em) -> Path:
        path = tmp_path / name / f"{name}.zarr"
        root = zarr.open_group(str(path), mode="w", zarr_format=2)
        write_multiscale(root, EM_GROUP, [data], [(8.0,) * 3], [(translation,) * 3], chunks=chunks)
        return path

    original = em_fingerprint(store("a", (8, 8, 8)), EM_GROUP)
    assert em_fingerprint(store("b", (4, 16, 2)), EM_GROUP) == original  # re-chunked copy
    assert em_fingerprint(store("c", (8, 8, 8), translation=12.0), EM_GROUP) != original
    changed = em.copy()
    changed[4, 8, 8] ^= 1  # one voxel of the central block
    assert em_fingerprint(store("d", (8, 8, 8), data=changed), EM_GROUP) != original
