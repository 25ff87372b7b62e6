from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cellseg.classes import CLASSES
from cellseg.cli import main
from cellseg.data.datasplit import format_datasplit, make_datasplit, read_datasplit, split_crops
from cellseg.data.store import Crop
from cellseg.errors import CellsegError
from store_builders import SEMANTIC


def fake_crop(index: int, classes: tuple[str, ...]) -> Crop:
    return Crop(
        Path("/d/a.zarr"),
        "recon-1/em/fibsem-uint8",
        Path("/d/a.zarr"),
        f"recon-1/labels/groundtruth/crop{index}",
        classes,
    )


def test_split_is_deterministic_and_keeps_every_class_in_train():
    rng = np.random.default_rng(0)
    crops = [
        fake_crop(i, tuple(c for c in CLASSES if rng.random() < 0.5) or ("ecs",)) for i in range(20)
    ]
    crops.append(fake_crop(20, ("nuc", "er_lum")))  # er_lum … nuc may be rare
    first = split_crops(crops, 0.15, 0.15, seed=1)
    assert [c.split for c in first] == [c.split for c in split_crops(crops, 0.15, 0.15, seed=1)]
    assert [c.split for c in first] != [c.split for c in split_crops(crops, 0.15, 0.15, seed=2)]
    counts = Counter(c.split for c in first)
    assert counts == {"train": 15, "validate": 3, "test": 3}
    annotated = {c for crop in crops for c in crop.classes}
    assert annotated <= {c for crop in first if crop.split == "train" for c in crop.classes}


def covered(crops: list[Crop], split: str) -> set[str]:
    return {c for crop in crops if crop.split == split for c in crop.classes}


def test_validation_and_test_each_cover_every_class_when_a_few_crops_hold_them():
    # three crops annotate all 14 classes, seventeen only ecs and pm: a random pick of three
    # test crops misses the rare classes for most seeds
    crops = [fake_crop(i, ("ecs", "pm")) for i in range(17)]
    crops += [fake_crop(17 + i, tuple(CLASSES)) for i in range(3)]
    full = set()
    for seed in range(10):
        split = split_crops(crops, 0.15, 0.15, seed=seed)
        assert Counter(c.split for c in split) == {"train": 14, "validate": 3, "test": 3}
        for name in ("train", "validate", "test"):
            assert covered(split, name) == set(CLASSES), (seed, name)
        full.add(next(c.crop_group for c in split if c.split == "test" and len(c.classes) == 14))
    assert len(full) >= 2, "which full crop is held out depends on the seed"


def test_classes_spread_over_many_crops_are_covered_by_taking_more_crops():
    # each crop annotates 2 of the 14 classes, each class 3 crops (21 crops): covering the 14
    # classes needs 7 crops per held-out split, more than round(0.15 * 21) = 3
    crops = [fake_crop(3 * k + j, (CLASSES[2 * k], CLASSES[2 * k + 1])) for k in range(7)
             for j in range(3)]  # fmt: skip
    for seed in range(5):
        split = split_crops(crops, 0.15, 0.15, seed=seed)
        for name in ("train", "validate", "test"):
            assert covered(split, name) == set(CLASSES), (seed, name)
        assert Counter(c.split for c in split) == {"train": 7, "validate": 7, "test": 7}


def test_with_only_two_crops_of_a_class_test_gets_it_before_validation():
    crops = [fake_crop(i, ("ecs", "pm")) for i in range(10)]
    crops += [fake_crop(10, ("ecs", "golgi_lum")), fake_crop(11, ("pm", "golgi_lum"))]
    for seed in range(5):
        split = split_crops(crops, 0.15, 0.15, seed=seed)
        assert "golgi_lum" in covered(split, "train") and "golgi_lum" in covered(split, "test")
        assert "golgi_lum" not in covered(split, "validate")
        assert Counter(c.split for c in split) == {"train": 8, "validate": 2, "test": 2}


def test_a_class_in_only_one_crop_keeps_that_crop_in_train():
    crops = [fake_crop(i, ("ecs",)) for i in range(6)] + [fake_crop(6, ("ecs", "mito_ribo"))]
    for seed in range(10):
        split = split_crops(crops, 0.3, 0.3, seed=seed)
        assert split[6].split == "train"


def test_datasplit_roundtrip_and_format(make_store, tmp_path):
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    for seed, name in enumerate(("a", "b")):
        # two datasets (different EM), three crops each 48 nm apart in x: six split units
        em = np.random.default_rng(seed).integers(0, 255, (8, 8, 32), dtype=np.uint8)
        levels = [([labels], [(8.0,) * 3], [(4.0, 4.0, 4.0 + 80 * i)], SEMANTIC) for i in range(3)]
        make_store(name, em, {f"crop{i}": {"ecs": lv, "pm": lv} for i, lv in enumerate(levels)})
    crops = make_datasplit([tmp_path / "data"], 0.2, 0.2, seed=0)
    assert len(crops) == 6
    text = format_datasplit(crops)
    line = text.splitlines()[0]
    (first,) = list(csv.reader([line]))
    assert len(first) == 5 and line.count('"') == 10, "five fields, every one quoted"
    assert first[2] == "recon-1/em/fibsem-uint8" and first[4].endswith("/[ecs,pm]")
    path = tmp_path / "split.csv"
    path.write_text(text)
    assert read_datasplit(path) == [
        Crop(
            c.em_store.resolve(),
            c.em_group,
            c.label_store.resolve(),
            c.crop_group,
            c.classes,
            c.split,
        )
        for c in crops
    ]
    assert {c.split for c in read_datasplit(path, ["test"])} == {"test"}
    assert (
        main(["datasplit", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "cli.csv")])
        == 0
    )
    assert (tmp_path / "cli.csv").read_text().count("\n") == 6


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('"train","{s}","recon-1/em/fibsem-uint8","{s}"', "expected 5 columns"),
        (
            '"training","{s}","recon-1/em/fibsem-uint8","{s}","g/crop1/[ecs]"',
            "split 'training' is not one of",
        ),
        ('"train","{s}","recon-1/em/fibsem-uint8","{s}","g/crop1"', r"must end in /\[class1"),
        (
            '"train","/nope.zarr","recon-1/em/fibsem-uint8","{s}","g/crop1/[ecs]"',
            "store /nope.zarr does not exist",
        ),
    ],
)
def test_bad_rows_give_one_line_errors(tmp_path, row, message):
    store = tmp_path / "x.zarr"
    store.mkdir()
    path = tmp_path / "bad.csv"
    path.write_text(row.format(s=store) + "\n")
    with pytest.raises(CellsegError, match=message) as error:
        read_datasplit(path)
    assert str(error.value).startswith(f"{path}:1:") and "\n" not in str(error.value)


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    assert (
        main(["datasplit", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "o.csv")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data root does not exist" in err
    assert not (tmp_path / "o.csv").exists()


def test_an_output_inside_a_data_store_is_refused(make_store, tmp_path, capsys):
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    level = ([labels], [(8.0,) * 3], [(4.0,) * 3], SEMANTIC)
    store = make_store("a", np.zeros((8, 8, 8), np.uint8), {"crop1": {"ecs": level}})
    for out in (store / "split.csv", tmp_path / "elsewhere.zarr" / "split.csv"):
        out.parent.mkdir(exist_ok=True)
        assert main(["datasplit", "--root", str(tmp_path / "data"), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "inside or over the data store" in err
        assert str(out.parent) in err and not out.exists()


@pytest.mark.parametrize(
    ("label_path", "em_group", "message"),
    [
        (
            "recon-1/labels/groundtruth/crop1/[ecs,mitochondria]",
            "recon-1/em/fibsem-uint8",
            r"column 5 \(crop/\[classes\]\) names unknown class\(es\) mitochondria; use",
        ),
        (
            "recon-1/labels/groundtruth/crop1/[ecs,pm]",
            "recon-1/em/fibsem-uint8",
            r"column 5 .* lists pm, but .*a\.zarr/recon-1/labels/groundtruth/crop1 has no such",
        ),
        (
            "recon-1/labels/groundtruth/crop7/[ecs]",
            "recon-1/em/fibsem-uint8",
            r"crop group 'recon-1/labels/groundtruth/crop7' is not a group of .*a\.zarr; fix",
        ),
        (
            "recon-1/labels/groundtruth/crop1/[ecs]",
            "recon-1/em/fibsem-uint16",
            r"column 3 \(EM group\) 'recon-1/em/fibsem-uint16' is not a group of",
        ),
    ],
)
def test_rows_naming_missing_groups_or_unknown_classes_fail_at_their_row(
    make_store, tmp_path, label_path, em_group, message
):
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    level = ([labels], [(8.0,) * 3], [(4.0,) * 3], SEMANTIC)
    store = make_store("a", np.zeros((8, 8, 8), np.uint8), {"crop1": {"ecs": level}})
    good = f'"train","{store}","recon-1/em/fibsem-uint8","{store}","recon-1/labels/groundtruth/crop1/[ecs]"'
    bad = f'"validate","{store}","{em_group}","{store}","{label_path}"'
    path = tmp_path / "user.csv"
    path.write_text(f"{good}\n{bad}\n")
    with pytest.raises(CellsegError, match=message) as error:
        read_datasplit(path, ["train"])  # a bad row is caught even outside the splits kept
    assert str(error.value).startswith(f"{path}:2: ") and "\n" not in str(error.value)
    path.write_text(f"{good}\n")
    assert [c.classes for c in read_datasplit(path)] == [("ecs",)]


def test_a_row_whose_store_is_no_zarr_store_names_the_row(tmp_path):
    store = tmp_path / "x.zarr"
    store.mkdir()
    path = tmp_path / "bad.csv"
    path.write_text(f'"train","{store}","recon-1/em/fibsem-uint8","{store}","g/crop1/[ecs]"\n')
    with pytest.raises(CellsegError, match=r":1: .*x\.zarr: not a readable zarr") as error:
        read_datasplit(path)
    assert "\n" not in str(error.value)


def test_crops_with_no_label_level_near_the_resolution_are_left_out(make_store, tmp_path):
    em = np.zeros((16, 16, 64), dtype=np.uint8)
    # four 32 nm cubes 48 nm apart along x (four split units)
    fine = [
        ([np.zeros((4, 4, 4), dtype=np.uint8)], [(8.0,) * 3], [(4.0, 4.0, 4.0 + 80 * i)], SEMANTIC)
        for i in range(4)
    ]
    # one 32 nm voxel centred 16 nm in from the EM's corner: inside the EM, 4x the resolution
    coarse = ([np.zeros((2, 2, 2), dtype=np.uint8)], [(32.0,) * 3], [(16.0,) * 3], SEMANTIC)
    crops = {f"crop{i}": {"ecs": fine[i]} for i in range(4)} | {"crop9": {"ecs": coarse}}
    make_store("a", em, crops)
    log = io.StringIO()
    kept = make_datasplit([tmp_path / "data"], 0.25, 0.25, seed=0, resolution_nm=8.0, log=log)
    assert sorted(c.crop_group.rsplit("/", 1)[1] for c in kept) == [f"crop{i}" for i in range(4)]
    (line,) = log.getvalue().splitlines()
    assert "crop9" in line and "no scale level near 8.0 nm" in line
    # without a resolution every crop is split (a 32 nm model could use it)
    assert len(make_datasplit([tmp_path / "data"], 0.25, 0.25, seed=0)) == 5
