"""Reading CellMap zarr stores: OME-NGFF multiscales, crops, label encodings.

World coordinates are in nanometres, axes ``(z, y, x)``. An OME-NGFF ``translation`` is the
centre of the array's first voxel, so voxel ``i`` of a level with voxel size ``s`` and
translation ``t`` is centred at ``t + i * s`` and covers ``[t + (i - 1/2) s, t + (i + 1/2) s)``.
Stores are always opened read-only: nothing here writes into the user's data.

Why one module of about 1,000 lines: it is the one place that knows the CellMap layout (the
multiscale geometry, the crops, the label encodings, their errors), which every reader of the
package goes through; a reader that needed half of it would have to import both halves anyway.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import zarr

from cellseg.classes import CLASSES, GROUP_NAMES
from cellseg.errors import CellsegError
from cellseg.ownership import cellseg_metadata

EM_GROUP = "recon-1/em/fibsem-uint8"
LABELS_ROOT = "recon-1/labels/groundtruth"

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class ScaleLevel:
    """One level of an OME-NGFF multiscale group.

    Attributes:
        path: array name inside the group, e.g. ``"s0"``.
        voxel_size_nm: ``(z, y, x)`` voxel size in nm.
        translation_nm: ``(z, y, x)`` centre of voxel ``(0, 0, 0)`` in nm.
        shape: ``(z, y, x)`` array shape in voxels.
    """

    path: str
    voxel_size_nm: Vec3
    translation_nm: Vec3
    shape: tuple[int, int, int]

    @property
    def start_nm(self) -> np.ndarray:
        """Lower corner of the first voxel, nm ``(z, y, x)``."""
        return np.asarray(self.translation_nm) - np.asarray(self.voxel_size_nm) / 2

    @property
    def stop_nm(self) -> np.ndarray:
        """Upper corner of the last voxel, nm ``(z, y, x)``."""
        return self.start_nm + np.asarray(self.shape) * np.asarray(self.voxel_size_nm)

    def world_to_index(self, world_nm: np.ndarray) -> np.ndarray:
        """Continuous voxel index (voxel centres at integers) of world points ``(..., 3)`` in nm."""
        return (world_nm - np.asarray(self.translation_nm)) / np.asarray(self.voxel_size_nm)


# What zarr and numcodecs raise for a chunk they cannot decode: blosc/zstd report corrupt or
# truncated bytes as RuntimeError, a chunk of the wrong size fails its reshape with ValueError,
# and an unreadable file is an OSError. IndexError and TypeError (a bad selection: a bug) pass.
_UNREADABLE_CHUNK = (RuntimeError, ValueError, OSError)


class StoredArray:
    """A read-only level array that turns an undecodable chunk into a one-line error.

    Behaves like the ``zarr.Array`` for what cellseg reads (``shape``, ``chunks``, ``dtype``,
    ``array[z0:z1, y0:y1, x0:x1]``). A corrupt chunk (a broken download or copy) otherwise raises
    a blosc/numcodecs error that names neither the array nor the chunk; here the message names
    the array's path, the chunk file and the region read, and asks for the array to be copied
    again. The happy path costs one ``try``.

    Attributes:
        array: the zarr array.
        location: ``{store}/{group}/{level}``, as messages name it.
    """

    __slots__ = ("array", "location")

    def __init__(self, array: zarr.Array, location: str) -> None:
        self.array = array
        self.location = location

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.array.chunks)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def fill_value(self) -> Any:
        return self.array.fill_value

    def __getitem__(self, selection: Any) -> np.ndarray:
        try:
            return self.array[selection]
        except _UNREADABLE_CHUNK as error:
            raise self._unreadable(selection, error) from None

    def _unreadable(self, selection: Any, error: Exception) -> CellsegError:
        """The one-line error of a failed read; finds the first undecodable chunk by reading the
        selection's chunks one at a time (only on this error path)."""
        region = _as_slices(selection, self.shape)
        where = "" if region is None else " reading voxels " + _format_region(region)
        bad = None if region is None else self._first_bad_chunk(region)
        if bad is not None:
            key, error = bad
            separator = getattr(self.array.metadata, "dimension_separator", ".") or "."
            what = f"chunk {key} (file {self.location}/{separator.join(map(str, key))})"
        else:
            what = "a chunk"
        detail = " ".join(f"{type(error).__name__}: {error}".split())
        return CellsegError(
            f"{self.location}: {what} cannot be decoded ({detail}){where}; the copy of this "
            "array is corrupt or incomplete: download or copy the array again"
        )

    def _first_bad_chunk(
        self, region: tuple[slice, ...]
    ) -> tuple[tuple[int, ...], Exception] | None:
        ranges = [
            range(s.start // c, -(-s.stop // c)) for s, c in zip(region, self.chunks, strict=True)
        ]
        for key in itertools.product(*ranges):
            box = tuple(
                slice(i * c, min((i + 1) * c, n))
                for i, c, n in zip(key, self.chunks, self.shape, strict=True)
            )
            try:
                self.array[box]
            except _UNREADABLE_CHUNK as error:
                return key, error
        return None


def _as_slices(selection: Any, shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    """``selection`` as one step-1 slice per axis (clipped to ``shape``), or None when it is not
    made of slices and integers."""
    items = selection if isinstance(selection, tuple) else (selection,)
    if Ellipsis in items:
        position = items.index(Ellipsis)
        fill = (slice(None),) * (len(shape) - len(items) + 1)
        items = items[:position] + fill + items[position + 1 :]
    items = items + (slice(None),) * (len(shape) - len(items))
    if len(items) != len(shape):
        return None
    region = []
    for item, n in zip(items, shape, strict=True):
        if isinstance(item, slice):
            start, stop, _ = item.indices(n)
            region.append(slice(start, max(start, stop)))
        elif isinstance(item, int | np.integer):
            index = int(item) % n if n else 0
            region.append(slice(index, index + 1))
        else:
            return None
    return tuple(region)


def _format_region(region: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in region) + "]"


@dataclass(frozen=True)
class Multiscale:
    """A multiscale group (EM or one label class) of a zarr store."""

    store: Path
    group: str
    levels: tuple[ScaleLevel, ...]
    attributes: Mapping[str, Any]

    @property
    def location(self) -> str:
        return f"{self.store}/{self.group}"

    def level_for(self, resolution_nm: float | Vec3) -> ScaleLevel:
        """The level whose voxel size is nearest ``resolution_nm`` (in log scale; ties → finer)."""
        target = np.broadcast_to(np.asarray(resolution_nm, dtype=float), (3,))

        def distance(level: ScaleLevel) -> tuple[float, float]:
            ratio = np.log2(np.asarray(level.voxel_size_nm) / target)
            return float(np.abs(ratio).sum()), float(np.prod(level.voxel_size_nm))

        return min(self.levels, key=distance)

    def open_level(self, level: ScaleLevel) -> StoredArray:
        """The array of one of this group's levels, read-only (zarr format 2), whose reads name
        the array and chunk when a chunk cannot be decoded."""
        location = f"{self.location}/{level.path}"
        return StoredArray(zarr.open_array(location, mode="r", zarr_format=2), location)

    @property
    def finest(self) -> ScaleLevel:
        """The level with the smallest voxels (the annotation's own grid for labels)."""
        return min(self.levels, key=lambda level: np.prod(level.voxel_size_nm))

    @property
    def bounds_nm(self) -> tuple[np.ndarray, np.ndarray]:
        """``(start, stop)`` of the box the finest level covers, nm ``(z, y, x)``."""
        finest = self.finest
        return finest.start_nm, finest.stop_nm


@dataclass(frozen=True)
class LabelEncoding:
    """How the integers of a label array map to present / absent / unknown (SPEC §3)."""

    instance: bool = False
    absent: int = 0
    present: int = 1
    unknown: int = 255

    @classmethod
    def from_attributes(cls, attributes: Mapping[str, Any], location: str) -> LabelEncoding:
        """Read ``cellmap.annotation.annotation_type``; the published defaults when absent."""
        annotation = attributes.get("cellmap", {}).get("annotation")
        if annotation is None:
            return cls()
        annotation_type = annotation.get("annotation_type", {})
        kind = annotation_type.get("type", "semantic_segmentation")
        encoding = annotation_type.get("encoding", {})
        if kind not in ("semantic_segmentation", "instance_segmentation"):
            raise CellsegError(
                f"{location}: cellmap.annotation.annotation_type.type is {kind!r}; "
                "expected 'semantic_segmentation' or 'instance_segmentation'"
            )
        return cls(
            instance=kind == "instance_segmentation",
            absent=int(encoding.get("absent", 0)),
            present=int(encoding.get("present", 1)),
            unknown=int(encoding.get("unknown", 255)),
        )

    def count(self, values: np.ndarray) -> tuple[int, int]:
        """``(annotated, positive)`` voxels of raw label values, as :meth:`to_target` reads them."""
        if self.instance:
            annotated = int(np.count_nonzero(values != self.unknown))
            return annotated, annotated - int(np.count_nonzero(values == self.absent))
        positive = int(np.count_nonzero(values == self.present))
        return int(np.count_nonzero(values == self.absent)) + positive, positive

    def to_target(self, values: np.ndarray) -> np.ndarray:
        """Raw label values → float32 target: 1 present, 0 absent, NaN unknown.

        Instance ids (anything but ``absent`` and ``unknown``) become 1. In a semantic array a
        value that is none of the three codes is treated as unknown rather than guessed.
        """
        target = np.full(values.shape, np.nan, dtype=np.float32)
        target[values == self.absent] = 0.0
        if self.instance:
            target[(values != self.absent) & (values != self.unknown)] = 1.0
        else:
            target[values == self.present] = 1.0
        return target

    def decode(self, values: np.ndarray) -> np.ndarray:
        """:meth:`to_target`, through a 256-entry table for ``uint8`` arrays (most CellMap labels):
        one gather per voxel instead of several comparisons. Returns a new array."""
        if values.dtype == np.uint8:
            return self._uint8_table[values]
        return self.to_target(values)

    @cached_property
    def _uint8_table(self) -> np.ndarray:
        return self.to_target(np.arange(256, dtype=np.int64))


def open_group(store: Path | str) -> zarr.Group:
    """Open a zarr (format 2) store read-only, with a one-line error when it is not one."""
    store = Path(store)
    if not store.exists():
        raise CellsegError(f"{store}: no such zarr store; check the data root / datasplit path")
    try:
        return zarr.open_group(str(store), mode="r", zarr_format=2)
    except Exception as error:  # zarr raises several types for a non-store path
        raise CellsegError(
            f"{store}: not a readable zarr format 2 group ({type(error).__name__}: {error})"
        ) from None


UNIT_NM: Mapping[str, float] = {
    "picometer": 1e-3,
    "angstrom": 0.1,
    "nanometer": 1.0,
    "micrometer": 1e3,
    "millimeter": 1e6,
    "centimeter": 1e7,
    "meter": 1e9,
    # not OME-NGFF's names (UDUNITS-2), but written by some tools
    "nm": 1.0,
    "um": 1e3,
    "µm": 1e3,
    "μm": 1e3,
}
"""Nanometres per length unit of an OME-NGFF ``multiscales[0].axes[i].unit``."""


def _axis_units_nm(multiscale: Mapping[str, Any], location: str) -> np.ndarray:
    """Nanometres per unit of each of the ``(z, y, x)`` axes of ``multiscales[0]``: the declared
    ``unit`` of each axis (an axis without one, or axes without units, are nm, as CellMap writes
    them), so a store written in µm (``unit: micrometer``, scale 0.008) reads as 8 nm voxels.

    Raises:
        CellsegError: a unit that is no length cellseg knows, naming the axis and the fix.
    """
    axes = multiscale.get("axes")
    factors = np.ones(3)
    if not isinstance(axes, list) or len(axes) != 3:
        return factors
    for index, axis in enumerate(axes):
        unit = axis.get("unit") if isinstance(axis, Mapping) else None
        if unit is None:
            continue
        if str(unit).lower() not in UNIT_NM:
            raise CellsegError(
                f"{location}: multiscales[0].axes[{index}].unit is {unit!r}, which is no length "
                "unit cellseg knows; use an OME-NGFF length unit (nanometer, micrometer, "
                "angstrom, …) with the scales and translations in it"
            )
        factors[index] = UNIT_NM[str(unit).lower()]
    return factors


def _parse_levels(attributes: Mapping[str, Any], location: str) -> list[tuple[str, Vec3, Vec3]]:
    """``(path, voxel size nm, translation nm)`` of each level of ``multiscales[0]``, converted
    from the axes' declared units (:func:`_axis_units_nm`)."""
    fix = "each group needs OME-NGFF 0.4 'multiscales' with scale and translation per level"
    multiscales = attributes.get("multiscales")
    if not multiscales or not isinstance(multiscales, list):
        raise CellsegError(f"{location}: missing 'multiscales' attribute; {fix}")
    datasets = multiscales[0].get("datasets")
    if not datasets:
        raise CellsegError(f"{location}: 'multiscales[0].datasets' is empty; {fix}")
    to_nm = _axis_units_nm(multiscales[0], location)
    parsed = []
    for dataset in datasets:
        try:
            transforms = {t["type"]: t for t in dataset["coordinateTransformations"]}
            scale = tuple(float(v) for v in transforms["scale"]["scale"])
            translation = (
                tuple(float(v) for v in transforms["translation"]["translation"])
                if "translation" in transforms
                else (0.0, 0.0, 0.0)
            )
            path = str(dataset["path"])
        except (KeyError, TypeError, ValueError) as error:
            raise CellsegError(
                f"{location}: malformed multiscales dataset {dataset!r} ({error}); {fix}"
            ) from None
        if len(scale) != 3 or len(translation) != 3 or min(scale) <= 0:
            raise CellsegError(
                f"{location}: level {path!r} needs 3 positive scales and 3 translations (z, y, x) in nm"
            )
        if np.any(to_nm != 1.0):
            scale = tuple(float(v * f) for v, f in zip(scale, to_nm, strict=True))
            translation = tuple(float(v * f) for v, f in zip(translation, to_nm, strict=True))
        parsed.append((path, scale, translation))
    return parsed


def read_multiscale(root: zarr.Group, store: Path, group: str) -> Multiscale:
    """Parse the multiscale group ``group`` of an open store; checks every level exists.

    A zero-size level (a pyramid level coarser than the crop) is left out; a group with no
    other level is an error, as reading it would be.
    """
    location = f"{store}/{group}"
    try:
        node = root[group]
    except KeyError:
        raise CellsegError(f"{location}: no such group in the store") from None
    attributes = dict(node.attrs)
    levels, empty = [], []
    for path, scale, translation in _parse_levels(attributes, location):
        try:
            array = node[path]
        except KeyError:
            raise CellsegError(
                f"{location}/{path}: array listed in 'multiscales' is missing from the store"
            ) from None
        if array.ndim != 3:
            raise CellsegError(
                f"{location}/{path}: expected a 3D (z, y, x) array, got {array.ndim}D"
            )
        if 0 in array.shape:
            # holds no voxel, so it cannot serve any resolution: the others must
            empty.append((path, scale, tuple(int(n) for n in array.shape)))
            continue
        levels.append(ScaleLevel(path, scale, translation, tuple(int(n) for n in array.shape)))
    if not levels:
        raise CellsegError(
            f"{location}: every level listed in 'multiscales' has zero size; rewrite the array "
            "or leave this crop out of the datasplit"
        )
    multiscale = Multiscale(store, group, tuple(levels), attributes)
    _check_empty_levels(multiscale, empty)
    _check_levels_agree(multiscale)
    return multiscale


def _check_empty_levels(
    multiscale: Multiscale, empty: Sequence[tuple[str, Vec3, tuple[int, ...]]]
) -> None:
    """A zero-size level may only be coarser than the data (a pyramid level beyond a small
    crop's extent). A zero-size level finer than a level that holds data is a lost or truncated
    copy: reading would fall back to the coarser level (``s1`` at 16 nm for an 8 nm model),
    silently.

    Raises:
        CellsegError: naming the empty level, its shape and the coarser level that holds data.
    """
    finest = multiscale.finest
    for path, scale, shape in empty:
        if float(np.prod(scale)) < float(np.prod(finest.voxel_size_nm)) - 1e-9:
            raise CellsegError(
                f"{multiscale.location}/{path}: zero-size level (shape {list(shape)}, scale "
                f"{_nm(scale)} nm) finer than {finest.path} ({_nm(finest.voxel_size_nm)} nm), "
                f"which holds data; it would be read at {finest.path}'s coarser voxels instead: "
                f"copy the array again, or remove {path!r} from its 'multiscales'"
            )


def transform_key(multiscale: Multiscale, level: ScaleLevel) -> str:
    """The attribute key holding ``level``'s scale and translation, for messages."""
    paths = [str(d.get("path")) for d in multiscale.attributes["multiscales"][0]["datasets"]]
    return f"multiscales[0].datasets[{paths.index(level.path)}].coordinateTransformations"


def _nm(values: Any) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in np.asarray(values).ravel()) + "]"


def _check_levels_agree(multiscale: Multiscale) -> None:
    """Every level must cover the finest level's box, to within one of its own voxels (pyramids
    round shapes up or down). A level whose ``scale`` disagrees with its shape (say 4 nm written
    where 8 nm was meant) would otherwise be read at the wrong place, silently.

    Raises:
        CellsegError: naming the level, its scale and extent, the voxel size its shape implies,
            and the attribute key to fix.
    """
    finest = multiscale.finest
    extent = finest.stop_nm - finest.start_nm
    for level in multiscale.levels:
        tolerance = np.asarray(level.voxel_size_nm) + 1e-3
        if np.all(np.abs(level.start_nm - finest.start_nm) <= tolerance) and np.all(
            np.abs(level.stop_nm - finest.stop_nm) <= tolerance
        ):
            continue
        implied = extent / np.asarray(level.shape)
        if _fits_pyramid(level, finest):
            # scale and translation are what a pyramid level of the finest has: the array's
            # shape is what disagrees (a truncated copy or a wrongly downsampled level)
            needed = [max(1, round(float(n))) for n in extent / np.asarray(level.voxel_size_nm)]
            raise CellsegError(
                f"{multiscale.location}/{level.path}: shape {list(level.shape)} is wrong: with "
                f"scale {_nm(level.voxel_size_nm)} nm it covers {_nm(level.start_nm)}–"
                f"{_nm(level.stop_nm)} nm, but level {finest.path} (scale "
                f"{_nm(finest.voxel_size_nm)} nm) covers {_nm(finest.start_nm)}–"
                f"{_nm(finest.stop_nm)} nm, and the scale and translation of {level.path} fit "
                f"that pyramid; for that box {level.path} needs shape {needed}: write or copy "
                f"the array {level.path} again (its attributes are right), or {finest.path} if "
                "the other levels agree with this one"
            )
        raise CellsegError(
            f"{multiscale.location}/{level.path}: scale {_nm(level.voxel_size_nm)} nm × shape "
            f"{list(level.shape)} covers {_nm(level.start_nm)}–{_nm(level.stop_nm)} nm, but level "
            f"{finest.path} (scale {_nm(finest.voxel_size_nm)} nm) covers "
            f"{_nm(finest.start_nm)}–{_nm(finest.stop_nm)} nm; for that box {level.path} needs "
            f"voxels of {_nm(implied)} nm: fix the scale (or translation) in "
            f"{transform_key(multiscale, level)}, or in {transform_key(multiscale, finest)} "
            f"if {finest.path}'s is the wrong one"
        )


def _fits_pyramid(level: ScaleLevel, finest: ScaleLevel) -> bool:
    """Whether ``level``'s scale and translation are those of a pyramid level above ``finest``:
    voxels a power of 2 (> 1 on some axis) times the finest's, the first voxel's centre moved by
    half the growth (SPEC §3)."""
    ratio = np.asarray(level.voxel_size_nm) / np.asarray(finest.voxel_size_nm)
    exponent = np.log2(ratio)
    if np.any(exponent < -1e-6) or np.all(exponent < 1e-6):
        return False
    if np.any(np.abs(exponent - np.round(exponent)) > 1e-6):
        return False
    growth = np.asarray(level.voxel_size_nm) - np.asarray(finest.voxel_size_nm)
    expected = np.asarray(finest.translation_nm) + growth / 2
    return bool(np.all(np.abs(np.asarray(level.translation_nm) - expected) <= 1e-3))


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


def read_crop_geometry(crop: Crop, resolution_nm: float | None = None) -> CropGeometry:
    """Open and validate a crop: EM and label multiscales, encodings and placement.

    Args:
        crop: the crop to check.
        resolution_nm: when given, also check that some level of every array is within a factor
            of 2 of it (a 32 nm crop cannot train an 8 nm model without inventing detail).

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


EM_SAMPLE_EDGE = 32
"""Voxels per axis of the central block of the coarsest EM level that :func:`check_em_values`
reads (at most 32 KiB of float32 values: one chunk or a few)."""


def check_em_values(em: Multiscale, em_range: Sequence[float]) -> None:
    """Floating-point EM must hold values on the scale of ``data.em_range`` (raw 8-bit values):
    EM stored as float in [0, 1] (a common export) lies wholly below the seed's window
    [10.6, 194.1], so every voxel would clip to its bottom and the model would train on a
    blank image. Checks the coarsest level (:func:`check_em_array`: a central block of it,
    cheap). ``uint8`` EM is not checked: any window of it is a choice.

    Raises:
        CellsegError: naming the array, the values observed, ``data.em_range`` and the fix.
    """
    level = max(em.levels, key=lambda lv: float(np.prod(lv.voxel_size_nm)))
    check_em_array(em.open_level(level), em_range)


def check_em_array(array: StoredArray, em_range: Sequence[float]) -> None:
    """:func:`check_em_values` on one EM level: reads a central block of at most
    :data:`EM_SAMPLE_EDGE` voxels an axis of a floating-point ``array`` (nothing for an integer
    one) and refuses it when more than half of the finite values lie outside ``em_range``
    (raw 8-bit values, ``(low, high)``).

    Raises:
        CellsegError: naming the array, the values observed, ``data.em_range`` and the fix.
    """
    if array.dtype.kind != "f":
        return
    block = tuple(
        slice(
            max(0, n // 2 - EM_SAMPLE_EDGE // 2),
            max(0, n // 2 - EM_SAMPLE_EDGE // 2) + EM_SAMPLE_EDGE,
        )
        for n in array.shape
    )
    sample = np.asarray(array[block], dtype=np.float64)
    values = sample[np.isfinite(sample)]
    if not values.size:
        return
    low, high = float(em_range[0]), float(em_range[1])
    outside = float(np.mean((values < low) | (values > high)))
    if outside <= 0.5:
        return
    seen_low, seen_high = float(values.min()), float(values.max())
    side = "bottom" if float(np.median(values)) < low else "top"
    level = array.location.rsplit("/", 1)[-1]
    unit = seen_low >= 0.0 and seen_high <= 1.0  # the usual float export: [0, 1]
    example = "[0, 1]" if unit else f"[{seen_low:.3g}, {seen_high:.3g}]"
    raise CellsegError(
        f"{array.location}: float EM whose sampled values (central {list(sample.shape)} voxels "
        f"of {level}) lie in [{seen_low:.3g}, {seen_high:.3g}], {100 * outside:.0f}% of them "
        f"outside data.em_range = [{low:g}, {high:g}] (raw 8-bit values), so they would clip to "
        f"its {side} and the model would see a blank image; rescale the EM to uint8 (0-255), or "
        f"set data.em_range to the EM's own scale (e.g. {example})"
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
            f"{multiscale.location}: box {_nm(start)}–{_nm(stop)} nm differs from "
            f"{labels[reference].location}'s {_nm(ref_start)}–{_nm(ref_stop)} nm (offset "
            f"{_nm(start - ref_start)} nm, size {_nm(stop - start)} vs "
            f"{_nm(ref_stop - ref_start)} nm); the classes of a crop share one box, or one is "
            f"scored against the wrong voxels: fix that array's translation or shape "
            f"({transform_key(multiscale, multiscale.finest)}), or leave the class out of the "
            "crop's [classes] in the datasplit"
        )


def resolution_problem(multiscale: Multiscale, resolution_nm: float) -> str | None:
    """Why no level of ``multiscale`` can serve ``resolution_nm`` (none within a factor of 2 on
    every axis: a 32 nm crop cannot train an 8 nm model without inventing detail), or None."""
    level = multiscale.level_for(resolution_nm)
    worst = max(abs(math.log2(s / resolution_nm)) for s in level.voxel_size_nm)
    if worst <= 1.0 + 1e-6:
        return None
    # FIB-SEM voxels are never below 0.1 nm: such a scale was written in µm
    unit = (
        "; its scales look like µm, but its axes declare nm (or no unit): multiply them by 1000 "
        f'in {transform_key(multiscale, level)}, or declare "unit": "micrometer" in '
        "multiscales[0].axes"
        if max(level.voxel_size_nm) < 0.1
        else ""
    )
    return (
        f"{multiscale.location}: no scale level near {resolution_nm} nm (nearest {level.path} at "
        f"{_nm(level.voxel_size_nm)} nm){unit}"
    )


def crop_resolution_problem(crop: Crop, resolution_nm: float) -> str | None:
    """Why a crop's labels cannot be read at ``resolution_nm`` (see
    :func:`resolution_problem`), or None when every class has a level near it."""
    geometry = read_crop_geometry(crop)
    for multiscale in geometry.labels.values():
        problem = resolution_problem(multiscale, resolution_nm)
        if problem:
            return problem
    return None


UPSAMPLED_NOTE_RATIO = 1.5
"""An EM level whose voxels are this many times ``resolution_nm`` or more along some axis (the
16 nm ``s1`` of an 8 nm model: ``s0`` removed from 'multiscales') is read upsampled; the console
says so (:func:`upsampled_em_line`). 10 nm data read at 8 nm is not worth a line."""

_NOTED_UPSAMPLED: set[str] = set()
"""EM levels already said to be upsampled in this process (once each, not once per crop)."""


def upsampled_em_line(em: Multiscale, resolution_nm: float) -> str | None:
    """The line saying that ``em`` is read at a level much coarser than ``resolution_nm``
    (:data:`UPSAMPLED_NOTE_RATIO`), upsampled without a word otherwise: the array, the level
    used and its voxel size, and the fix (an array the group holds that 'multiscales' does not
    list, such as a removed ``s0``, is named). None when the level used is near enough."""
    level = em.level_for(resolution_nm)
    ratio = max(size / resolution_nm for size in level.voxel_size_nm)
    if ratio < UPSAMPLED_NOTE_RATIO - 1e-6:
        return None
    listed = {path for path, _, _ in _parse_levels(em.attributes, em.location)}
    try:
        stored = sorted(zarr.open_group(em.location, mode="r", zarr_format=2).array_keys())
    except (OSError, ValueError, zarr.errors.GroupNotFoundError):
        stored = []
    unlisted = [name for name in stored if name not in listed]
    fix = (
        f"its group holds {', '.join(unlisted)}, which 'multiscales' does not list: if "
        f"{unlisted[0]} is the finer level, list it again there (path, scale and translation)"
        if unlisted
        else f"add a level near {resolution_nm:g} nm, or set data.resolution_nm to "
        f"{max(level.voxel_size_nm):g}"
    )
    return (
        f"{em.location}: no level near {resolution_nm:g} nm: reading {level.path} at "
        f"{_nm(level.voxel_size_nm)} nm, upsampled {ratio:g}x (its detail is interpolated, not "
        f"read); {fix}"
    )


def note_upsampled_em(em: Multiscale, resolution_nm: float, log: TextIO | None = None) -> None:
    """Print :func:`upsampled_em_line` to ``log`` (stderr) once per EM level in this process."""
    line = upsampled_em_line(em, resolution_nm)
    if line is not None and line not in _NOTED_UPSAMPLED:
        _NOTED_UPSAMPLED.add(line)
        print(line, file=log or sys.stderr, flush=True)


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
        f"{labels.location}/{level.path}: scale {_nm(level.voxel_size_nm)} nm × shape "
        f"{list(level.shape)} from translation {_nm(level.translation_nm)} nm covers "
        f"{_nm(start)}–{_nm(stop)} nm, outside the EM volume {_nm(em_start)}–{_nm(em_stop)} nm"
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
    hint = f" (e.g. the EM's {_nm(em_sizes[0])} nm)" if em_sizes else ""
    raise CellsegError(
        f"{where}; from that translation only voxel sizes up to {_nm(fits)} nm fit{hint}: fix "
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


FOREIGN_LABEL_LIMIT = 1e-3
"""Fraction of a semantic label array's voxels that may hold a value outside its encoding (read
as unknown, and reported) before the array is refused: a handful of stray values is noise, more
is a wrong encoding or a broken copy that would silently drop annotation."""


def check_label_data(
    geometry: CropGeometry, levels: Mapping[str, Iterable[ScaleLevel]] | None = None
) -> list[str]:
    """Read a crop's label arrays once and refuse data that would be scored wrongly.

    Two checks per array (each class's ``levels``; every level when not given):

    * **values outside the encoding**: in a semantic array, a value that is none of absent,
      present and unknown (a 2 in a 0/1/255 array) is read as unknown; above
      :data:`FOREIGN_LABEL_LIMIT` of the array's voxels it is refused. Instance arrays hold
      any id, so they are not checked.
    * **lost chunks**: a chunk that is not stored reads as the fill value, which is ``absent``
      in CellMap stores, and writers legitimately skip chunks that hold only it. A missing chunk
      is refused when the next coarser level of the same class holds a voxel of another value
      (present or unknown) lying wholly inside the chunk's box: the chunk held annotation that a download or copy lost
      (a Dice of 0 would become 1 through the empty-class rule). With a single level, a lost
      chunk cannot be told from an empty one.

    Returns:
        One line per array with a few foreign values (below the limit), and one per class
        whose array has no present voxel and mostly unknown ones (a binary mask stored 0/255
        would: its positives read as unknown), for the log.

    Raises:
        CellsegError: naming the array, the chunk (and its file), the count and the fix.
    """
    notes: list[str] = []
    masks: set[str] = set()
    for name, multiscale in geometry.labels.items():
        encoding = geometry.encodings[name]
        chosen = multiscale.levels if levels is None else tuple(levels.get(name, ()))
        for level in dict.fromkeys(chosen):
            array = multiscale.open_level(level)
            if not encoding.instance:
                foreign, mask = _check_foreign_values(array, encoding)
                notes.extend([foreign] if foreign else [])
                if mask and name not in masks:  # one line a class, not one a level
                    masks.add(name)
                    notes.append(mask)
            if array.fill_value is not None and array.fill_value != encoding.unknown:
                _check_lost_chunks(multiscale, level, array, encoding)
    return notes


def _chunk_file(array: StoredArray, key: Sequence[int]) -> str:
    separator = getattr(array.array.metadata, "dimension_separator", ".") or "."
    return f"{array.location}/{separator.join(map(str, key))}"


UNKNOWN_MASK_SHARE = 0.5
"""Share of a semantic array's voxels that are unknown, with none present, above which the
array is said to look like a binary mask stored 0/255 (its positives read as unknown)."""


def _check_foreign_values(
    array: StoredArray, encoding: LabelEncoding
) -> tuple[str | None, str | None]:
    """Count a semantic array's voxels outside ``encoding``, one z row of chunks at a time.

    Returns:
        ``(foreign, mask)``: a note about a few values outside the encoding (see
        :func:`check_label_data`), and a warning when no voxel is present and more than
        :data:`UNKNOWN_MASK_SHARE` are unknown: a binary mask stored 0/255 reads its every
        positive voxel as unknown (255 is the unknown code), so the class would vanish.
    """
    codes = np.array([encoding.absent, encoding.present, encoding.unknown])
    # uint8 (most CellMap labels): one table lookup per voxel instead of np.isin's sort
    table = None
    if array.dtype == np.uint8 and codes.min() >= 0 and codes.max() < 256:
        table = np.ones(256, dtype=bool)
        table[codes] = False
    chunks = np.asarray(array.chunks)
    foreign = present = unknown = 0
    per_chunk: Counter[tuple[int, ...]] = Counter()
    seen: set[int] = set()
    for z in range(0, array.shape[0], int(chunks[0])):
        slab = np.asarray(array[z : z + int(chunks[0])])
        if not present:
            present = int(np.count_nonzero(slab == encoding.present))
            unknown += int(np.count_nonzero(slab == encoding.unknown))
        bad = table[slab] if table is not None else ~np.isin(slab, codes)
        count = int(np.count_nonzero(bad))
        if not count:
            continue
        foreign += count
        where = np.stack(np.nonzero(bad), axis=1)
        where[:, 0] += z
        keys, counts = np.unique(where // chunks, axis=0, return_counts=True)
        for key, n in zip(keys, counts, strict=True):
            per_chunk[tuple(int(k) for k in key)] += int(n)
        if len(seen) < 5:
            seen.update(int(v) for v in np.unique(slab[bad])[:5])
    total = int(np.prod(array.shape))
    mask = None
    if not present and unknown > UNKNOWN_MASK_SHARE * total:
        mask = (
            f"{array.location}: no voxel is present ({encoding.present}) and {unknown} of {total} "
            f"({100 * unknown / total:.0f}%) are unknown ({encoding.unknown}), so the class is "
            "read as unannotated there; if this is a binary mask stored 0/255, its positives "
            f"are lost: re-encode it with positives {encoding.present}, absent "
            f"{encoding.absent} and unknown {encoding.unknown} only where not annotated"
        )
    if not foreign:
        return None, mask
    key, in_chunk = per_chunk.most_common(1)[0]
    values = ", ".join(map(str, sorted(seen)[:5]))
    what = (
        f"{array.location}: {foreign} of {total} voxels ({100 * foreign / total:.2g}%) hold "
        f"values ({values}) outside the encoding (absent {encoding.absent}, present "
        f"{encoding.present}, unknown {encoding.unknown}), {in_chunk} of them in chunk "
        f"{list(key)} (file {_chunk_file(array, key)}); they read as unknown"
    )
    if foreign > FOREIGN_LABEL_LIMIT * total:
        raise CellsegError(
            f"{what}, and more than {100 * FOREIGN_LABEL_LIMIT:g}% is refused: fix the values, "
            "or the encoding in the group's cellmap.annotation attributes, or copy the array again"
        )
    return what, mask


def _stored_chunk_keys(array: StoredArray) -> set[tuple[int, ...]] | None:
    """The chunk keys stored in a local directory store, or None when it cannot be listed."""
    directory = Path(array.location)
    if not directory.is_dir():
        return None
    separator = getattr(array.array.metadata, "dimension_separator", ".") or "."
    names = (
        ["/".join(p.relative_to(directory).parts) for p in directory.rglob("*") if p.is_file()]
        if separator == "/"
        else [p.name for p in directory.iterdir() if p.is_file()]
    )
    keys = set()
    for name in names:
        parts = name.split(separator)
        if len(parts) == array.ndim and all(part.isdigit() for part in parts):
            keys.add(tuple(int(part) for part in parts))
    return keys


def _check_lost_chunks(
    multiscale: Multiscale, level: ScaleLevel, array: StoredArray, encoding: LabelEncoding
) -> None:
    """See :func:`check_label_data`: a missing chunk contradicted by a coarser level."""
    chunks = np.asarray(array.chunks)
    grid = [range(-(-n // c)) for n, c in zip(array.shape, chunks, strict=True)]
    expected = int(np.prod([len(r) for r in grid]))
    if array.array.nchunks_initialized >= expected:
        return
    stored = _stored_chunk_keys(array)
    coarser = [
        other
        for other in multiscale.levels
        if float(np.prod(other.voxel_size_nm)) > float(np.prod(level.voxel_size_nm)) + 1e-9
    ]
    if stored is None or not coarser:
        return
    # the nearest coarser level only: it sees the smallest objects (mode downsampling drops
    # them level by level), and each further level would be one more full read
    coarser = [min(coarser, key=lambda other: float(np.prod(other.voxel_size_nm)))]
    missing = {key for key in itertools.product(*grid) if key not in stored}
    span = chunks * np.asarray(level.voxel_size_nm)  # one chunk's extent per axis, nm
    for other in coarser:
        # per axis: the chunk of `level` wholly holding each voxel of `other`, or -1
        holder = []
        for axis in range(3):
            size = other.voxel_size_nm[axis]
            low = other.start_nm[axis] + np.arange(other.shape[axis]) * size
            first = np.floor((low - level.start_nm[axis]) / span[axis] + 1e-6).astype(int)
            last = np.floor((low + size - level.start_nm[axis]) / span[axis] - 1e-6).astype(int)
            inside = (first == last) & (first >= 0) & (low + size <= level.stop_nm[axis] + 1e-3)
            holder.append(np.where(inside, first, -1))
        source = multiscale.open_level(other)
        depth = int(source.chunks[0])
        contradicted: Counter[tuple[int, ...]] = Counter()
        fill = array.fill_value  # what every voxel of a missing chunk reads as
        for z in range(0, other.shape[0], depth):  # a z slab at a time: memory stays bounded
            annotated = np.asarray(source[z : z + depth]) != fill
            iz, iy, ix = np.nonzero(annotated)
            keys = np.stack([holder[0][iz + z], holder[1][iy], holder[2][ix]], axis=1)
            keys = keys[np.all(keys >= 0, axis=1)]
            if not len(keys):
                continue
            # count per chunk of `level` with a bincount over flat chunk indices (np.unique
            # over rows sorts every annotated voxel)
            shape = tuple(len(r) for r in grid)
            counts = np.bincount(np.ravel_multi_index(keys.T, shape), minlength=expected)
            for flat in np.flatnonzero(counts):
                key = tuple(int(k) for k in np.unravel_index(flat, shape))
                if key in missing:
                    contradicted[key] += int(counts[flat])
        if contradicted:
            key = min(contradicted)
            more = len(contradicted) - 1
            others = f" ({more} more missing chunks likewise)" if more else ""
            absent = fill == encoding.absent
            raise CellsegError(
                f"{array.location}: chunk {list(key)} (file {_chunk_file(array, key)}) is not "
                f"stored, so it reads as {fill}{' (absent)' if absent else ''}, but the coarser "
                f"level {other.path} holds {contradicted[key]} "
                f"{'present or unknown voxels' if absent else f'voxels other than {fill}'} "
                f"inside it{others}: the chunk was lost in a download or copy; copy the array "
                "again"
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
