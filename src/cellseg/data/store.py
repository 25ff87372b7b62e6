"""The CellMap layout of a zarr store: its crops, which classes each annotates, and a crop's
geometry checked before anything reads it.

A store is ``{root}/{dataset}/{dataset}.zarr`` with EM at :data:`EM_GROUP` and one group per
crop under :data:`LABELS_ROOT`, one multiscale group per annotated class
(:mod:`cellseg.data.multiscale` parses those). :func:`read_crop_geometry` checks what the
metadata can tell (EM dtype, the classes sharing one box inside the EM volume, no undefined
missing chunks, a level near the training resolution); the checks that read voxel values are
:mod:`cellseg.data.voxel_checks`. Stores are only read: :func:`check_outside_stores` and
:func:`refuse_inside` refuse an output path inside one (SPEC §3).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TextIO

import numpy as np
import zarr

from cellseg.classes import CLASSES, GROUP_NAMES
from cellseg.data.multiscale import (
    LabelEncoding,
    Multiscale,
    format_nm,
    note_upsampled_em,
    open_group,
    read_multiscale,
    resolution_problem,
    transform_key,
)
from cellseg.errors import CellsegError
from cellseg.ownership import cellseg_metadata
from cellseg.voxels import Resolution

EM_GROUP = "recon-1/em/fibsem-uint8"
LABELS_ROOT = "recon-1/labels/groundtruth"


def parse_label_path(label_path: str) -> tuple[str, tuple[str, ...] | None]:
    """Split a datasplit label path ``…/cropN/[a,b]`` into the crop group and class list."""
    crop_group, _, last = label_path.rstrip("/").rpartition("/")
    if last.startswith("[") and last.endswith("]"):
        names = tuple(name.strip() for name in last[1:-1].split(",") if name.strip())
        return crop_group, names
    return label_path.rstrip("/"), None


@dataclass(frozen=True)
class Crop:
    """One annotated crop: where its EM and labels live and which of the 14 classes it annotates
    (then any group labels of :data:`cellseg.classes.GROUP_NAMES` it holds, issue 33 item 2).

    Only paths are held, so a ``Crop`` pickles cheaply into data-loader workers, which open their
    own read-only handles.
    """

    em_store: Path
    em_group: str
    label_store: Path
    crop_group: str
    classes: tuple[str, ...]
    split: str = "train"

    @property
    def name(self) -> str:
        """``dataset/cropN``, unique across data roots of the CellMap layout."""
        return f"{self.label_store.stem}/{self.crop_group.rsplit('/', 1)[-1]}"

    @property
    def label_path(self) -> str:
        return f"{self.crop_group}/[{','.join(self.classes)}]"


def discover_crops(root: Path | str, log: TextIO | None = None) -> list[Crop]:
    """Every crop of every ``{root}/{dataset}/{dataset}.zarr``, with the 14-class subset it annotates.

    A ``{root}/{dir}/{name}.zarr`` whose directory and store names differ is not of the layout
    and is skipped, with one line on ``log`` (stderr by default) saying so.

    Raises:
        CellsegError: the root has no CellMap store, or a store lacks EM or ground truth.
    """
    root = Path(root)
    if not root.is_dir():
        raise CellsegError(f"{root}: data root does not exist or is not a directory")
    stores = []
    for candidate in sorted(root.glob("*/*.zarr")):
        if candidate.stem == candidate.parent.name:
            stores.append(candidate)
        else:
            print(
                f"skipped {candidate}: its directory is named {candidate.parent.name!r}, not "
                f"{candidate.stem!r}; the CellMap layout is {{dataset}}/{{dataset}}.zarr: "
                "rename the directory or the store to use it",
                file=log or sys.stderr,
            )
    if not stores:
        raise CellsegError(
            f"{root}: no '{{dataset}}/{{dataset}}.zarr' stores found; expected the CellMap layout"
        )
    crops = []
    for store in stores:
        group = open_group(store)
        read_multiscale(group, store, EM_GROUP)
        try:
            groundtruth = group[LABELS_ROOT]
        except KeyError:
            raise CellsegError(
                f"{store}/{LABELS_ROOT}: no ground-truth group in this store"
            ) from None
        for crop_name in sorted(name for name, _ in groundtruth.groups()):
            present = {name for name, _ in groundtruth[crop_name].groups()}
            # group labels (whole organelles, issue 33 item 2) after the 14: none, no change
            classes = tuple(name for name in (*CLASSES, *GROUP_NAMES) if name in present)
            if classes:
                crops.append(Crop(store, EM_GROUP, store, f"{LABELS_ROOT}/{crop_name}", classes))
    return crops


@dataclass(frozen=True)
class CropGeometry:
    """The parsed multiscales of a crop's EM and of each annotated class."""

    em: Multiscale
    labels: Mapping[str, Multiscale]
    encodings: Mapping[str, LabelEncoding]

    @cached_property
    def bounds_nm(self) -> tuple[np.ndarray, np.ndarray]:
        """Union of the annotated classes' boxes, nm ``(z, y, x)``."""
        starts, stops = zip(*(m.bounds_nm for m in self.labels.values()), strict=True)
        return np.min(starts, axis=0), np.max(stops, axis=0)


def read_crop_geometry(crop: Crop, resolution_nm: Resolution | None = None) -> CropGeometry:
    """Open and validate a crop: EM and label multiscales, encodings and placement.

    Args:
        crop: the crop to check.
        resolution_nm: when given, also check that some level of every array is within a factor
            of 2 of it, axis by axis (one number or ``(z, y, x)`` nm; a 32 nm crop cannot train an 8 nm model without inventing detail).

    Raises:
        CellsegError: a missing array, malformed ``multiscales``, a crop outside the EM volume,
            or a resolution no level can serve; the message names the path and the fix.
    """
    em_root = open_group(crop.em_store)
    em = read_multiscale(em_root, crop.em_store, crop.em_group)
    check_em_dtype(em_root, em)
    label_root = em_root if crop.label_store == crop.em_store else open_group(crop.label_store)
    labels, encodings = {}, {}
    for name in crop.classes:
        if name not in CLASSES and name not in GROUP_NAMES:
            raise CellsegError(
                f"{crop.label_store}/{crop.crop_group}: unknown class {name!r}; "
                f"classes are {', '.join(CLASSES)} (groups: {', '.join(GROUP_NAMES)})"
            )
        multiscale = read_multiscale(label_root, crop.label_store, f"{crop.crop_group}/{name}")
        labels[name] = multiscale
        encodings[name] = LabelEncoding.from_attributes(multiscale.attributes, multiscale.location)
        _check_missing_chunks(label_root, multiscale)
    geometry = CropGeometry(em, labels, encodings)
    _check_classes_agree(labels)
    for multiscale in labels.values():
        _check_inside_em(multiscale, em)
    if resolution_nm is not None:
        for multiscale in (em, *labels.values()):
            problem = resolution_problem(multiscale, resolution_nm)
            if problem:
                raise CellsegError(
                    f"{problem}; choose a resolution_nm the data has, or drop this crop from the "
                    "datasplit (if that scale is wrong, fix it in "
                    f"{transform_key(multiscale, multiscale.level_for(resolution_nm))})"
                )
        note_upsampled_em(em, resolution_nm)  # within a factor of 2, but far from it
    return geometry


def check_em_dtype(root: zarr.Group, em: Multiscale) -> None:
    """EM must be ``uint8`` (or floating point holding values on the same 0-255 scale):
    ``data.em_range`` is a window of 8-bit values, so a ``uint16`` array (CellMap's
    ``fibsem-uint16``) would saturate every voxel at the top of the window and the model would
    see a constant image. Any other integer dtype is refused rather than rescaled: a 16-bit
    volume's useful window is not a fixed map of the 8-bit one, and CellMap stores carry the
    8-bit EM.

    Raises:
        CellsegError: naming the level, its dtype and the fix.
    """
    for level in em.levels:
        dtype = np.dtype(root[f"{em.group}/{level.path}"].dtype)
        if dtype != np.uint8 and dtype.kind != "f":
            raise CellsegError(
                f"{em.location}/{level.path}: EM dtype is {dtype}, but cellseg reads uint8 EM "
                "(data.em_range is a window of 8-bit values, so this array would saturate); "
                f"use the store's 8-bit EM group ({EM_GROUP}) or convert this one to uint8"
            )


def _check_classes_agree(labels: Mapping[str, Multiscale]) -> None:
    """The classes of one crop are annotated on one box: a class array shifted or cut against
    the others would be scored against the wrong voxels. Each class's box (its finest level, nm)
    must equal the box most classes share, to within half a voxel of the coarser of the two.

    Raises:
        CellsegError: naming the array that differs, the one it is compared with, both boxes.
    """
    if len(labels) < 2:
        return
    boxes = {name: m.bounds_nm for name, m in labels.items()}

    def key(name: str) -> tuple[float, ...]:
        start, stop = boxes[name]
        return tuple(round(float(v), 3) for v in (*start, *stop))

    shared = Counter(key(name) for name in labels)
    reference = next(name for name in labels if shared[key(name)] == max(shared.values()))
    ref_start, ref_stop = boxes[reference]
    for name, multiscale in labels.items():
        start, stop = boxes[name]
        tolerance = (
            np.maximum(
                np.asarray(multiscale.finest.voxel_size_nm),
                np.asarray(labels[reference].finest.voxel_size_nm),
            )
            / 2
        )
        if np.all(np.abs(start - ref_start) < tolerance) and np.all(
            np.abs(stop - ref_stop) < tolerance
        ):
            continue
        raise CellsegError(
            f"{multiscale.location}: box {format_nm(start)}–{format_nm(stop)} nm differs from "
            f"{labels[reference].location}'s {format_nm(ref_start)}–{format_nm(ref_stop)} nm (offset "
            f"{format_nm(start - ref_start)} nm, size {format_nm(stop - start)} vs "
            f"{format_nm(ref_stop - ref_start)} nm); the classes of a crop share one box, or one is "
            f"scored against the wrong voxels: fix that array's translation or shape "
            f"({transform_key(multiscale, multiscale.finest)}), or leave the class out of the "
            "crop's [classes] in the datasplit"
        )


def crop_resolution_problem(crop: Crop, resolution_nm: Resolution) -> str | None:
    """Why a crop's labels cannot be read at ``resolution_nm`` (see
    :func:`~cellseg.data.multiscale.resolution_problem`), or None when every class has a level near it."""
    geometry = read_crop_geometry(crop)
    for multiscale in geometry.labels.values():
        problem = resolution_problem(multiscale, resolution_nm)
        if problem:
            return problem
    return None


def _check_inside_em(labels: Multiscale, em: Multiscale) -> None:
    """The label array's box must lie inside the EM volume; when it does not, say whether its
    scale or its translation is to blame.

    With translation ``t`` (centre of voxel 0) inside the EM box, a voxel size ``s`` fits while
    ``t - s/2 >= em_start`` and ``t + (n - 1/2) s <= em_stop``; a box that only a smaller ``s``
    fits points at the scale, a ``t`` outside the EM box at the translation.

    Raises:
        CellsegError: naming the array, the scale found, the voxel sizes that would fit and the
            attribute key to fix.
    """
    em_start, em_stop = em.bounds_nm
    level = labels.finest
    start, stop = level.start_nm, level.stop_nm
    tolerance = 1e-3
    if np.all(start >= em_start - tolerance) and np.all(stop <= em_stop + tolerance):
        return
    key = transform_key(labels, level)
    where = (
        f"{labels.location}/{level.path}: scale {format_nm(level.voxel_size_nm)} nm × shape "
        f"{list(level.shape)} from translation {format_nm(level.translation_nm)} nm covers "
        f"{format_nm(start)}–{format_nm(stop)} nm, outside the EM volume {format_nm(em_start)}–{format_nm(em_stop)} nm"
    )
    t = np.asarray(level.translation_nm)
    if np.any(t < em_start - tolerance) or np.any(t > em_stop + tolerance):
        raise CellsegError(
            f"{where}; its first voxel already lies outside, so no voxel size fits: fix the "
            f"translation in {key} (the centre of voxel 0, nm)"
        )
    n = np.asarray(level.shape, dtype=float)
    fits = np.minimum(2 * (t - em_start), (em_stop - t) / (n - 0.5))
    em_sizes = sorted(
        {lv.voxel_size_nm for lv in em.levels if np.all(np.asarray(lv.voxel_size_nm) <= fits)},
        key=lambda size: -float(np.prod(size)),
    )
    hint = f" (e.g. the EM's {format_nm(em_sizes[0])} nm)" if em_sizes else ""
    raise CellsegError(
        f"{where}; from that translation only voxel sizes up to {format_nm(fits)} nm fit{hint}: fix "
        f"the scale in {key}, or its translation if the scale is right"
    )


def _check_missing_chunks(root: zarr.Group, labels: Multiscale) -> None:
    """A label array with no ``fill_value`` must store every chunk.

    zarr reads a chunk that is not stored as the array's ``fill_value`` (the zarr v2 spec), and
    writers skip chunks that hold only that value (zarr-python 3's default
    ``write_empty_chunks=False``; cellseg's demo writes label arrays that way), so with a fill
    value of 0 (CellMap's ``absent``) a missing chunk is background by construction. With a
    ``null`` fill value the spec leaves a missing chunk undefined (zarr-python returns zeros),
    so it is refused rather than read as background. Listing the chunks costs one directory
    listing per level, and only for such arrays.
    """
    for level in labels.levels:
        array = root[f"{labels.group}/{level.path}"]
        if array.fill_value is not None:
            continue
        stored, expected = array.nchunks_initialized, array.nchunks
        if stored < expected:
            raise CellsegError(
                f"{labels.location}/{level.path}: {expected - stored} of {expected} chunks are "
                "missing and the array's fill_value is null, so what they hold is undefined; "
                'copy the array again, or set "fill_value" in its .zarray to the value a '
                "missing chunk means (the encoding's absent, usually 0)"
            )


def check_outside_stores(path: Path | str, crops: Sequence[Crop] = ()) -> None:
    """Refuse an output path inside (or over) a zarr store: SPEC §3, cellseg never writes into
    the user's data.

    Args:
        path: the file or directory about to be written.
        crops: crops whose EM and label stores must not contain ``path``; any directory named
            ``*.zarr`` on the path is refused too.

    Raises:
        CellsegError: one line naming the store and asking for a path under results/.
    """
    resolved = Path(path).resolve()
    stores = {Path(s) for crop in crops for s in (crop.em_store, crop.label_store)}
    # the path itself may be a store cellseg wrote there before (evaluate --predictions, run
    # again), which it replaces whole; anything else named *.zarr is the user's
    own = cellseg_metadata(resolved) is not None
    stores |= {
        p
        for p in (resolved, *resolved.parents)
        if p.suffix == ".zarr" and p.is_dir() and not (p == resolved and own)
    }
    refuse_inside(path, stores)


def refuse_inside(path: Path | str, stores: Iterable[Path | str], what: str = "data store") -> None:
    """Refuse ``path`` when it is one of ``stores``, lies inside one, or contains one.

    Raises:
        CellsegError: one line naming the store (as ``what``) and asking for a path under
            results/.
    """
    resolved = Path(path).resolve()
    for store in sorted({Path(s).resolve() for s in stores}):
        if resolved == store or store in resolved.parents or resolved in store.parents:
            raise CellsegError(
                f"{path}: would be written inside or over the {what} {store}; "
                "choose a path under results/"
            )
