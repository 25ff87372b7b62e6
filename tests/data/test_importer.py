"""``cellseg import``: a lab's own EM and labels written in the CellMap layout, read back by
cellseg's own reader; the boundary rule; every refusal as one line."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import zarr

from cellseg.cli import main
from cellseg.data.importer import derive_boundary, import_mapping, load_mapping
from cellseg.data.multiscale import LabelEncoding
from cellseg.data.store import discover_crops, read_crop_geometry
from cellseg.errors import CellsegError
from import_builders import dataset_entry, label_image, write_mapping

REPO = Path(__file__).parents[2]
REAL_EM = REPO.parent / "shared" / "real_em"
GALA = REAL_EM / "gala_fibsem_mini"
needs_gala = pytest.mark.skipif(
    not GALA.is_dir(), reason=f"{GALA} absent (the shared real EM sits beside the clone)"
)


def gala_truth(name: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(GALA / name)


@pytest.fixture(scope="module")
def gala_root(tmp_path_factory) -> Path:
    if not GALA.is_dir():
        pytest.skip(f"{GALA} absent (the shared real EM sits beside the clone)")
    out = tmp_path_factory.mktemp("imported")
    import_mapping(REPO / "config/import/gala_fibsem_mini.yaml", out, source_root=GALA)
    return out


@needs_gala
def test_gala_reads_back_through_cellseg_reader(gala_root):
    crops = discover_crops(gala_root)
    assert [(c.em_store.parent.name, c.crop_group.rsplit("/", 1)[1], c.classes) for c in crops] == [
        ("gala_fibsem_mini_test", "crop1", ("pm",)),
        ("gala_fibsem_mini_test", "crop2", ("pm",)),
        ("gala_fibsem_mini_train", "crop1", ("pm",)),
        ("gala_fibsem_mini_train", "crop2", ("pm",)),
    ]
    geometry = read_crop_geometry(crops[3], resolution_nm=10.0)
    assert [lv.shape for lv in geometry.em.levels] == [(50, 100, 200), (25, 50, 100), (13, 25, 50)]
    assert geometry.em.levels[0].voxel_size_nm == (10.0, 10.0, 10.0)
    assert geometry.em.levels[0].translation_nm == (0.0, 0.0, 0.0)
    assert geometry.em.levels[1].translation_nm == (5.0, 5.0, 5.0)  # +half the voxel growth
    pm = geometry.labels["pm"]
    assert pm.levels[0].shape == (50, 100, 96)
    assert pm.levels[0].translation_nm == (0.0, 0.0, 1040.0)  # voxel 104 of x at 10 nm
    assert geometry.encodings["pm"] == LabelEncoding()  # semantic 0/1/255
    em = zarr.open_array(str(crops[3].em_store / "recon-1/em/fibsem-uint8/s0"), mode="r")
    assert np.array_equal(em[...], gala_truth("train_raw.tif"))


@needs_gala
def test_gala_labels_are_the_boundary_of_the_label_image(gala_root):
    truth = gala_truth("train_gt_neurons.tif")[:, :, 104:200]
    crop = gala_root / "gala_fibsem_mini_train/gala_fibsem_mini_train.zarr"
    group = zarr.open_group(str(crop), mode="r")["recon-1/labels/groundtruth/crop2"]
    pm, everything = group["pm/s0"][...], group["all/s0"][...]
    assert np.array_equal(pm, (truth == 0).astype(np.uint8))  # 0 = boundary -> pm, rest absent
    assert np.array_equal(everything, np.where(truth == 0, 2, 0))  # CellMap id of pm is 2
    assert group["pm"].attrs["cellmap"]["annotation"]["class_name"] == "pm"


@needs_gala
def test_datasplit_accepts_the_imported_root(gala_root, tmp_path):
    out = tmp_path / "split.csv"
    assert main(["datasplit", "--root", str(gala_root), "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert len(rows) == 4
    assert {row.split(",")[0] for row in rows} == {'"train"', '"validate"', '"test"'}


def naive_boundary(ids: np.ndarray, unknown: int | None = None) -> np.ndarray:
    out = np.zeros(ids.shape, dtype=bool)
    for z, y, x in itertools.product(*map(range, ids.shape)):
        if ids[z, y, x] == unknown:
            continue
        for dz, dy, dx in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
            n = (z + dz, y + dy, x + dx)
            if all(0 <= i < s for i, s in zip(n, ids.shape, strict=True)):
                other = ids[n]
                if other not in (0, unknown) and other != ids[z, y, x]:
                    out[z, y, x] = True
    return out


def test_boundary_rule_matches_a_naive_loop():
    ids = np.random.default_rng(3).integers(0, 4, size=(3, 4, 5))
    ids[1, 1, 1] = 9  # an unknown voxel
    assert np.array_equal(derive_boundary(ids, 0, 9), naive_boundary(ids, 9))
    assert not derive_boundary(ids, 0, 9)[1, 1, 1]
    one = np.ones((3, 4, 5), dtype=int)
    assert not derive_boundary(one).any()  # one instance: no faces between ids
    two = np.ones((3, 4, 5), dtype=int)
    two[:, :, 3:] = 2
    expected = np.zeros((3, 4, 5), dtype=bool)
    expected[:, :, 2:4] = True  # both sides of the face
    assert np.array_equal(derive_boundary(two), expected)


def synthetic(tmp_path: Path) -> dict:
    """EM 3×4×5 (uint8) and instance ids with an unknown value 7, as .npy files."""
    ids = np.array(np.random.default_rng(1).integers(1, 4, size=(3, 4, 5)), dtype=np.uint16)
    ids[0, 0, :2] = 7
    np.save(tmp_path / "em.npy", np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    np.save(tmp_path / "ids.npy", ids)
    return {
        "name": "toy",
        "em": {"path": "em.npy"},
        "voxel_size_nm": [8, 4, 4],
        "offset_nm": [100, 2, 2],
        "labels": {
            "kind": "instance_ids",
            "source": {"path": "ids.npy"},
            "unknown_value": 7,
            "derive_boundary": "pm",
        },
    }


def test_instance_ids_with_unknowns_and_nm_crops(tmp_path):
    dataset = synthetic(tmp_path)
    dataset["crops"] = [{"name": "crop5", "start": [108, 2, 6], "size": [16, 12, 16], "unit": "nm"}]
    (store,) = import_mapping(write_mapping(tmp_path, dataset), tmp_path / "out")
    ids = np.load(tmp_path / "ids.npy")
    expected = np.where(derive_boundary(ids, 0, 7), 1, 0).astype(np.uint8)
    expected[ids == 7] = 255
    (crop,) = discover_crops(tmp_path / "out")
    geometry = read_crop_geometry(crop)
    level = geometry.labels["pm"].levels[0]
    assert (level.voxel_size_nm, level.translation_nm) == ((8.0, 4.0, 4.0), (108.0, 2.0, 6.0))
    em = geometry.em.levels[0]
    assert (em.voxel_size_nm, em.translation_nm, em.shape) == ((8.0, 4.0, 4.0), (100.0, 2.0, 2.0),
                                                               (3, 4, 5))  # fmt: skip
    pm = zarr.open_array(str(store / "recon-1/labels/groundtruth/crop5/pm/s0"), mode="r")[...]
    assert np.array_equal(pm, expected[1:3, 0:3, 1:5])
    whole = expected.copy()
    whole[0, 0, :2] = 255
    assert np.array_equal(pm, whole[1:3, 0:3, 1:5])


def test_label_image_unknowns_masks_and_annotated_region(tmp_path):
    image = np.zeros((3, 4, 5), dtype=np.uint8)
    image[0] = 1
    image[1] = 2
    image[2, 0] = 9
    annotated = np.ones((3, 4, 5), dtype=np.uint8)
    annotated[:, 3] = 0
    np.save(tmp_path / "em.npy", np.zeros((3, 4, 5), dtype=np.uint8))
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "annotated.npy", annotated)
    values = {0: "none", 1: "mito_lum", 2: "nuc"}
    labels = label_image("image.npy", values, unknown_value=9, annotated={"path": "annotated.npy"})
    dataset = dataset_entry("toy", "em.npy", labels)
    (store,) = import_mapping(write_mapping(tmp_path, dataset), tmp_path / "out")
    group = zarr.open_group(str(store), mode="r")["recon-1/labels/groundtruth/crop1"]
    unknown = (image == 9) | (annotated == 0)
    mito, nuc = group["mito_lum/s0"][...], group["nuc/s0"][...]
    assert np.array_equal(mito, np.where(unknown, 255, image == 1))
    assert np.array_equal(nuc, np.where(unknown, 255, image == 2))
    assert group["nuc"].attrs["cellmap"]["annotation"]["annotation_type"]["type"] == (
        "instance_segmentation"
    )
    (crop,) = discover_crops(tmp_path / "out")
    assert crop.classes == ("mito_lum", "nuc")


def refusal(tmp_path: Path, dataset: dict, out: Path | None = None) -> str:
    with pytest.raises(CellsegError) as caught:
        import_mapping(write_mapping(tmp_path, dataset), out or tmp_path / "out")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_refusals_are_one_line_naming_file_key_and_fix(tmp_path):
    mapping = tmp_path / "mapping.yaml"
    dataset = synthetic(tmp_path)
    np.save(tmp_path / "short.npy", np.zeros((3, 4, 4), dtype=np.uint16))
    bad = {**dataset, "labels": {**dataset["labels"], "source": {"path": "short.npy"}}}
    assert refusal(tmp_path, bad) == (
        f"{mapping}:15: datasets.0.labels.source: shape (3, 4, 4) (z, y, x voxels) differs from "
        "the EM's (3, 4, 5); labels must cover the EM voxel for voxel (use crops: to annotate "
        "part of it)"
    )
    np.save(tmp_path / "em16.npy", np.zeros((3, 4, 5), dtype=np.uint16))
    assert refusal(tmp_path, {**dataset, "em": {"path": "em16.npy"}}) == (
        f"{mapping}:3: datasets.0.em: dtype uint16; cellseg's EM is 8-bit (fibsem-uint8): "
        "convert it to uint8 with your own contrast window first"
    )
    bad = {k: v for k, v in dataset.items() if k != "voxel_size_nm"}
    assert refusal(tmp_path, bad) == (
        f"{mapping}:2: datasets.0: 'voxel_size_nm' is a required property; see docs/data.md, "
        "'Importing your own EM'"
    )
    bad = {**dataset, "labels": {"kind": "label_image", "source": {"path": "ids.npy"},
                                 "values": {1: "pm", 2: "none"}}}  # fmt: skip
    assert refusal(tmp_path, bad) == (
        f"{mapping}:17: datasets.0.labels.values: label value 3 of ids.npy has no mapping; add "
        "it (a class, or none) or set other_values: none|unknown"
    )
    bad = {**dataset, "labels": {**dataset["labels"], "derive_boundary": "membrane"}}
    assert refusal(tmp_path, bad) == (
        f"{mapping}:18: datasets.0.labels.derive_boundary: unknown class 'membrane'; use one of "
        "ecs, pm, mito_mem, mito_lum, mito_ribo, golgi_mem, golgi_lum, ves_mem, ves_lum, "
        "endo_mem, endo_lum, er_mem, er_lum, nuc (or a whole-organelle group: mito, golgi, ves, "
        "endo, er)"
    )
    store = tmp_path / "data" / "x" / "x.zarr"
    zarr.open_group(str(store), mode="w", zarr_format=2)
    assert refusal(tmp_path, dataset, store / "inner") == (
        f"--out {store / 'inner'}: lies inside the zarr store {store}; cellseg never writes into "
        "a data store: choose a data root outside it (e.g. ../imported, outside the clone)"
    )
    import_mapping(mapping, tmp_path / "out")
    assert refusal(tmp_path, dataset) == (
        f"{mapping}:2: datasets.0.name: {tmp_path / 'out' / 'toy'} already exists and an import "
        "never replaces data; choose another name: or another --out"
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["toy"]  # nothing else left


def test_cli_prints_one_line(tmp_path, capsys):
    dataset = synthetic(tmp_path)
    dataset["labels"]["kind"] = "masks"
    mapping = write_mapping(tmp_path, dataset)
    assert main(["import", "--mapping", str(mapping), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"cellseg import: error: {mapping}:13: datasets.0.labels: kind masks needs key masks\n"
    )
    assert not (tmp_path / "out").exists()


def test_example_mappings_are_valid():
    for name in ("gala_fibsem_mini", "flyem_medulla_fibsem", "cardona2010_sstem"):
        content = load_mapping(REPO / "config/import" / f"{name}.yaml").content
        assert content["datasets"][0]["labels"]["kind"] in {"label_image", "instance_ids", "masks"}


def test_sources_slices_zarr_and_hdf5(tmp_path):
    import tifffile
    from PIL import Image

    from cellseg.data.import_sources import read_volume

    volume = np.random.default_rng(2).integers(0, 255, size=(3, 4, 5), dtype=np.uint8)
    (tmp_path / "png").mkdir()
    (tmp_path / "tif").mkdir()
    for z, plane in enumerate(volume):
        Image.fromarray(plane).save(tmp_path / "png" / f"slice_{z:03d}.png")
        tifffile.imwrite(tmp_path / "tif" / f"slice_{z:03d}.tif", plane)
    group = zarr.open_group(str(tmp_path / "v.zarr"), mode="w", zarr_format=2)
    group.create_array("raw/s0", data=volume)
    for source in ({"path": "png"}, {"path": "tif"}, {"path": "v.zarr", "key": "raw/s0"}):
        assert np.array_equal(read_volume(source, tmp_path, "m.yaml:3: em"), volume)
    with pytest.raises(CellsegError, match=r"^m.yaml:3: em.key: .*v.zarr is a zarr group, not"):
        read_volume({"path": "v.zarr"}, tmp_path, "m.yaml:3: em")
    tifffile.imwrite(tmp_path / "zcyx.tif", np.stack([volume, volume + 1], axis=1))
    assert np.array_equal(
        read_volume({"path": "zcyx.tif", "channel": 1}, tmp_path, "m.yaml:3: em"), volume + 1
    )
    with pytest.raises(CellsegError, match=r"not a 3D \(z, y, x\) volume \(a 4D array: pick"):
        read_volume({"path": "zcyx.tif"}, tmp_path, "m.yaml:3: em")
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    with pytest.raises(CellsegError, match=r"^m.yaml:3: em: cannot read .*broken.tif as tiff \("):
        read_volume({"path": "broken.tif"}, tmp_path, "m.yaml:3: em")
    (tmp_path / "v.h5").write_bytes(b"")
    try:
        import h5py  # noqa: F401
    except ImportError:
        with pytest.raises(CellsegError, match=r"^m.yaml:3: em: .*v.h5 is HDF5, which needs h5py"):
            read_volume({"path": "v.h5", "key": "raw"}, tmp_path, "m.yaml:3: em")


def write_n5(folder: Path, volume: np.ndarray, block: tuple[int, int, int]) -> None:
    """An N5 dataset as the N5 spec lays it out (dimensions fastest first, gzip blocks)."""
    import gzip
    import json
    import struct

    folder.mkdir(parents=True)
    dims = list(volume.shape[::-1])
    (folder / "attributes.json").write_text(json.dumps({
        "dimensions": dims, "blockSize": list(block), "dataType": str(volume.dtype),
        "compression": {"type": "gzip"},
    }))  # fmt: skip
    grid = [range(-(-d // b)) for d, b in zip(dims, block, strict=True)]
    for index in itertools.product(*grid):
        lo = [i * b for i, b in zip(index, block, strict=True)]
        piece = volume[tuple(slice(c, c + b) for c, b in zip(lo[::-1], block[::-1], strict=True))]
        header = struct.pack(">HH", 0, 3) + struct.pack(">3I", *piece.shape[::-1])
        body = gzip.compress(piece.astype(piece.dtype.newbyteorder(">")).tobytes())
        target = folder.joinpath(*map(str, index))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(header + body)


def test_n5_source(tmp_path):
    from cellseg.data.import_sources import read_volume

    volume = np.random.default_rng(4).integers(0, 60000, size=(5, 6, 7)).astype(np.uint16)
    write_n5(tmp_path / "c.n5" / "labels", volume, (3, 4, 2))  # x y z block, edges partial
    read = read_volume({"path": "c.n5", "key": "labels"}, tmp_path, "m.yaml:3: em")
    assert read.dtype == np.uint16 and np.array_equal(read, volume)
