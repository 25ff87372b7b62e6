"""The embedded demo generator writes valid CellMap-layout stores (read back with plain zarr/json)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from cellseg.classes import CLASSES
from cellseg.cli import build_parser
from cellseg.data.datasplit import SPLITS, make_datasplit, split_crops
from cellseg.data.demo import (
    MARKER_NAME,
    SIZES,
    code_to_class_index,
    make_demo_data,
    plan_layout,
)
from cellseg.data.frequencies import class_frequencies
from cellseg.data.split_units import CropBox, gap_nm, split_units
from cellseg.data.store import Crop, discover_crops, read_crop_geometry
from cellseg.errors import CellsegError

pytestmark = pytest.mark.minutes(1.5)  # order: tests/conftest.py

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "config.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

EM = "recon-1/em/fibsem-uint8"
GT = "recon-1/labels/groundtruth"
MEMBRANE_LUMEN = [
    ("mito_mem", "mito_lum"),
    ("golgi_mem", "golgi_lum"),
    ("ves_mem", "ves_lum"),
    ("endo_mem", "endo_lum"),
    ("er_mem", "er_lum"),
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("demo")
    started = time.perf_counter()
    stores = make_demo_data(out, seed=0, size="small")
    print(f"\nsmall demo generated in {time.perf_counter() - started:.1f} s")
    return out, stores


def attrs(path: Path) -> dict:
    return json.loads((path / ".zattrs").read_text())


def transforms(group: Path) -> list[tuple[list[float], list[float]]]:
    (multiscale,) = attrs(group)["multiscales"]
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    assert {a["unit"] for a in multiscale["axes"]} == {"nanometer"}
    out = []
    for index, dataset in enumerate(multiscale["datasets"]):
        assert dataset["path"] == f"s{index}"
        scale, translation = dataset["coordinateTransformations"]
        assert scale["type"] == "scale" and translation["type"] == "translation"
        out.append((scale["scale"], translation["translation"]))
    return out


def crops(stores: list[Path]) -> list[tuple[Path, Path]]:
    """(store, crop group directory) for every crop, found by listing directories."""
    return [(s, c) for s in stores for c in sorted((s / GT).iterdir()) if c.is_dir()]


def annotated(crop: Path) -> list[str]:
    return sorted(p.name for p in crop.iterdir() if p.is_dir() and p.name != "all")


def read(path: Path) -> np.ndarray:
    return zarr.open_array(path, mode="r")[...]


def test_stores_are_zarr_v2_with_a_three_level_em_pyramid(demo):
    out, stores = demo
    assert len(stores) >= 3
    for store in stores:
        assert store == out / store.parent.name / f"{store.parent.name}.zarr"
        assert json.loads((store / ".zgroup").read_text())["zarr_format"] == 2
        assert (store / "recon-1" / ".zgroup").is_file()
        levels = transforms(store / EM)
        assert [s for s, _ in levels] == [[8.0] * 3, [16.0] * 3, [32.0] * 3]
        # translation = centre of the first voxel; level k shifted by half the growth
        assert [t for _, t in levels] == [[0.0] * 3, [4.0] * 3, [12.0] * 3]
        shapes = []
        for level in range(3):
            meta = json.loads((store / EM / f"s{level}" / ".zarray").read_text())
            assert meta["zarr_format"] == 2 and meta["dtype"] == "|u1"
            assert meta["compressor"]["id"] == "blosc"
            shapes.append(meta["shape"])
        assert shapes[1] == [n // 2 for n in shapes[0]] and shapes[2] == [n // 4 for n in shapes[0]]
        em = read(store / EM / "s0")
        assert em.std() > 10  # not a constant


def test_every_label_group_is_cellmap_encoded(demo):
    _, stores = demo
    for _, crop in crops(stores):
        assert (crop / "all" / "s0" / ".zarray").is_file()
        names = annotated(crop)
        assert names and set(names) <= set(CLASSES)
        class_ids = attrs(crop / "all")["cellseg"]["class_ids"]
        assert set(class_ids) == set(names)
        base = transforms(crop / "all")
        assert len(base) >= 2
        for name in names:
            annotation = attrs(crop / name)["cellmap"]["annotation"]
            assert annotation["class_name"] == name
            kind = annotation["annotation_type"]
            if name == "nuc":
                assert kind == {
                    "type": "instance_segmentation",
                    "encoding": {"absent": 0, "unknown": 255},
                }
            else:
                assert kind == {
                    "type": "semantic_segmentation",
                    "encoding": {"absent": 0, "present": 1, "unknown": 255},
                }
            levels = transforms(crop / name)
            assert levels == base
            s0_scale, s0_translation = levels[0]
            for k, (scale, translation) in enumerate(levels):
                assert scale == [v * 2**k for v in s0_scale]
                expected = [
                    t + (s - v) / 2 for t, s, v in zip(s0_translation, scale, s0_scale, strict=True)
                ]
                assert translation == pytest.approx(expected)
            shape0 = read(crop / name / "s0").shape
            assert read(crop / name / "s1").shape == tuple(n // 2 for n in shape0)


def test_resolutions_translations_and_placement(demo):
    _, stores = demo
    resolutions, residues = set(), set()
    for store, crop in crops(stores):
        em_shape = np.array(read(store / EM / "s0").shape)
        (voxel, *_), translation = transforms(crop / "all")[0]
        resolutions.add(voxel)
        shape = np.array(read(crop / "all" / "s0").shape)
        lower = np.array(translation) - voxel / 2
        upper = lower + shape * voxel
        # the crop lies inside the EM volume (EM voxel 0 spans -4..4 nm) ...
        assert (lower >= -4).all() and (upper <= em_shape * 8 - 4).all(), crop
        # ... and its voxels land on whole voxels of its own resolution's grid
        assert ((lower + 4) % min(voxel, 8.0) == 0).all(), (crop, translation)
        residues.update(t % 8 for t in translation)
        assert any(t != 0 for t in translation)
    assert {4.0, 8.0} <= resolutions and max(resolutions) >= 16.0
    # 4 nm crops both on the EM s0 grid (≡ 6: their s1 matches EM s0) and off it (≡ 2)
    assert {2.0, 6.0} <= residues


def test_partial_annotation_unknown_and_instances(demo):
    _, stores = demo
    subsets = [frozenset(annotated(crop)) for _, crop in crops(stores)]
    assert len(set(subsets)) >= 4
    assert frozenset(CLASSES) in subsets
    per_class = {name: sum(name in s for s in subsets) for name in CLASSES}
    # as in the real data some classes are annotated by few crops (Golgi: under half), but each
    # by at least three, so that train, validate and test can each annotate every class
    assert min(per_class.values()) >= 3, per_class
    assert min(per_class.values()) <= len(subsets) // 2, per_class

    unknown_crops = 0
    nuc_ids: set[int] = set()
    for _, crop in crops(stores):
        everything = read(crop / "all" / "s0")
        class_ids = attrs(crop / "all")["cellseg"]["class_ids"]
        unknown = everything == 255
        unknown_crops += bool(unknown.any())
        for name in annotated(crop):
            data = read(crop / name / "s0")
            assert data.shape == everything.shape
            # unknown is unknown in every array of the crop; elsewhere `all` and the class agree
            np.testing.assert_array_equal(data == 255, unknown)
            present = (data != 0) & ~unknown
            np.testing.assert_array_equal(present, everything == class_ids[name])
            if name == "nuc":
                assert data.dtype == np.uint16
                nuc_ids.update(np.unique(data[present]).tolist())
            else:
                assert set(np.unique(data).tolist()) <= {0, 1, 255}
        if unknown.any():
            # a coarser level keeps the unknown region unknown
            assert (read(crop / "all" / "s1") == 255).any()
    assert unknown_crops >= 2
    assert max(nuc_ids) > 1


def default_crops(root: Path) -> list[Crop]:
    """The crops, each with its split, as the workflow's datasplit rule splits the demo by
    default."""
    data = yaml.safe_load(CONFIG.read_text())["data"]
    return make_datasplit([root], data["validate_fraction"], data["test_fraction"],
                          data["split_seed"], margin_nm=data["split_margin_nm"],
                          split_by=data["split_by"])  # fmt: skip


def default_split(root: Path) -> dict[str, list[str]]:
    """Crop names per split, as the workflow's datasplit rule splits the demo by default."""
    crops = default_crops(root)
    return {split: [c.name for c in crops if c.split == split] for split in SPLITS}


def planned_split(size: str) -> tuple[list[CropBox], list[list[int]]]:
    """The demo of ``size`` (seed 0) as the default datasplit would split it, from its plan alone
    (no voxel written): every crop's box in nm, in the order the datasplit discovers the crops
    (stores, then crop groups, sorted by name), with its split; and the split units."""
    data = yaml.safe_load(CONFIG.read_text())["data"]
    boxes = []
    for plan in sorted(plan_layout(seed=0, size=size), key=lambda p: p.name):
        store = Path("/demo") / plan.name / f"{plan.name}.zarr"
        for c in sorted(plan.crops, key=lambda c: c.spec.name):
            lower, upper = crop_box_nm(c.spec.voxel_size_nm, c.translation_nm, c.shape)
            classes = tuple(name for name in CLASSES if name in c.spec.classes)
            crop = Crop(store, EM, store, f"{GT}/{c.spec.name}", classes)
            boxes.append(CropBox(crop, plan.name, tuple(lower), tuple(upper)))
    units = split_units(boxes, data["split_margin_nm"], data["split_by"])
    crops = split_crops([b.crop for b in boxes], data["validate_fraction"],
                        data["test_fraction"], data["split_seed"], units)  # fmt: skip
    return [replace(b, crop=c) for b, c in zip(boxes, crops, strict=True)], units


def test_default_demo_test_crops_share_no_voxel_with_training_or_validation():
    """The default demo's planned crops and split (issue 32): every crop is its own split unit,
    no test crop's box overlaps or touches a train or validate crop's box in its dataset, at
    least 7 test crops, and every split annotates every class."""
    boxes, units = planned_split("default")
    assert len(boxes) == 28 and units == [[i] for i in range(28)]
    by_split = {s: [b for b in boxes if b.crop.split == s] for s in SPLITS}
    assert len(by_split["test"]) >= 7, {s: len(v) for s, v in by_split.items()}
    for split, members in by_split.items():
        assert set().union(*(b.crop.classes for b in members)) == set(CLASSES), split
    for test in by_split["test"]:
        for seen in by_split["train"] + by_split["validate"]:
            if seen.dataset == test.dataset:
                # 8 nm or more between the boxes along some axis (gap_em 2 of pack: 16 nm)
                assert gap_nm(test, seen) >= 8.0, (test.crop.name, seen.crop.name)
    # the split itself: 17 / 4 / 7 crops, test crops from every dataset
    assert {s: len(v) for s, v in by_split.items()} == {"train": 17, "validate": 4, "test": 7}
    assert {b.dataset for b in by_split["test"]} == {f"jrc_demo-{i}" for i in range(1, 5)}


def test_small_demo_crops_are_split_units_of_their_own_and_train_holds_every_class():
    boxes, units = planned_split("small")
    assert units == [[i] for i in range(len(boxes))]
    train = {c for b in boxes if b.crop.split == "train" for c in b.crop.classes}
    assert train == set(CLASSES)


def test_a_demo_run_trains_all_fourteen_classes(demo):
    """The class frequencies of the demo's training crops record all 14 as trained, so nothing
    of the demo's evaluation, predictions or figures is left out (issue 33)."""
    train = [c for c in default_crops(demo[0]) if c.split == "train"]
    assert class_frequencies(train, 8.0)["trained_classes"] == list(CLASSES)


def test_default_split_annotates_every_class_in_every_split(demo):
    out, stores = demo
    names = {f"{s.stem}/{c.name}": set(annotated(c)) for s, c in crops(stores)}
    assert len(names) >= 24 and len(stores) >= 3
    split = default_split(out)
    assert min(len(v) for v in split.values()) >= 4, split
    for members in split.values():
        assert set().union(*(names[m] for m in members)) == set(CLASSES), split


def test_one_crop_is_homogeneous(demo):
    _, stores = demo
    constant = []
    for _, crop in crops(stores):
        values = np.unique(read(crop / "all" / "s0"))
        if len(values) == 1 and values[0] not in (0, 255):
            constant.append(crop.name)
    assert len(constant) >= 1


def em_under(store: Path, crop: Path) -> np.ndarray | None:
    """EM s0 voxels under an 8 nm crop aligned to the EM grid (None for other crops)."""
    (voxel, *_), translation = transforms(crop / "all")[0]
    if voxel != 8.0 or any(t % 8 for t in translation):
        return None
    start = [int(t // 8) for t in translation]
    shape = read(crop / "all" / "s0").shape
    em = zarr.open_array(store / EM / "s0", mode="r")
    return em[tuple(slice(a, a + n) for a, n in zip(start, shape, strict=True))]


def test_em_intensity_depends_on_the_class(demo):
    _, stores = demo
    values: dict[str, list[np.ndarray]] = {name: [] for name in CLASSES}
    for store, crop in crops(stores):
        em = em_under(store, crop)
        if em is None:
            continue
        for name in annotated(crop):
            mask = read(crop / name / "s0")
            values[name].append(em[(mask != 0) & (mask != 255)])
    mean = {n: float(np.concatenate(v).mean()) for n, v in values.items() if sum(map(len, v)) > 30}
    checked = 0
    for membrane, lumen in MEMBRANE_LUMEN:
        if membrane in mean and lumen in mean:
            assert mean[membrane] < mean[lumen] - 10, (membrane, lumen, mean)
            checked += 1
    assert checked >= 3, mean
    assert mean["pm"] < mean["ecs"] - 60
    assert mean["ecs"] == max(mean.values())
    assert mean["nuc"] < mean["ecs"] and mean["mito_lum"] < mean["ves_lum"]


def test_class_imbalance_like_the_real_data(demo):
    _, stores = demo
    counts = dict.fromkeys(CLASSES, 0)
    known = dict.fromkeys(CLASSES, 0)
    for _, crop in crops(stores):
        voxel = transforms(crop / "all")[0][0][0]
        for name in annotated(crop):
            data = read(crop / name / "s0")
            weight = voxel**3  # count in nm³ so that 4 nm and 16 nm crops compare
            counts[name] += int(((data != 0) & (data != 255)).sum()) * weight
            known[name] += int((data != 255).sum()) * weight
    prior = {n: counts[n] / known[n] for n in CLASSES}
    for name in ("pm", "mito_mem", "ves_mem", "endo_mem", "er_mem"):
        assert prior[name] < 0.1, prior
    assert prior["mito_ribo"] < 0.01 and prior["mito_ribo"] < prior["mito_lum"] / 5
    assert prior["nuc"] > 5 * prior["mito_ribo"]
    assert all(v > 0 for v in prior.values()), prior


def test_same_seed_same_bytes_other_seed_differs(demo, tmp_path):
    _, stores = demo
    first = stores[0]
    name = first.parent.name
    (again,) = make_demo_data(tmp_path / "again", seed=0, size="small", datasets=[name])
    (other,) = make_demo_data(tmp_path / "other", seed=1, size="small", datasets=[name])
    arrays = sorted(p.parent.relative_to(first) for p in first.rglob(".zarray"))
    assert len(arrays) > 20
    for relative in arrays:
        np.testing.assert_array_equal(read(first / relative), read(again / relative))
        assert attrs(first / relative.parent) == attrs(again / relative.parent)
    assert not np.array_equal(read(first / EM / "s0"), read(other / EM / "s0"))


def test_datasets_written_at_once_are_the_same_bytes(demo, tmp_path):
    """``workers`` (the demo_data rule's threads) writes datasets in processes of their own:
    every file is byte for byte the serial run's, and the manifest lists the datasets in order
    with the same entries (its ``seconds`` aside)."""
    out, _ = demo
    make_demo_data(tmp_path / "parallel", seed=0, size="small", workers=2)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert len(files) > 50
    assert files == sorted(
        p.relative_to(tmp_path / "parallel") for p in (tmp_path / "parallel").rglob("*")
        if p.is_file()
    )  # fmt: skip
    for relative in files:
        if relative.name != MARKER_NAME:
            assert (out / relative).read_bytes() == (tmp_path / "parallel" / relative).read_bytes()
    serial, parallel = (
        json.loads((d / MARKER_NAME).read_text()) for d in (out, tmp_path / "parallel")
    )
    serial.pop("seconds"), parallel.pop("seconds")
    assert list(parallel["datasets"]) == list(serial["datasets"]) and parallel == serial


def test_refuses_foreign_directories_and_reruns_over_its_own(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(CellsegError, match="--force"):
        make_demo_data(foreign, seed=0, size="small", datasets=["jrc_demo-3"])
    assert sorted(p.name for p in foreign.iterdir()) == ["precious.txt"]
    own = tmp_path / "own"
    make_demo_data(own, seed=0, size="small", datasets=["jrc_demo-3"])
    assert json.loads((own / MARKER_NAME).read_text())["status"] == "complete"
    make_demo_data(own, seed=0, size="small", datasets=["jrc_demo-3"])  # a re-run is allowed
    assert sorted(p.name for p in own.iterdir()) == sorted([MARKER_NAME, "jrc_demo-3"])


@pytest.mark.slow  # ~10-15 s: the default demo, as the workflow's demo_data rule makes it
def test_default_size_is_small(tmp_path):
    # its time is measured, not asserted (bench/ and docs/benchmarks.md): a loaded machine
    # took 87 s where 2 free cores take about 30
    started = time.perf_counter()
    stores = make_demo_data(tmp_path / "default", seed=0)
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for s in stores for f in s.rglob("*") if f.is_file())
    print(f"\ndefault demo: {size / 1e6:.1f} MB in {seconds:.1f} s")
    assert size < 100e6
    # crops are big enough for 3D demo patches of 16×64×64 at 8 nm
    manifest = json.loads((tmp_path / "default" / MARKER_NAME).read_text())
    extents = [
        [n * v / 8 for n, v in zip(c["shape"], c["voxel_size_nm"], strict=True)]
        for d in manifest["datasets"].values()
        for c in d["crops"]
    ]
    assert sum(e[0] >= 24 and min(e[1:]) >= 96 for e in extents) >= len(extents) // 2
    # every split of the default datasplit holds positive voxels of every class (not just
    # arrays of it): validation can stop on all 14 classes and the test scores all 14
    positives = {
        f"{name}/{c['name']}": {k for k, v in c["positive_voxels_s0"].items() if v > 0}
        for name, d in manifest["datasets"].items()
        for c in d["crops"]
    }
    split = default_split(tmp_path / "default")
    for members in split.values():
        assert set().union(*(positives[m] for m in members)) == set(CLASSES), split
    # the written demo splits as its plan does (the plan-only test above speaks for it)
    planned, _ = planned_split("default")
    assert split == {s: [b.crop.name for b in planned if b.crop.split == s] for s in SPLITS}


# ------------------------------------------------------------------------ --size realistic
# The full size (5 crops, 4 of them 400³ voxels) takes minutes to write, so CI checks its plan
# (shapes, scales, placement: no voxel is written) and writes a reduced variant
# (extent_scale=0.25) through the same code. The full write is opt-in: set
# CELLSEG_TEST_REALISTIC=1 (or run `python -m cellseg make-demo-data --size realistic --out DIR`).

REDUCED = 0.25


def crop_box_nm(voxel, translation, shape) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) corner of a crop in nm, from its s0 voxel size, translation and shape."""
    lower = np.asarray(translation) - np.asarray(voxel) / 2
    return lower, lower + np.asarray(shape) * np.asarray(voxel)


def test_realistic_plan_has_the_real_crops_geometry():
    plans = plan_layout(seed=0, size="realistic")
    assert len(plans) == 2
    crops = [(plan, c) for plan in plans for c in plan.crops]
    by_voxel: dict[tuple[float, ...], list] = {}
    for _, c in crops:
        by_voxel.setdefault(c.spec.voxel_size_nm, []).append(c)
    cubes = by_voxel[(4.0, 4.0, 4.0)]
    assert len(cubes) >= 3 and all(c.shape == (400, 400, 400) for c in cubes)
    (anisotropic,) = by_voxel[(2.6, 2.0, 2.0)]
    assert anisotropic.shape == (400, 400, 400)
    (coarse,) = by_voxel[(32.0, 32.0, 32.0)]
    assert min(coarse.shape) >= 4 and all(n % 4 == 0 for n in coarse.shape)
    # classes: all 14 across the crops, and most crops annotate all 14
    assert set().union(*(c.spec.classes for _, c in crops)) == set(CLASSES)
    assert sum(set(c.spec.classes) == set(CLASSES) for _, c in crops) > len(crops) / 2
    for plan in plans:
        em_lower = np.full(3, -4.0)  # EM s0 at 8 nm, first voxel centred at 0 nm
        em_upper = em_lower + np.asarray(plan.em_shape) * 8.0
        boxes = []
        for c in plan.crops:
            lower, upper = crop_box_nm(c.spec.voxel_size_nm, c.translation_nm, c.shape)
            # crops land on whole EM voxels and lie inside the EM volume
            np.testing.assert_allclose((lower - em_lower) / 8, np.round((lower - em_lower) / 8))
            np.testing.assert_allclose((upper - em_lower) / 8, np.round((upper - em_lower) / 8))
            assert (lower >= em_lower).all() and (upper <= em_upper).all(), c.spec.name
            # EM reaches half a 32×256×256 patch (8 nm) beyond the crop centre on every side
            centre = (lower + upper) / 2
            half_patch = np.array([16, 128, 128]) * 8.0
            assert (centre - half_patch >= em_lower - 1e-6).all(), c.spec.name
            assert (centre + half_patch <= em_upper + 1e-6).all(), c.spec.name
            boxes.append((lower, upper))
        # no two crops of a dataset share a voxel (a split never puts one voxel in two splits)
        for i in range(len(boxes)):
            for j in range(i):
                overlap = np.minimum(boxes[i][1], boxes[j][1]) - np.maximum(
                    boxes[i][0], boxes[j][0]
                )
                assert (overlap <= 1e-6).any(), (plan.name, i, j)


def test_realistic_crops_hold_every_class_they_annotate():
    """Each planned crop's box, sampled from the scene at 8 nm, shows every class it annotates
    (a crop annotating all 14 classes then really has positives of all 14 for training)."""
    for plan in plan_layout(seed=0, size="realistic"):
        for c in plan.crops:
            lower, _ = crop_box_nm(c.spec.voxel_size_nm, c.translation_nm, c.shape)
            grid_shape = [
                round(n * v / 8) for n, v in zip(c.shape, c.spec.voxel_size_nm, strict=True)
            ]
            codes = plan.scene.render(lower + 4.0, 8.0, grid_shape)
            present = set(np.unique(code_to_class_index(codes)).tolist())
            missing = [n for n in c.spec.classes if CLASSES.index(n) + 1 not in present]
            assert not missing, (plan.name, c.spec.name, missing)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_realistic_plan_places_disjoint_crops_for_other_seeds(seed):
    for plan in plan_layout(seed=seed, size="realistic"):
        assert len(plan.crops) >= 2
        for i, a in enumerate(plan.crops):
            assert not any(a.overlaps(b) for b in plan.crops[:i]), (seed, plan.name)


@pytest.fixture(scope="module")
def reduced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("realistic")
    started = time.perf_counter()
    stores = make_demo_data(out, seed=0, size="realistic", extent_scale=REDUCED)
    print(f"\nrealistic demo ×{REDUCED} generated in {time.perf_counter() - started:.1f} s")
    return out, stores


def test_reduced_realistic_writes_what_its_plan_says(reduced):
    _, stores = reduced
    plans = {p.name: p for p in plan_layout(seed=0, size="realistic", extent_scale=REDUCED)}
    assert sorted(s.parent.name for s in stores) == sorted(plans)
    seen_scales = set()
    for store in stores:
        plan = plans[store.parent.name]
        levels = transforms(store / EM)
        assert [s for s, _ in levels] == [[8.0] * 3, [16.0] * 3, [32.0] * 3]
        assert [t for _, t in levels] == [[0.0] * 3, [4.0] * 3, [12.0] * 3]
        assert read(store / EM / "s0").shape == plan.em_shape
        assert read(store / EM / "s2").shape == tuple(n // 4 for n in plan.em_shape)
        for c in plan.crops:
            group = store / GT / c.spec.name
            assert annotated(group) == sorted(c.spec.classes)
            for name in ("all", *c.spec.classes):
                pyramid = transforms(group / name)
                assert len(pyramid) == 3
                s0_scale, s0_translation = pyramid[0]
                assert s0_scale == pytest.approx(list(c.spec.voxel_size_nm))
                assert s0_translation == pytest.approx(list(c.translation_nm))
                for k, (scale, translation) in enumerate(pyramid):
                    # level k: voxel ×2^k, first-voxel centre moved by half the growth
                    assert scale == pytest.approx([v * 2**k for v in s0_scale])
                    expected = [
                        t + (v * 2**k - v) / 2
                        for t, v in zip(s0_translation, s0_scale, strict=True)
                    ]
                    assert translation == pytest.approx(expected)
                    shape = read(group / name / f"s{k}").shape
                    assert shape == tuple(n // 2**k for n in c.shape)
            seen_scales.add(tuple(s0_scale))
    assert {(4.0, 4.0, 4.0), (32.0, 32.0, 32.0)} <= seen_scales
    assert any(s == pytest.approx((2.6, 2.0, 2.0)) for s in seen_scales)


def test_reduced_realistic_anisotropic_crop_reads_at_8nm(reduced):
    """The package opens the (2.6, 2, 2) nm crop at 8 nm through its (10.4, 8, 8) nm level."""
    out, _ = reduced
    crops = {c.name: c for c in discover_crops(out)}
    crop = crops["jrc_realistic-2/crop4"]
    geometry = read_crop_geometry(crop, 8.0)
    level = geometry.labels["mito_lum"].level_for(8.0)
    assert level.voxel_size_nm == pytest.approx((10.4, 8.0, 8.0))
    # the class arrays and `all` agree at s0 (the anisotropic grid is one grid for all arrays)
    group = out / "jrc_realistic-2" / "jrc_realistic-2.zarr" / GT / "crop4"
    everything = read(group / "all" / "s0")
    class_ids = attrs(group / "all")["cellseg"]["class_ids"]
    for name in ("mito_lum", "er_mem", "golgi_lum"):
        data = read(group / name / "s0")
        np.testing.assert_array_equal(data == 1, everything == class_ids[name])


def test_reduced_realistic_same_seed_same_bytes(reduced, tmp_path):
    _, stores = reduced
    first = next(s for s in stores if s.parent.name == "jrc_realistic-2")
    (again,) = make_demo_data(tmp_path / "again", seed=0, size="realistic",
                              datasets=["jrc_realistic-2"], extent_scale=REDUCED)  # fmt: skip
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) > 50
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for relative in files:
        assert (first / relative).read_bytes() == (again / relative).read_bytes(), relative
    (other,) = make_demo_data(tmp_path / "other", seed=1, size="realistic",
                              datasets=["jrc_realistic-2"], extent_scale=REDUCED)  # fmt: skip
    assert not np.array_equal(read(first / EM / "s0"), read(other / EM / "s0"))


def test_every_size_is_a_cli_choice_and_a_config_choice():
    args = build_parser("make-demo-data").parse_args(
        ["make-demo-data", "--size", "realistic", "--out", "somewhere"]
    )
    assert args.size == "realistic"
    schema = yaml.safe_load(SCHEMA.read_text())
    size = schema["properties"]["data"]["properties"]["demo"]["properties"]["size"]
    assert size["enum"] == list(SIZES)
    with pytest.raises(CellsegError, match="realistic"):
        make_demo_data(Path("unused"), size="huge")


@pytest.mark.skipif(
    not os.environ.get("CELLSEG_TEST_REALISTIC"),
    reason="writes ~200 MB in 1.5-3 min; set CELLSEG_TEST_REALISTIC=1 to run",
)
def test_full_realistic_write(tmp_path):
    stores = make_demo_data(tmp_path / "realistic", seed=0, size="realistic")
    manifest = json.loads((tmp_path / "realistic" / MARKER_NAME).read_text())
    entries = [c for d in manifest["datasets"].values() for c in d["crops"]]
    assert sum(c["shape"] == [400] * 3 and c["voxel_size_nm"] == [4.0] * 3 for c in entries) >= 3
    for c in entries:
        if set(c["classes"]) == set(CLASSES):
            assert min(c["positive_voxels_s0"].values()) > 0, c["name"]
    size = sum(f.stat().st_size for s in stores for f in s.rglob("*") if f.is_file())
    print(f"\nrealistic demo: {size / 1e6:.1f} MB in {manifest['seconds']} s")


def demo_imports(source: str) -> list[str]:
    """The modules of cellseg.data.demo that ``source`` imports, anywhere in it."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
            if node.module == "cellseg.data":
                names += [f"cellseg.data.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [
            n for n in names if n == "cellseg.data.demo" or n.startswith("cellseg.data.demo.")
        ]
    return found


def test_no_production_module_imports_the_generator():
    """The generator is for the demo only: OME-NGFF writing lives in cellseg.ngff and the
    sizes in cellseg.data.demo_layout, so no module outside cellseg.data.demo imports it
    (imports inside functions included)."""
    package = REPO / "src" / "cellseg"
    importers = [
        f"{path.relative_to(REPO)}: {name}"
        for path in package.rglob("*.py")
        if (package / "data" / "demo") not in path.parents
        for name in demo_imports(path.read_text())
    ]
    assert importers == []
    # the check sees each way of importing it
    lazy = "def f():\n    from cellseg.data.demo import SIZES\n"
    assert demo_imports(lazy) == ["cellseg.data.demo"]
    assert demo_imports("from cellseg.data import demo") == ["cellseg.data.demo"]
    assert demo_imports("import cellseg.data.demo.scene") == ["cellseg.data.demo.scene"]
    assert demo_imports("from cellseg.data.demo_layout import SIZES") == []
