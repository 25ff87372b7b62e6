"""``cellseg import``: a lab's own EM volume and labels into the CellMap layout (SPEC §11).

A small YAML *mapping* file (format in docs/data.md, "Importing your own EM"; examples under
``config/import/``) names, per dataset, the EM source, its voxel size and offset in nm, the
labels (one binary mask per class, a label image with a value-to-class map, or instance ids with
an optional boundary class derived from the faces between ids), unknown regions and the crops.
The import writes ``{out}/{dataset}/{dataset}.zarr`` (zarr format 2): the EM pyramid
``recon-1/em/fibsem-uint8/s0…`` and per crop ``recon-1/labels/groundtruth/{crop}/{class}/s0…``
plus ``all``, every group with OME-NGFF ``multiscales`` in nm and ``cellmap.annotation``
attributes, through the demo's own writers (:mod:`cellseg.ngff`,
:mod:`cellseg.data.label_codes`). It writes under a temporary name, reads the result back
through cellseg's reader (:func:`~cellseg.data.store.discover_crops`,
:func:`~cellseg.data.store.read_crop_geometry`, :func:`~cellseg.data.store.check_label_data`)
and only then renames it into place; it never replaces or deletes a dataset it did not just
write.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.classes import CLASSES, GROUP_NAMES
from cellseg.data.demo_layout import EM_PATH, LABELS_PATH
from cellseg.data.import_mapping import MappingFile, load_mapping
from cellseg.data.import_sources import read_volume
from cellseg.data.label_codes import (
    CODE,
    GROUP_CODE,
    INSTANCE_CLASSES,
    NUC_BASE,
    UNKNOWN,
    UNKNOWN_CODE,
    all_attrs,
    annotation_attrs,
    arrays_from_codes,
)
from cellseg.errors import CellsegError
from cellseg.ngff import (
    CHUNK,
    downsample_labels,
    downsample_mean,
    pyramid_levels,
    write_multiscale_array,
)

DESCRIPTION = (
    "Import your own EM volume and labels (TIFF, .npy, HDF5, zarr, N5 or a folder of slices) into "
    "the CellMap layout, as a YAML mapping file describes (docs/data.md, 'Importing your own EM')."
)
IMPORTING_MARKER = ".cellseg-import"
"""File inside ``{out}/.{dataset}.importing/``: the temporary folder is cellseg's own, so a run
killed mid-write may remove it the next time."""
MAX_INSTANCES = NUC_BASE * 64 - 2
"""Instance ids are written as 1..N skipping 255 (CellMap's unknown), in the demo's uint16 code
space above :data:`NUC_BASE`."""

# ------------------------------------------------------------------------------ labels


def derive_boundary(ids: np.ndarray, background: int = 0, unknown: int | None = None) -> np.ndarray:
    """Boundary voxels of an instance-id volume: a voxel is boundary when one of its 6
    face-neighbours holds an id that is neither ``background`` nor ``unknown`` and differs from
    its own. Both sides of a face between two ids are boundary (a membrane two voxels thick);
    a background voxel touching an id is boundary too; an ``unknown`` voxel never is. Computed on
    the whole volume, so a crop's edge voxels see their true neighbours."""
    labelled = ids != background
    if unknown is not None:
        labelled &= ids != unknown
    boundary = np.zeros(ids.shape, dtype=bool)
    for axis in range(ids.ndim):
        low = tuple(slice(0, -1) if a == axis else slice(None) for a in range(ids.ndim))
        high = tuple(slice(1, None) if a == axis else slice(None) for a in range(ids.ndim))
        differ = ids[low] != ids[high]
        boundary[low] |= differ & labelled[high]
        boundary[high] |= differ & labelled[low]
    if unknown is not None:
        boundary &= ids != unknown
    return boundary


def _class_code(name: str) -> int:
    if name in GROUP_CODE:  # a whole-organelle group label (issue 33 item 2)
        return GROUP_CODE[name]
    return NUC_BASE + 1 if name in INSTANCE_CLASSES else CODE[name]


def _same_shape(array: np.ndarray, shape: tuple[int, ...], where: str) -> None:
    if array.shape != shape:
        raise CellsegError(
            f"{where}: shape {array.shape} (z, y, x voxels) differs from the EM's {shape}; labels "
            "must cover the EM voxel for voxel (use crops: to annotate part of it)"
        )


def label_codes(
    mapping: MappingFile, index: int, shape: tuple[int, ...], base: Path
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Dataset ``index``'s labels as the demo's uint16 codes (:mod:`cellseg.data.label_codes`:
    0 annotated with no class, a class's code, ``NUC_BASE + id``, ``UNKNOWN_CODE``) over the
    whole EM ``shape``, and the classes the crops annotate (in cellseg's class order)."""
    labels = mapping.content["datasets"][index]["labels"]
    at = lambda *keys: mapping.at("datasets", index, "labels", *keys)  # noqa: E731
    codes = np.zeros(shape, dtype=np.uint16)
    kind = labels["kind"]
    if kind == "masks":
        classes = set(labels["masks"])
        # voxels two masks claim: refused, or (overlap: unknown) written as unknown, as a
        # contradiction says nothing of either class
        contested = np.zeros(shape, dtype=bool)
        for name, source in labels["masks"].items():
            mask = read_volume(source, base, at("masks", name))
            _same_shape(mask, shape, at("masks", name))
            present = mask != 0
            overlap = present & (codes != 0)
            if overlap.any() and labels.get("overlap", "refuse") == "refuse":
                raise CellsegError(
                    f"{at('masks', name)}: {int(overlap.sum())} voxels also lie in another "
                    "mask; the 14 classes are mutually exclusive: make the masks disjoint, or "
                    "set labels.overlap: unknown to write those voxels as unknown"
                )
            codes[present] = _class_code(name)
            contested |= overlap
        codes[contested] = UNKNOWN_CODE
    elif kind == "label_image":
        image = read_volume(labels["source"], base, at("source"))
        _same_shape(image, shape, at("source"))
        values, inverse = np.unique(image, return_inverse=True)
        mapped = {int(v): c for v, c in labels["values"].items()}
        classes = {c for c in mapped.values() if c != "none"}
        table = np.zeros(len(values), dtype=np.uint16)
        for i, value in enumerate(values.tolist()):
            if value == labels.get("unknown_value"):
                table[i] = UNKNOWN_CODE
            elif value in mapped:
                table[i] = 0 if mapped[value] == "none" else _class_code(mapped[value])
            elif labels.get("other_values"):
                table[i] = UNKNOWN_CODE if labels["other_values"] == "unknown" else 0
            else:
                raise CellsegError(
                    f"{at('values')}: label value {value} of {labels['source']['path']} has no "
                    "mapping; add it (a class, or none) or set other_values: none|unknown"
                )
        codes = table[inverse.reshape(shape)]
    else:
        ids = read_volume(labels["source"], base, at("source"))
        _same_shape(ids, shape, at("source"))
        background = int(labels.get("background_value", 0))
        unknown = labels.get("unknown_value")
        classes = set()
        if labels.get("instance_class"):
            name = labels["instance_class"]
            classes.add(name)
            inside = ids != background
            if unknown is not None:
                inside &= ids != unknown
            if name in INSTANCE_CLASSES:
                found, inverse = np.unique(ids[inside], return_inverse=True)
                if len(found) > MAX_INSTANCES:
                    raise CellsegError(f"{at('source')}: {len(found)} instances, at most "
                                       f"{MAX_INSTANCES} can be written; merge some ids")  # fmt: skip
                new_ids = np.arange(1, len(found) + 1)
                new_ids += new_ids >= UNKNOWN  # 255 is CellMap's unknown: never an id
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
        annotated = read_volume(labels["annotated"], base, at("annotated"))
        _same_shape(annotated, shape, at("annotated"))
        codes[annotated == 0] = UNKNOWN_CODE
    if "unknown_mask" in labels:
        unknown_mask = read_volume(labels["unknown_mask"], base, at("unknown_mask"))
        _same_shape(unknown_mask, shape, at("unknown_mask"))
        codes[unknown_mask != 0] = UNKNOWN_CODE
    return codes, tuple(c for c in (*CLASSES, *GROUP_NAMES) if c in classes)


# ------------------------------------------------------------------------------ crops


@dataclass(frozen=True)
class CropBox:
    """A crop's name and box in voxels of the EM's s0 (``start``, ``stop``; z y x)."""

    name: str
    start: tuple[int, int, int]
    stop: tuple[int, int, int]


def crop_boxes(
    mapping: MappingFile, index: int, shape: tuple[int, ...], voxel: Sequence[float],
    offset: Sequence[float],
) -> list[CropBox]:  # fmt: skip
    """The dataset's crops in voxels: the whole volume (``crop1``) when ``crops`` is absent;
    boxes given in ``voxels`` (start index, size) or in ``nm`` (world start of the first voxel's
    centre, and size), which must land on whole EM voxels."""
    listed = mapping.content["datasets"][index].get("crops")
    if not listed:
        return [CropBox("crop1", (0, 0, 0), tuple(int(n) for n in shape))]  # type: ignore[arg-type]
    boxes: list[CropBox] = []
    for i, crop in enumerate(listed):
        where = mapping.at("datasets", index, "crops", i)
        start, size = np.asarray(crop["start"], float), np.asarray(crop["size"], float)
        if crop["unit"] == "nm":
            start = (start - np.asarray(offset)) / np.asarray(voxel)
            size = size / np.asarray(voxel)
        if not (np.allclose(start, np.round(start), atol=1e-6) and
                np.allclose(size, np.round(size), atol=1e-6)):  # fmt: skip
            raise CellsegError(
                f"{where}: start/size {crop['start']}/{crop['size']} {crop['unit']} do not land "
                f"on whole voxels of {list(voxel)} nm from offset {list(offset)}; round them"
            )
        lo, n = np.round(start).astype(int), np.round(size).astype(int)
        if (lo < 0).any() or (n <= 0).any() or (lo + n > np.asarray(shape)).any():
            raise CellsegError(
                f"{where}: box from voxel {lo.tolist()} of size {n.tolist()} is not inside the "
                f"EM's {list(shape)} voxels; shrink or move it"
            )
        name = crop.get("name", f"crop{i + 1}")
        if name in {b.name for b in boxes}:
            raise CellsegError(f"{where}.name: crop {name} is named twice; rename one")
        boxes.append(CropBox(name, tuple(lo.tolist()), tuple((lo + n).tolist())))  # type: ignore[arg-type]
    return boxes


# ------------------------------------------------------------------------------ writing


def _label_pyramid(codes: np.ndarray) -> list[np.ndarray]:
    """Label code levels s0… (block mode over 2×2×2, any unknown voxel makes a block unknown);
    an odd axis is padded by repeating its last voxel, so level k has ``ceil(n / 2**k)``."""
    levels = [codes]
    for _ in range(1, pyramid_levels(codes.shape, CHUNK)):
        last = levels[-1]
        pad = [(0, n % 2) for n in last.shape]
        levels.append(downsample_labels(np.pad(last, pad, mode="edge"), UNKNOWN_CODE))
    return levels


def _em_pyramid(em: np.ndarray) -> list[np.ndarray]:
    levels = [np.ascontiguousarray(em)]
    for _ in range(1, pyramid_levels(em.shape, CHUNK)):
        levels.append(downsample_mean(levels[-1], 2))
    return levels


def _refuse_store_ancestors(out: Path) -> None:
    for path in (out, *out.parents):
        if path.suffix == ".zarr" or any((path / n).is_file() for n in (".zgroup", "zarr.json")):
            raise CellsegError(
                f"--out {out}: lies inside the zarr store {path}; cellseg never writes into a "
                "data store: choose a data root outside it (e.g. ../imported, outside the clone)"
            )


def _temporary_root(out: Path, name: str) -> Path:
    """``{out}/.{name}.importing``, made empty; refused when it exists without cellseg's marker."""
    temporary = out / f".{name}.importing"
    if temporary.exists():
        if not (temporary / IMPORTING_MARKER).is_file():
            raise CellsegError(
                f"{temporary}: exists and is not an unfinished import of cellseg's; move it away"
            )
        shutil.rmtree(temporary)  # an earlier import of ours killed mid-write
    temporary.mkdir(parents=True)
    (temporary / IMPORTING_MARKER).write_text("unfinished `cellseg import`; safe to delete\n")
    return temporary


def validate(root: Path, name: str, expected: Sequence[CropBox]) -> list[str]:
    """Read a written dataset back through cellseg's reader; return its crops' label paths.

    Raises:
        CellsegError: the reader refuses the store, or finds other crops than were written.
    """
    from cellseg.data.store import check_label_data, discover_crops, read_crop_geometry

    crops = [c for c in discover_crops(root) if c.em_store.parent.name == name]
    found = sorted(c.crop_group.rsplit("/", 1)[1] for c in crops)
    if found != sorted(b.name for b in expected):
        raise CellsegError(
            f"{root / name}: the reader finds crops {found}, not the {len(expected)} written; "
            "this is a bug of cellseg import: please report it"
        )
    for crop in crops:
        check_label_data(read_crop_geometry(crop))
    return [c.crop_group for c in crops]


def import_dataset(mapping: MappingFile, index: int, out: Path, base: Path) -> Path:
    """Import dataset ``index`` of ``mapping`` under ``out``; return the written ``.zarr`` store.

    ``base``: folder that relative source paths are resolved against. Refuses (one line) an
    existing ``{out}/{name}``, a non-uint8 EM, labels of another shape than the EM, a label
    value without a mapping and crops off the voxel grid or outside the volume.
    """
    import zarr

    dataset = mapping.content["datasets"][index]
    name = dataset["name"]
    at = lambda *keys: mapping.at("datasets", index, *keys)  # noqa: E731
    final = out / name
    if final.exists():
        raise CellsegError(
            f"{at('name')}: {final} already exists and an import never replaces data; choose "
            "another name: in the mapping file or another --out"
        )
    voxel = [float(v) for v in dataset["voxel_size_nm"]]
    offset = [float(v) for v in dataset.get("offset_nm", (0.0, 0.0, 0.0))]
    em = read_volume(dataset["em"], base, at("em"))
    if em.dtype != np.uint8:
        raise CellsegError(
            f"{at('em')}: dtype {em.dtype}; cellseg's EM is 8-bit (fibsem-uint8): convert it "
            "to uint8 with your own contrast window first"
        )
    codes, classes = label_codes(mapping, index, em.shape, base)
    boxes = crop_boxes(mapping, index, em.shape, voxel, offset)
    temporary = _temporary_root(out, name)
    store = temporary / name / f"{name}.zarr"
    root = zarr.open_group(str(store), mode="w-", zarr_format=2)
    root.attrs["cellseg_import"] = {
        "mapping": str(mapping.path.resolve()),
        "mapping_sha256": hashlib.sha256(mapping.path.read_bytes()).hexdigest(),
        "dataset": json.loads(json.dumps(dataset)),
    }
    em_parent, em_name = EM_PATH.rsplit("/", 1)
    write_multiscale_array(root.require_group(em_parent), em_name, _em_pyramid(em), voxel, offset)
    groundtruth = root.require_group(LABELS_PATH)
    for box in boxes:
        region = tuple(slice(a, b) for a, b in zip(box.start, box.stop, strict=True))
        translation = [o + s * v for o, s, v in zip(offset, box.start, voxel, strict=True)]
        levels = _label_pyramid(codes[region])
        per_name: dict[str, list[np.ndarray]] = {}
        for level in levels:
            for group, array in arrays_from_codes(level, classes):
                per_name.setdefault(group, []).append(array)
        crop_group = groundtruth.require_group(box.name)
        for group, arrays in per_name.items():
            attrs = all_attrs(classes) if group == "all" else annotation_attrs(group)
            write_multiscale_array(crop_group, group, arrays, voxel, translation, attrs)
    try:
        validate(temporary, name, boxes)
    except CellsegError as error:
        raise CellsegError(
            f"{error} (the unfinished import is kept in {temporary} for inspection)"
        ) from None
    os.rename(temporary / name, final)
    shutil.rmtree(temporary)
    return final / f"{name}.zarr"


def import_mapping(
    mapping_path: Path | str, out: Path | str, source_root: Path | str | None = None
) -> list[Path]:
    """Import every dataset of a mapping file under ``out``; return the written stores.

    Relative source paths resolve against ``source_root`` when given, else the mapping file's
    folder. Every dataset is checked for an existing output before any is written.
    """
    mapping = load_mapping(mapping_path)
    out = Path(out).absolute()
    _refuse_store_ancestors(out)
    if out.exists() and not out.is_dir():
        raise CellsegError(f"--out {out}: exists and is not a directory; choose a data root folder")
    for i, dataset in enumerate(mapping.content["datasets"]):
        if (out / dataset["name"]).exists():
            raise CellsegError(
                f"{mapping.at('datasets', i, 'name')}: {out / dataset['name']} already exists and "
                "an import never replaces data; choose another name: or another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    base = Path(source_root) if source_root is not None else mapping.path.parent
    return [import_dataset(mapping, i, out, base) for i in range(len(mapping.content["datasets"]))]


def add_parser(subparsers: Any) -> None:
    """Register ``cellseg import``."""
    parser = subparsers.add_parser(
        "import", help="import your own EM and labels into the CellMap layout",
        description=DESCRIPTION,
    )  # fmt: skip
    parser.add_argument("--mapping", type=Path, required=True, help="the YAML mapping file")
    parser.add_argument(
        "--out", type=Path, required=True,
        help="data root to write {dataset}/{dataset}.zarr under (never inside a zarr store)",
    )  # fmt: skip
    parser.add_argument(
        "--source-root", type=Path,
        help="folder the mapping's relative paths resolve against (default: the mapping's folder)",
    )  # fmt: skip
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    for store in import_mapping(args.mapping, args.out, args.source_root):
        print(f"wrote {store}")
    print(f"imported in {time.perf_counter() - started:.1f} s; check: cellseg datasplit --root "
          f"{args.out} --out datasplit.csv")  # fmt: skip
    return 0
