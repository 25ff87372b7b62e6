"""``cellseg import`` streams: sources are read and stores written block by block, and the stores
are those today's whole-volume import wrote (kept below as the reference); peak memory is bounded
by the block, not the volume; anisotropic voxels get pyramids that halve the fine axes first."""

from __future__ import annotations

import filecmp
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zarr

from cellseg.classes import CLASSES, GROUP_NAMES
from cellseg.data.import_mapping import load_mapping
from cellseg.data.import_sources import open_volume, read_volume
from cellseg.data.importer import (
    MAX_INSTANCES,
    _class_code,
    crop_boxes,
    derive_boundary,
    import_mapping,
    pyramid_factors,
)
from cellseg.data.label_codes import (
    INSTANCE_CLASSES,
    NUC_BASE,
    UNKNOWN,
    UNKNOWN_CODE,
    all_attrs,
    annotation_attrs,
    arrays_from_codes,
)
from cellseg.data.store import discover_crops, read_crop_geometry
from cellseg.errors import CellsegError
from cellseg.ngff import (
    CHUNK,
    downsample_labels,
    downsample_mean,
    pyramid_levels,
    write_multiscale_array,
)
from import_builders import dataset_entry, label_image, write_mapping, write_striped_tiffs

# ------------------------------------------------------------------ the whole-volume reference
# cellseg import as it was before it streamed (commit f0e6d48): every source read whole, the
# label codes of the whole volume, every pyramid level in memory, one write per array.


def reference_codes(dataset: dict, base: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    labels = dataset["labels"]
    em = read_volume(dataset["em"], base, "em")
    codes = np.zeros(em.shape, dtype=np.uint16)
    kind = labels["kind"]
    if kind == "masks":
        classes = set(labels["masks"])
        contested = np.zeros(em.shape, dtype=bool)
        for name, source in labels["masks"].items():
            present = read_volume(source, base, "mask") != 0
            contested |= present & (codes != 0)
            codes[present] = _class_code(name)
        codes[contested] = UNKNOWN_CODE
    elif kind == "label_image":
        image = read_volume(labels["source"], base, "source")
        values, inverse = np.unique(image, return_inverse=True)
        mapped = {int(v): c for v, c in labels["values"].items()}
        classes = {c for c in mapped.values() if c != "none"}
        table = np.zeros(len(values), dtype=np.uint16)
        for i, value in enumerate(values.tolist()):
            if value == labels.get("unknown_value"):
                table[i] = UNKNOWN_CODE
            elif value in mapped:
                table[i] = 0 if mapped[value] == "none" else _class_code(mapped[value])
            else:
                table[i] = UNKNOWN_CODE if labels["other_values"] == "unknown" else 0
        codes = table[inverse.reshape(em.shape)]
    else:
        ids = read_volume(labels["source"], base, "source")
        background, unknown = int(labels.get("background_value", 0)), labels.get("unknown_value")
        classes = set()
        if labels.get("instance_class"):
            name = labels["instance_class"]
            classes.add(name)
            inside = (ids != background) & (ids != unknown)
            if name in INSTANCE_CLASSES:
                found, inverse = np.unique(ids[inside], return_inverse=True)
                assert len(found) <= MAX_INSTANCES
                new_ids = np.arange(1, len(found) + 1)
                new_ids += new_ids >= UNKNOWN
                codes[inside] = (NUC_BASE + new_ids[inverse]).astype(np.uint16)
            else:
                codes[inside] = _class_code(name)
        if labels.get("derive_boundary"):
            classes.add(labels["derive_boundary"])
            codes[derive_boundary(ids, background, unknown)] = _class_code(
                labels["derive_boundary"]
            )
        if unknown is not None:
            codes[ids == unknown] = UNKNOWN_CODE
    if "annotated" in labels:
        codes[read_volume(labels["annotated"], base, "annotated") == 0] = UNKNOWN_CODE
    if "unknown_mask" in labels:
        codes[read_volume(labels["unknown_mask"], base, "unknown_mask") != 0] = UNKNOWN_CODE
    return codes, tuple(c for c in (*CLASSES, *GROUP_NAMES) if c in classes)


def reference_import(mapping_path: Path, out: Path) -> Path:
    """The whole-volume import of a one-dataset mapping (no checks), into ``out/{name}``."""
    mapping = load_mapping(mapping_path)
    dataset = mapping.content["datasets"][0]
    base, name = mapping_path.parent, dataset["name"]
    voxel = [float(v) for v in dataset["voxel_size_nm"]]
    offset = [float(v) for v in dataset.get("offset_nm", (0.0, 0.0, 0.0))]
    em = read_volume(dataset["em"], base, "em")
    codes, classes = reference_codes(dataset, base)
    store = out / name / f"{name}.zarr"
    root = zarr.open_group(str(store), mode="w-", zarr_format=2)
    root.attrs["cellseg_import"] = {"dataset": dataset}
    em_levels = [np.ascontiguousarray(em)]
    for _ in range(1, pyramid_levels(em.shape, CHUNK)):
        em_levels.append(downsample_mean(em_levels[-1], 2))
    write_multiscale_array(root.require_group("recon-1/em"), "fibsem-uint8", em_levels, voxel,
                           offset)  # fmt: skip
    groundtruth = root.require_group("recon-1/labels/groundtruth")
    for box in crop_boxes(mapping, 0, em.shape, voxel, offset):
        region = tuple(slice(a, b) for a, b in zip(box.start, box.stop, strict=True))
        translation = [o + s * v for o, s, v in zip(offset, box.start, voxel, strict=True)]
        levels = [codes[region]]
        for _ in range(1, pyramid_levels(levels[0].shape, CHUNK)):
            pad = [(0, n % 2) for n in levels[-1].shape]
            levels.append(downsample_labels(np.pad(levels[-1], pad, mode="edge"), UNKNOWN_CODE))
        per_name: dict[str, list[np.ndarray]] = {}
        for level in levels:
            for group, array in arrays_from_codes(level, classes):
                per_name.setdefault(group, []).append(array)
        crop_group = groundtruth.require_group(box.name)
        for group, arrays in per_name.items():
            attrs = all_attrs(classes) if group == "all" else annotation_attrs(group)
            write_multiscale_array(crop_group, group, arrays, voxel, translation, attrs)
    return store


def assert_same_store(new: Path, reference: Path) -> int:
    """Every array (values, dtype, shape) and every group's attributes equal; every chunk file
    byte for byte. Returns the number of arrays compared."""
    a, b = zarr.open_group(str(new), mode="r"), zarr.open_group(str(reference), mode="r")
    arrays_a = sorted(path for path, _ in a.members(max_depth=None))
    assert arrays_a == sorted(path for path, _ in b.members(max_depth=None))
    count = 0
    for path in arrays_a:
        x, y = a[path], b[path]
        if isinstance(x, zarr.Array):
            assert (x.shape, x.dtype, x.chunks) == (y.shape, y.dtype, y.chunks), path
            assert np.array_equal(x[...], y[...]), path
            count += 1
        else:
            assert dict(x.attrs) == dict(y.attrs), path
    files_a = sorted(p.relative_to(new) for p in new.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    chunk_files = [p for p in files_a if not p.name.startswith(".")]
    assert chunk_files  # the comparison below compares data, not only metadata
    assert all(filecmp.cmp(new / p, reference / p, shallow=False) for p in chunk_files)
    return count


def blobs(shape: tuple[int, ...], cell: int, values: int, seed: int) -> np.ndarray:
    """Piecewise-constant ``cell``-voxel cubes of random values ``0..values-1`` (uint16), whose
    faces fall inside and across 64-voxel blocks."""
    grid = [-(-n // cell) + 1 for n in shape]
    coarse = np.random.default_rng(seed).integers(0, values, size=grid).astype(np.uint16)
    shift = (3, 5, 1)  # faces off the block grid
    index = np.ix_(*[(np.arange(n) + s) // cell for n, s in zip(shape, shift, strict=True)])
    return coarse[index]


SHAPE = (130, 70, 150)  # 3 x 2 x 3 blocks of 64 voxels, edge blocks cut


def write_dataset(tmp_path: Path, labels: dict, crops: list[dict] | None = None) -> Path:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "em.npy", rng.integers(0, 256, size=SHAPE, dtype=np.uint8))
    # isotropic: the pyramids are today's
    dataset = dataset_entry("blocks", "em.npy", labels, offset_nm=[16, 0, 2])
    if crops:
        dataset["crops"] = crops
    return write_mapping(tmp_path, dataset)


def instance_case(tmp_path: Path) -> Path:
    import tifffile

    ids = blobs(SHAPE, 6, 400, seed=1)  # about 400 ids: renumbered past 255
    ids[blobs(SHAPE, 9, 7, seed=2) == 0] = 999  # unknown regions
    tifffile.imwrite(tmp_path / "ids.tif", ids, compression="zlib")  # read page by page
    np.save(tmp_path / "annotated.npy", (blobs(SHAPE, 17, 9, seed=3) != 0).astype(np.uint8))
    labels = {
        "kind": "instance_ids",
        "source": {"path": "ids.tif"},
        "unknown_value": 999,
        "instance_class": "nuc",
        "derive_boundary": "pm",
        "annotated": {"path": "annotated.npy"},
    }
    return write_dataset(tmp_path, labels)  # one crop: the whole volume, many blocks


def label_image_case(tmp_path: Path) -> Path:
    np.save(tmp_path / "image.npy", blobs(SHAPE, 5, 6, seed=4).astype(np.uint32))
    values = {0: "none", 1: "mito_lum", 2: "er", 3: "ecs"}
    labels = label_image("image.npy", values, other_values="unknown", unknown_value=5)
    crops = [
        {"name": "big", "start": [1, 2, 3], "size": [128, 66, 140], "unit": "voxels"},
        {"name": "small", "start": [100, 10, 70], "size": [20, 30, 40], "unit": "voxels"},
    ]
    return write_dataset(tmp_path, labels, crops)


def masks_case(tmp_path: Path) -> Path:
    (tmp_path / "slices").mkdir()
    from PIL import Image

    mito = blobs(SHAPE, 7, 3, seed=5) == 1
    pm = blobs(SHAPE, 4, 4, seed=6) == 2  # overlaps mito: overlap: unknown
    for z, plane in enumerate(pm.astype(np.uint8)):
        Image.fromarray(plane * 255).save(tmp_path / "slices" / f"pm_{z:03d}.png")
    np.save(tmp_path / "masks.npy", np.stack([mito, mito, mito], axis=1).astype(np.uint8))
    np.save(tmp_path / "noise.npy", (blobs(SHAPE, 11, 8, seed=7) == 0).astype(np.uint8))
    labels = {
        "kind": "masks",
        "overlap": "unknown",
        "masks": {"pm": {"path": "slices"}, "mito": {"path": "masks.npy", "channel": 2}},
        "unknown_mask": {"path": "noise.npy"},
    }
    return write_dataset(tmp_path, labels)


@pytest.mark.parametrize("case", [instance_case, label_image_case, masks_case])
def test_streamed_import_is_the_whole_volume_import(tmp_path, case):
    mapping = case(tmp_path)
    (store,) = import_mapping(mapping, tmp_path / "new", block=64)
    reference = reference_import(mapping, tmp_path / "reference")
    # the root attributes differ by design (the reference records less); all else is equal
    zarr.open_group(str(reference), mode="r+").attrs.put(
        dict(zarr.open_group(str(store), mode="r").attrs)
    )
    arrays = assert_same_store(store, reference)
    assert arrays >= 3 + 2 * 3  # EM levels, and all + a class over >= 3 levels
    if case is instance_case:  # the boundary crosses block borders (64, 128 on every axis)
        pm = zarr.open_array(str(store / "recon-1/labels/groundtruth/crop1/pm/s0"), mode="r")
        pm = pm[...]
        assert ((pm[63] == 1) & (pm[64] == 1)).any() and ((pm[:, 63] == 1) & (pm[:, 64] == 1)).any()
        assert ((pm[:, :, 127] == 1) & (pm[:, :, 128] == 1)).any()
        nuc = zarr.open_array(str(store / "recon-1/labels/groundtruth/crop1/nuc/s0"), mode="r")
        assert (nuc[...] > UNKNOWN).any()  # ids past 255 were renumbered around it


def test_streamed_refusals_see_the_whole_volume_before_writing(tmp_path):
    image = np.zeros(SHAPE, dtype=np.uint16)
    image[129, 69, 149] = 7  # in the last block only, outside the crop
    np.save(tmp_path / "image.npy", image)
    labels = label_image("image.npy", {0: "none"})
    crops = [{"name": "c", "start": [0, 0, 0], "size": [10, 10, 10], "unit": "voxels"}]
    mapping = write_dataset(tmp_path, labels, crops)
    with pytest.raises(CellsegError, match=r"label value 7 of image\.npy has no mapping"):
        import_mapping(mapping, tmp_path / "out", block=64)
    assert not (tmp_path / "out" / ".blocks.importing").exists()  # refused before writing
    masks = np.zeros((*SHAPE[:1], 2, *SHAPE[1:]), dtype=np.uint8)
    masks[:, 0, :3] = 1
    masks[:, 1, :3, :5] = 1  # 3 x 5 voxels per plane claimed twice, over 3 blocks of z
    np.save(tmp_path / "masks.npy", masks)
    labels = {"kind": "masks", "masks": {
        "pm": {"path": "masks.npy", "channel": 0}, "ecs": {"path": "masks.npy", "channel": 1}}}  # fmt: skip
    with pytest.raises(CellsegError, match=rf"labels\.masks\.ecs: {SHAPE[0] * 15} voxels also lie"):
        import_mapping(write_dataset(tmp_path, labels, crops), tmp_path / "out", block=64)


def test_lazy_sources_read_boxes(tmp_path):
    import tifffile

    volume = np.random.default_rng(8).integers(0, 60000, size=(9, 20, 30)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "plain.tif", volume)
    tifffile.imwrite(tmp_path / "packed.tif", volume, compression="zlib", tile=(16, 16))
    tifffile.imwrite(tmp_path / "big_endian.tif", volume, byteorder=">")
    box = (slice(2, 7), slice(3, 19), slice(5, 29))
    for name in ("plain.tif", "packed.tif", "big_endian.tif"):
        opened = open_volume({"path": name}, tmp_path, "m.yaml:3: em")
        assert (opened.shape, opened.dtype) == ((9, 20, 30), np.dtype(np.uint16))
        read = opened[box]
        assert read.dtype.isnative and np.array_equal(read, volume[box]), name
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<u2'")
    with pytest.raises(CellsegError, match=r"^m.yaml:3: em: cannot read .* as npy \("):
        open_volume({"path": "cut.npy"}, tmp_path, "m.yaml:3: em")


# ------------------------------------------------------------------------------ memory


@pytest.mark.slow
def test_peak_memory_is_bounded_by_the_block_not_the_volume(tmp_path):
    """A 64 MiB uint8 TIFF volume (1024 x 256 x 256) with a label image of the same size, one
    crop of the whole volume: the Python-level peak (tracemalloc: NumPy's buffers, zarr's
    chunks) stays below 1/3 of the volume (about 17 MiB); the whole-volume import held several
    volumes (EM, label codes at 2 bytes a voxel, each class array). Most of the peak is the
    read-back check (``check_label_data``), which reads a z row of 64-voxel chunks (64 planes)
    at a time, so a volume of larger planes raises it (docs/benchmarks.md)."""
    import tifffile

    shape = (1024, 256, 256)
    volume_bytes = int(np.prod(shape))
    # EM uncompressed (memory-mapped), labels zlib (read page by page), written plane by plane
    mapping = write_mapping(tmp_path, write_striped_tiffs(tmp_path, shape, seed=9))
    tracemalloc.start()
    try:
        started = time.perf_counter()
        (store,) = import_mapping(mapping, tmp_path / "out")
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"peak {peak / 2**20:.1f} MiB = {peak / volume_bytes:.3f} x volume; {elapsed:.1f} s")
    assert peak < volume_bytes / 3  # 16.8 MiB measured (0.26 x), 15 of them the check
    em = zarr.open_array(str(store / "recon-1/em/fibsem-uint8/s0"), mode="r")
    assert np.array_equal(em[100], tifffile.imread(tmp_path / "em.tif", key=100))
    mito = zarr.open_array(str(store / "recon-1/labels/groundtruth/crop1/mito/s0"), mode="r")
    expected = tifffile.imread(tmp_path / "labels.tif", key=900) == 3
    assert np.array_equal(mito[900], expected.astype(np.uint8))


# ------------------------------------------------------------------------------ anisotropic


def test_pyramid_factors_halve_fine_axes_until_near_isotropic():
    assert pyramid_factors((8, 8, 8), (300, 300, 300)) == [(2, 2, 2)] * 3  # as before
    assert pyramid_factors((8, 8, 8), (64, 64, 64)) == []
    # cardona: 50 x 4 x 4 nm, 30 x 512 x 512 voxels -> 50x8x8, 50x16x16, 50x32x32 nm
    assert pyramid_factors((50, 4, 4), (30, 512, 512)) == [(1, 2, 2)] * 3
    # 32 < 50 / sqrt(2): halved once more to 50x64x64, then every axis
    assert pyramid_factors((50, 4, 4), (30, 4096, 4096)) == [(1, 2, 2)] * 4 + [(2, 2, 2)] * 2
    assert pyramid_factors((4, 4, 10), (600, 600, 600))[:2] == [(2, 2, 1), (2, 2, 2)]


def test_anisotropic_pyramid_reads_back_at_the_right_nm(tmp_path):
    shape, voxel, offset = (24, 260, 260), (12.0, 3.0, 3.0), (100.0, 10.0, 20.0)
    em = np.random.default_rng(10).integers(0, 256, size=shape, dtype=np.uint8)
    np.save(tmp_path / "em.npy", em)
    # labels constant on 1 x 4 x 4 tiles aligned to the crop's start: level s2 (12 nm) is exact
    start, size = (2, 40, 60), (20, 150, 140)
    tiles = np.random.default_rng(11).integers(0, 2, size=(shape[0], 80, 80)).astype(np.uint8)
    image = np.zeros(shape, dtype=np.uint8)
    image[:, start[1] :, start[2] :] = np.repeat(np.repeat(tiles, 4, 1), 4, 2)[
        :, : shape[1] - start[1], : shape[2] - start[2]
    ]
    np.save(tmp_path / "image.npy", image)
    crop = {"name": "crop1", "start": list(start), "size": list(size), "unit": "voxels"}
    labels = label_image("image.npy", {0: "none", 1: "pm"})
    dataset = dataset_entry(
        "sections", "em.npy", labels, voxel, offset_nm=list(offset), crops=[crop]
    )
    mapping = write_mapping(tmp_path, dataset)
    import_mapping(mapping, tmp_path / "out", block=64)
    (crop,) = discover_crops(tmp_path / "out")
    geometry = read_crop_geometry(crop)  # the reader accepts the pyramid (levels agree, inside)
    em_levels = geometry.em.levels
    assert [lv.voxel_size_nm for lv in em_levels] == [
        (12.0, 3.0, 3.0), (12.0, 6.0, 6.0), (12.0, 12.0, 12.0), (24.0, 24.0, 24.0)]  # fmt: skip
    assert [lv.shape for lv in em_levels] == [
        (24, 260, 260), (24, 130, 130), (24, 65, 65), (12, 33, 33)]  # fmt: skip
    # the first voxel's centre moves by half the growth of each halved axis only
    assert [lv.translation_nm for lv in em_levels] == [
        (100.0, 10.0, 20.0), (100.0, 11.5, 21.5), (100.0, 14.5, 24.5), (106.0, 20.5, 30.5)]  # fmt: skip
    s1 = zarr.open_array(str(crop.em_store / "recon-1/em/fibsem-uint8/s1"), mode="r")[...]
    by_hand = np.round(em.reshape(24, 130, 2, 130, 2).astype(np.float32).mean(axis=(2, 4)))
    assert np.array_equal(s1, by_hand.astype(np.uint8))  # 1 x 2 x 2 means: z kept
    pm = geometry.labels["pm"]
    level = pm.level_for(12.0)  # isotropic 12 nm: s2, halved twice in y and x
    assert (level.path, level.voxel_size_nm) == ("s2", (12.0, 12.0, 12.0))
    assert level.shape == (20, 38, 35)
    t0 = np.asarray(offset) + np.asarray(start) * np.asarray(voxel)
    assert np.allclose(level.translation_nm, t0 + np.array([0.0, 4.5, 4.5]))
    values = pm.open_level(level)[...]
    assert np.array_equal(values, tiles[start[0] : start[0] + 20, :38, :35])
    # the same nm point is the same place in EM and labels at that level
    em_level = geometry.em.level_for(12.0)
    index = em_level.world_to_index(np.asarray(level.translation_nm))
    assert np.allclose(index, np.asarray(start) / [1, 4, 4])
