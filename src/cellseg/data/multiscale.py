"""Reading OME-NGFF multiscale groups: each level's geometry in nm, its array, label encodings.

World coordinates are in nanometres, axes ``(z, y, x)``. An OME-NGFF ``translation`` is the
centre of the array's first voxel, so voxel ``i`` of a level with voxel size ``s`` and
translation ``t`` is centred at ``t + i * s`` and covers ``[t + (i - 1/2) s, t + (i + 1/2) s)``.
Stores are always opened read-only: nothing here writes into the user's data (writing
OME-NGFF is :mod:`cellseg.ngff`).

A group is parsed and checked once (:func:`read_multiscale`: every listed level present and
3D, scales and translations converted to nm from the axes' units, every level covering the
finest level's box) and read through :class:`StoredArray`, whose reads name the array and chunk
when a chunk cannot be decoded. :func:`resolution_problem` and :func:`upsampled_em_line` say
when no level is near the resolution asked for. The CellMap layout built on these (crops,
their classes and geometry) is :mod:`cellseg.data.store`; the checks that read voxel values are
:mod:`cellseg.data.voxel_checks`.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import zarr

from cellseg.errors import CellsegError
from cellseg.voxels import Resolution, Vec3, as_vec3, format_resolution


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

    def level_for(self, resolution_nm: Resolution) -> ScaleLevel:
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
                f"{format_nm(scale)} nm) finer than {finest.path} ({format_nm(finest.voxel_size_nm)} nm), "
                f"which holds data; it would be read at {finest.path}'s coarser voxels instead: "
                f"copy the array again, or remove {path!r} from its 'multiscales'"
            )


def transform_key(multiscale: Multiscale, level: ScaleLevel) -> str:
    """The attribute key holding ``level``'s scale and translation, for messages."""
    paths = [str(d.get("path")) for d in multiscale.attributes["multiscales"][0]["datasets"]]
    return f"multiscales[0].datasets[{paths.index(level.path)}].coordinateTransformations"


def format_nm(values: Any) -> str:
    """``values`` (nm) as messages print them: ``[8, 8, 8]``."""
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
                f"scale {format_nm(level.voxel_size_nm)} nm it covers {format_nm(level.start_nm)}–"
                f"{format_nm(level.stop_nm)} nm, but level {finest.path} (scale "
                f"{format_nm(finest.voxel_size_nm)} nm) covers {format_nm(finest.start_nm)}–"
                f"{format_nm(finest.stop_nm)} nm, and the scale and translation of {level.path} fit "
                f"that pyramid; for that box {level.path} needs shape {needed}: write or copy "
                f"the array {level.path} again (its attributes are right), or {finest.path} if "
                "the other levels agree with this one"
            )
        raise CellsegError(
            f"{multiscale.location}/{level.path}: scale {format_nm(level.voxel_size_nm)} nm × shape "
            f"{list(level.shape)} covers {format_nm(level.start_nm)}–{format_nm(level.stop_nm)} nm, but level "
            f"{finest.path} (scale {format_nm(finest.voxel_size_nm)} nm) covers "
            f"{format_nm(finest.start_nm)}–{format_nm(finest.stop_nm)} nm; for that box {level.path} needs "
            f"voxels of {format_nm(implied)} nm: fix the scale (or translation) in "
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


def resolution_problem(multiscale: Multiscale, resolution_nm: Resolution) -> str | None:
    """Why no level of ``multiscale`` can serve ``resolution_nm`` (none within a factor of 2 on
    every axis: a 32 nm crop cannot train an 8 nm model without inventing detail), or None.
    ``resolution_nm`` is one number or ``(z, y, x)``, compared axis by axis (50 nm sections
    serve a ``[50, 8, 8]`` model, not an isotropic 10 nm one)."""
    level = multiscale.level_for(resolution_nm)
    worst = max(
        abs(math.log2(s / r))
        for s, r in zip(level.voxel_size_nm, as_vec3(resolution_nm), strict=True)
    )
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
        f"{multiscale.location}: no scale level near {format_resolution(resolution_nm)} nm (nearest {level.path} at "
        f"{format_nm(level.voxel_size_nm)} nm){unit}"
    )


UPSAMPLED_NOTE_RATIO = 1.5
"""An EM level whose voxels are this many times ``resolution_nm`` or more along some axis (the
16 nm ``s1`` of an 8 nm model: ``s0`` removed from 'multiscales') is read upsampled; the console
says so (:func:`upsampled_em_line`). 10 nm data read at 8 nm is not worth a line."""

_NOTED_UPSAMPLED: set[str] = set()
"""EM levels already said to be upsampled in this process (once each, not once per crop)."""


def upsampled_em_line(em: Multiscale, resolution_nm: Resolution) -> str | None:
    """The line saying that ``em`` is read at a level much coarser than ``resolution_nm``
    (:data:`UPSAMPLED_NOTE_RATIO`), upsampled without a word otherwise: the array, the level
    used and its voxel size, and the fix (an array the group holds that 'multiscales' does not
    list, such as a removed ``s0``, is named). None when the level used is near enough."""
    level = em.level_for(resolution_nm)
    ratio = max(
        size / r for size, r in zip(level.voxel_size_nm, as_vec3(resolution_nm), strict=True)
    )
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
        else f"add a level near {format_resolution(resolution_nm, 'g')} nm, or set "
        f"data.resolution_nm to {_coarsened(resolution_nm, level)}"
    )
    return (
        f"{em.location}: no level near {format_resolution(resolution_nm, 'g')} nm: reading {level.path} at "
        f"{format_nm(level.voxel_size_nm)} nm, upsampled {ratio:g}x (its detail is interpolated, not "
        f"read); {fix}"
    )


def _coarsened(resolution_nm: Resolution, level: ScaleLevel) -> str:
    """The ``data.resolution_nm`` that reads ``level`` without upsampling: its largest voxel
    edge when the models' voxels are isotropic (as before), else its voxel size per axis."""
    if len(set(as_vec3(resolution_nm))) == 1:
        return f"{max(level.voxel_size_nm):g}"
    return format_nm(level.voxel_size_nm)


def note_upsampled_em(em: Multiscale, resolution_nm: Resolution, log: TextIO | None = None) -> None:
    """Print :func:`upsampled_em_line` to ``log`` (stderr) once per EM level in this process."""
    line = upsampled_em_line(em, resolution_nm)
    if line is not None and line not in _NOTED_UPSAMPLED:
        _NOTED_UPSAMPLED.add(line)
        print(line, file=log or sys.stderr, flush=True)
