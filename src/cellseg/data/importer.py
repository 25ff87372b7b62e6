"""``cellseg import``: a lab's own EM volume and labels into the CellMap layout (SPEC §11).

A small YAML *mapping* file (format in docs/data.md, "Importing your own EM"; examples under
``config/import/``) names, per dataset, the EM source, its voxel size and offset in nm, the
labels (one binary mask per class, a label image with a value-to-class map, or instance ids with
an optional boundary class derived from the faces between ids), unknown regions and the crops.
The import writes ``{out}/{dataset}/{dataset}.zarr`` (zarr format 2), streaming (sources read
lazily, :mod:`cellseg.data.import_sources`; the store written in :data:`BLOCK`-voxel blocks,
:func:`stream_pyramid`; memory bounded by the block, not the volume): the EM pyramid
``recon-1/em/fibsem-uint8/s0…`` and per crop ``recon-1/labels/groundtruth/{crop}/{class}/s0…``
plus ``all``, every group with OME-NGFF ``multiscales`` in nm and ``cellmap.annotation``
attributes, with the demo's metadata, codec and label arrays (:mod:`cellseg.ngff`,
:mod:`cellseg.data.label_codes`). It writes under a temporary name, reads the result back
through cellseg's reader (:func:`~cellseg.data.store.discover_crops`,
:func:`~cellseg.data.store.read_crop_geometry`, :func:`~cellseg.data.voxel_checks.check_label_data`)
and only then renames it into place; it never replaces or deletes a dataset it did not just
write.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.classes import CLASSES, GROUP_NAMES
from cellseg.data.demo_layout import EM_PATH, LABELS_PATH
from cellseg.data.import_mapping import MappingFile, load_mapping
from cellseg.data.import_sources import Volume, open_volume
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
    blosc_zstd,
    downsample_labels,
    downsample_mean,
    multiscales_attrs,
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
BLOCK = 128
"""Edge (voxels, a multiple of the 64-voxel chunk) of the s0 blocks the import reads, labels and
writes at a time; coarser levels go in blocks of half that edge (at least a chunk) read from the
level below. Peak memory is a few blocks' worth (tens of MB at 128), whatever the volume's size
(docs/benchmarks.md, "Importing a volume larger than memory")."""
SQRT2 = math.sqrt(2)
SLAB = 16
"""Planes (even) of a level's source block reduced at a time into the next level."""

# ------------------------------------------------------------------------------ labels


def derive_boundary(ids: np.ndarray, background: int = 0, unknown: int | None = None) -> np.ndarray:
    """Boundary voxels of an instance-id volume: a voxel is boundary when one of its 6
    face-neighbours holds an id that is neither ``background`` nor ``unknown`` and differs from
    its own. Both sides of a face between two ids are boundary (a membrane two voxels thick);
    a background voxel touching an id is boundary too; an ``unknown`` voxel never is. ``ids``: any
    ``(z, y, x)`` box of the volume; a voxel's result is exact when its 6 neighbours inside the
    volume are in the box, so the import computes it block by block with a one-voxel halo
    (:meth:`LabelSource.codes`) and a crop's edge voxels see their true neighbours."""
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


def _same_shape(array: Volume, shape: tuple[int, ...], where: str) -> None:
    if array.shape != shape:
        raise CellsegError(
            f"{where}: shape {array.shape} (z, y, x voxels) differs from the EM's {shape}; labels "
            "must cover the EM voxel for voxel (use crops: to annotate part of it)"
        )


Box = tuple[slice, ...]
"""A box of voxels, one slice (step 1) per axis ``(z, y, x)``."""


def blocks(shape: Sequence[int], edge: int) -> Iterator[Box]:
    """The boxes of a grid of ``edge``-voxel blocks over ``shape`` (z y x, C order; the last
    block of an axis is cut at its end)."""
    starts = [range(0, int(n), edge) for n in shape]
    for corner in itertools.product(*starts):
        yield tuple(slice(c, min(c + edge, int(n))) for c, n in zip(corner, shape, strict=True))


def _small_unsigned(dtype: np.dtype) -> bool:
    """Whether a label image's values are mapped through a table of all its values (<= 16 bits)."""
    return dtype.kind in "bu" and dtype.itemsize <= 2


class LabelSource:
    """Dataset ``index``'s labels, opened lazily: :meth:`codes` gives the demo's uint16 label
    codes (:mod:`cellseg.data.label_codes`: 0 annotated with no class, a class's code,
    ``NUC_BASE + id``, ``UNKNOWN_CODE``) of any box of the EM's ``shape``, reading only that box
    of each source (and a one-voxel halo for a derived boundary). ``classes``: the classes the
    crops annotate (in cellseg's class order).

    Every refusal that depends on the whole volume (overlapping masks, a label value without a
    mapping, too many instances) is checked here, in streamed passes of ``block``-voxel blocks,
    before anything is written, in the order a whole-volume reading met them.
    """

    def __init__(
        self, mapping: MappingFile, index: int, shape: tuple[int, ...], base: Path,
        block: int = BLOCK,
    ) -> None:  # fmt: skip
        labels = mapping.content["datasets"][index]["labels"]
        self.labels, self.shape, self.block = labels, shape, block
        self.at = lambda *keys: mapping.at("datasets", index, "labels", *keys)
        self.masks: list[tuple[str, Volume]] = []
        kind = labels["kind"]
        if kind == "masks":
            classes = set(labels["masks"])
            self._open_masks(base)
        elif kind == "label_image":
            self.image = self._open(labels["source"], base, "source")
            self.mapped = {int(v): c for v, c in labels["values"].items()}
            classes = {c for c in self.mapped.values() if c != "none"}
            if not labels.get("other_values"):  # an unmapped value is refused: look for one
                found: set[Any] = set()
                for box in blocks(shape, block):
                    found.update(np.unique(self.image[box]).tolist())
                for value in sorted(found):
                    self._value_code(value)
        else:
            self.ids = self._open(labels["source"], base, "source")
            self.background = int(labels.get("background_value", 0))
            self.unknown = labels.get("unknown_value")
            classes = {labels[k] for k in ("instance_class", "derive_boundary") if labels.get(k)}
            if labels.get("instance_class") in INSTANCE_CLASSES:
                self.found = np.zeros(0, dtype=self.ids.dtype)
                for box in blocks(shape, block):
                    ids = self.ids[box]
                    self.found = np.union1d(self.found, np.unique(ids[self._inside(ids)]))
                if len(self.found) > MAX_INSTANCES:
                    raise CellsegError(f"{self.at('source')}: {len(self.found)} instances, at "
                                       f"most {MAX_INSTANCES} can be written; merge some ids")  # fmt: skip
        self.annotated = self._open(labels["annotated"], base, "annotated") if (
            "annotated" in labels) else None  # fmt: skip
        self.unknown_mask = self._open(labels["unknown_mask"], base, "unknown_mask") if (
            "unknown_mask" in labels) else None  # fmt: skip
        self.classes = tuple(c for c in (*CLASSES, *GROUP_NAMES) if c in classes)

    def _open(self, source: Mapping[str, Any], base: Path, *keys: str) -> Volume:
        volume = open_volume(source, base, self.at(*keys))
        _same_shape(volume, self.shape, self.at(*keys))
        return volume

    def _open_masks(self, base: Path) -> None:
        """Open the masks in order; the first one that fails refuses the import, but only after
        the masks before it were checked for overlaps (as a whole-volume reading met them)."""
        failure = None
        for name, source in self.labels["masks"].items():
            try:
                self.masks.append((name, self._open(source, base, "masks", name)))
            except CellsegError as error:
                failure = error
                break
        if self.labels.get("overlap", "refuse") == "refuse":
            overlaps = [0] * len(self.masks)
            for box in blocks(self.shape, self.block):
                codes = np.zeros(tuple(s.stop - s.start for s in box), dtype=np.uint16)
                for i, (name, mask) in enumerate(self.masks):
                    present = mask[box] != 0
                    overlaps[i] += int(np.count_nonzero(present & (codes != 0)))
                    codes[present] = _class_code(name)
            for (name, _), count in zip(self.masks, overlaps, strict=True):
                if count:
                    raise CellsegError(
                        f"{self.at('masks', name)}: {count} voxels also lie in another "
                        "mask; the 14 classes are mutually exclusive: make the masks disjoint, or "
                        "set labels.overlap: unknown to write those voxels as unknown"
                    )
        if failure is not None:
            raise failure

    def _value_code(self, value: Any) -> int:
        """The code of one value of a label image; refuses a value with no mapping."""
        labels = self.labels
        if value == labels.get("unknown_value"):
            return UNKNOWN_CODE
        if value in self.mapped:
            return 0 if self.mapped[value] == "none" else _class_code(self.mapped[value])
        if labels.get("other_values"):
            return UNKNOWN_CODE if labels["other_values"] == "unknown" else 0
        raise CellsegError(
            f"{self.at('values')}: label value {value} of {labels['source']['path']} has no "
            "mapping; add it (a class, or none) or set other_values: none|unknown"
        )

    def _inside(self, ids: np.ndarray) -> np.ndarray:
        inside = ids != self.background
        if self.unknown is not None:
            inside &= ids != self.unknown
        return inside

    def codes(self, box: Box) -> np.ndarray:
        """The uint16 label codes of ``box`` (voxels of the EM's s0), shape the box's."""
        shape = tuple(s.stop - s.start for s in box)
        labels = self.labels
        kind = labels["kind"]
        if kind == "masks":
            codes = np.zeros(shape, dtype=np.uint16)
            # voxels two masks claim (overlap: unknown; refused otherwise, before writing) are
            # written as unknown, as a contradiction says nothing of either class
            contested = np.zeros(shape, dtype=bool)
            for name, mask in self.masks:
                present = mask[box] != 0
                contested |= present & (codes != 0)
                codes[present] = _class_code(name)
            codes[contested] = UNKNOWN_CODE
        elif kind == "label_image":
            image = self.image[box]
            if _small_unsigned(image.dtype):
                table = np.zeros(2 ** (8 * image.dtype.itemsize), dtype=np.uint16)
                for value in np.unique(image).tolist():
                    table[value] = self._value_code(value)
                codes = table[image.astype(np.intp, copy=False) if image.dtype == bool else image]
            else:
                values, inverse = np.unique(image, return_inverse=True)
                table = np.array([self._value_code(v) for v in values.tolist()], dtype=np.uint16)
                codes = table[inverse.reshape(shape)]
        else:
            codes = self._instance_codes(box, shape)
        if self.annotated is not None:
            codes[self.annotated[box] == 0] = UNKNOWN_CODE
        if self.unknown_mask is not None:
            codes[self.unknown_mask[box] != 0] = UNKNOWN_CODE
        return codes

    def _instance_codes(self, box: Box, shape: tuple[int, ...]) -> np.ndarray:
        labels = self.labels
        codes = np.zeros(shape, dtype=np.uint16)
        # a one-voxel halo: the boundary rule reads the 6 face-neighbours, so a block's edge
        # voxels see their true neighbours and the result is the whole volume's, voxel for voxel
        halo = box
        if labels.get("derive_boundary"):
            halo = tuple(
                slice(max(0, s.start - 1), min(n, s.stop + 1))
                for s, n in zip(box, self.shape, strict=True)
            )
        around = self.ids[halo]
        inner = tuple(
            slice(s.start - h.start, s.stop - h.start) for s, h in zip(box, halo, strict=True)
        )
        ids = around[inner]
        if labels.get("instance_class"):
            name = labels["instance_class"]
            inside = self._inside(ids)
            if name in INSTANCE_CLASSES:
                new_ids = np.searchsorted(self.found, ids[inside]) + 1  # 1..N, in id order
                new_ids += new_ids >= UNKNOWN  # 255 is CellMap's unknown: never an id
                codes[inside] = (NUC_BASE + new_ids).astype(np.uint16)
            else:
                codes[inside] = _class_code(name)
        if labels.get("derive_boundary"):
            boundary = derive_boundary(around, self.background, self.unknown)[inner]
            codes[boundary] = _class_code(labels["derive_boundary"])
        if self.unknown is not None:
            codes[ids == self.unknown] = UNKNOWN_CODE
        return codes


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


def pyramid_factors(
    voxel_size_nm: Sequence[float], shape: Sequence[int], chunk: int = CHUNK
) -> list[tuple[int, ...]]:
    """Per level ``s1, s2, …``, the factor (1 or 2) each axis ``(z, y, x)`` is reduced by from the
    level below, until a level fits one ``chunk``-voxel chunk (as
    :func:`cellseg.ngff.pyramid_levels`).

    Isotropic voxels halve every axis at every level (``(2, 2, 2)``). Anisotropic ones (serial
    sections, say 50×4×4 nm) first halve only the axes whose voxels are finer than the largest
    by more than √2 (so that halving brings them nearer it, in ratio), until the level is
    near-isotropic (every axis within √2 of the largest), then every axis: 50×4×4 nm gives
    50×8×8, 50×16×16, 50×32×32, 50×64×64, then 100×128×128 nm, as the serial-section pyramids
    of OME-Zarr viewers do.
    """
    factors: list[tuple[int, ...]] = []
    voxel = [float(v) for v in voxel_size_nm]
    extent = [int(n) for n in shape]
    while max(extent) > chunk:
        largest = max(voxel)
        factor = tuple(2 if v * SQRT2 < largest * (1 - 1e-9) else 1 for v in voxel)
        if all(f == 1 for f in factor):
            factor = (2,) * len(voxel)
        factors.append(factor)
        voxel = [v * f for v, f in zip(voxel, factor, strict=True)]
        extent = [-(-n // f) for n, f in zip(extent, factor, strict=True)]
    return factors


def level_shapes(shape: Sequence[int], factors: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Voxels of each level ``s0…`` (z y x): level k has ``ceil(shape_{k-1} / factor_k)``."""
    shapes = [tuple(int(n) for n in shape)]
    for factor in factors:
        shapes.append(tuple(-(-n // f) for n, f in zip(shapes[-1], factor, strict=True)))
    return shapes


def level_transforms(
    voxel_size_nm: Sequence[float], translation_nm: Sequence[float],
    factors: Sequence[Sequence[int]],
) -> list[tuple[list[float], list[float]]]:  # fmt: skip
    """Scale and translation (nm, z y x) of each level ``s0…``: the voxel size times the product
    of the factors so far, and the centre of the first voxel, which moves by half the voxel-size
    growth (``t_k = t_0 + (s_k - s_0) / 2``, as :func:`cellseg.ngff.level_transform`, which this
    equals for ``(2, 2, 2)`` factors)."""
    grown = [1] * len(voxel_size_nm)
    transforms = []
    for level in range(len(factors) + 1):
        if level:
            grown = [g * f for g, f in zip(grown, factors[level - 1], strict=True)]
        scale = [float(s) * g for s, g in zip(voxel_size_nm, grown, strict=True)]
        translation = [
            float(t) + (sk - float(s0)) / 2
            for t, sk, s0 in zip(translation_nm, scale, voxel_size_nm, strict=True)
        ]
        transforms.append((scale, translation))
    return transforms


def create_pyramid_group(
    parent: Any, name: str, shapes: Sequence[Sequence[int]], dtype: np.dtype | str,
    voxel_size_nm: Sequence[float], translation_nm: Sequence[float],
    factors: Sequence[Sequence[int]], attrs: dict[str, Any] | None = None,
) -> list[Any]:  # fmt: skip
    """Group ``parent/name`` with empty arrays ``s0…`` of ``shapes``; return them.

    As :func:`cellseg.ngff.create_multiscale_group` (the same ``multiscales``, chunks, codec and
    fill value; identical for ``(2, 2, 2)`` factors), but with per-axis level factors
    (:func:`pyramid_factors`) and their :func:`level_transforms`.
    """
    attributes = multiscales_attrs(name, voxel_size_nm, translation_nm, len(shapes))
    datasets = attributes["multiscales"][0]["datasets"]
    transforms = level_transforms(voxel_size_nm, translation_nm, factors)
    for dataset, (scale, translation) in zip(datasets, transforms, strict=True):
        dataset["coordinateTransformations"] = [
            {"type": "scale", "scale": scale},
            {"type": "translation", "translation": translation},
        ]
    group = parent.create_group(name, attributes={**attributes, **(attrs or {})})
    return _create_levels(group, shapes, dtype)


def _create_levels(group: Any, shapes: Sequence[Sequence[int]], dtype: np.dtype | str) -> list[Any]:
    """Empty arrays ``s0…`` of ``shapes`` in ``group``, chunked, compressed and filled as
    :func:`cellseg.ngff.create_multiscale_group` makes them."""
    arrays = []
    for level, shape in enumerate(shapes):
        chunks = tuple(min(CHUNK, int(n)) for n in shape)
        arrays.append(group.create_array(
            f"s{level}", shape=tuple(shape), chunks=chunks, dtype=dtype,
            compressors=blosc_zstd(), fill_value=0,
        ))  # fmt: skip
    return arrays


def reduce_mean(values: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """An EM level from the one below: uint8 means over ``factor`` blocks (z y x; each 1 or 2),
    rounded; an axis the factor does not divide is padded by repeating its last voxel.
    :func:`cellseg.ngff.downsample_mean` for ``(2, 2, 2)``; reduced :data:`SLAB` planes at a time
    (the means are local, so the result is the same)."""
    values = _pad_edge(values, factor)
    if all(f == 2 for f in factor):
        return _in_slabs(lambda slab: downsample_mean(slab, 2), values)

    def mean(slab: np.ndarray) -> np.ndarray:
        d, h, w = (n // f for n, f in zip(slab.shape, factor, strict=True))
        blocks = slab.astype(np.float32).reshape(d, factor[0], h, factor[1], w, factor[2])
        return np.round(blocks.mean(axis=(1, 3, 5))).astype(np.uint8)

    return _in_slabs(mean, values)


def reduce_labels(codes: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """A label-code level from the one below: block modes over ``factor`` blocks (z y x; each 1
    or 2), ties to the larger code, any unknown voxel makes the block unknown; an axis the
    factor does not divide is padded by repeating its last voxel.
    :func:`cellseg.ngff.downsample_labels`; reduced :data:`SLAB` planes at a time (a block's
    mode depends on its own voxels only, so the result is the same)."""
    codes = _pad_edge(codes, factor)
    return _in_slabs(lambda slab: downsample_labels(slab, UNKNOWN_CODE, tuple(factor)), codes)


def _in_slabs(reduce: Callable[[np.ndarray], np.ndarray], values: np.ndarray) -> np.ndarray:
    """``reduce`` applied to :data:`SLAB`-plane slabs of ``values`` (z first), joined: bounds the
    temporaries (NumPy's bincount of the label modes takes 8 bytes a voxel)."""
    if values.shape[0] <= SLAB:
        return reduce(values)
    return np.concatenate([reduce(values[z : z + SLAB]) for z in range(0, values.shape[0], SLAB)])


def _pad_edge(values: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    pad = [(0, -n % f) for n, f in zip(values.shape, factor, strict=True)]
    return np.pad(values, pad, mode="edge") if any(p for _, p in pad) else values


def stream_pyramid(
    shapes: Sequence[Sequence[int]],
    factors: Sequence[Sequence[int]],
    read: Callable[[Box], np.ndarray],
    reduce: Callable[[np.ndarray, Sequence[int]], np.ndarray],
    levels: Sequence[Any],
    emit: Callable[[int, Box, np.ndarray], None] | None = None,
    block: int = BLOCK,
) -> None:
    """Fill a pyramid block by block, never holding more than a block of any level.

    Level 0 is ``read`` box by box (``block``-voxel boxes, z y x); level k is ``reduce`` of the
    level below, read back from ``levels[k - 1]`` for boxes of ``max(CHUNK, block // 2)`` voxels
    (their sources: twice that on each halved axis). Each box's values are stored in
    ``levels[k][box]`` (arrays sliced like NumPy's: zarr arrays, or in-memory ones) and passed
    to ``emit(k, box, values)``. Boxes start on multiples of the 64-voxel chunk, so every write
    fills whole chunks and the arrays are what one write of the whole level makes.
    """
    for box in blocks(shapes[0], block):
        values = read(box)
        levels[0][box] = values
        if emit is not None:
            emit(0, box, values)
    step = max(CHUNK, block // 2)
    for level in range(1, len(shapes)):
        factor = factors[level - 1]
        below = shapes[level - 1]
        for box in blocks(shapes[level], step):
            source = tuple(
                slice(s.start * f, min(s.stop * f, n))
                for s, f, n in zip(box, factor, below, strict=True)
            )
            values = reduce(np.asarray(levels[level - 1][source]), factor)
            levels[level][box] = values
            if emit is not None:
                emit(level, box, values)


def _write_crop(
    crop_group: Any, box: CropBox, labels: LabelSource, voxel: Sequence[float],
    translation: Sequence[float], scratch: Path, block: int,
) -> None:  # fmt: skip
    """Write one crop's label groups (``all`` and each class) block by block; the label codes
    of every level go through ``scratch`` (a zarr store, removed afterwards) when the crop is
    larger than one block, else they stay in memory."""
    import zarr

    shape = tuple(b - a for a, b in zip(box.start, box.stop, strict=True))
    factors = pyramid_factors(voxel, shape)
    shapes = level_shapes(shape, factors)
    outputs = {}
    # the groups arrays_from_codes makes (all, then each class) and their dtypes
    for group, array in arrays_from_codes(np.zeros((1, 1, 1), np.uint16), labels.classes):
        attrs = all_attrs(labels.classes) if group == "all" else annotation_attrs(group)
        outputs[group] = create_pyramid_group(
            crop_group, group, shapes, array.dtype, voxel, translation, factors, attrs
        )
    if int(np.prod(shape)) <= block**3:
        levels: list[Any] = [np.zeros(s, dtype=np.uint16) for s in shapes]
    else:
        scratch_group = zarr.open_group(str(scratch), mode="w", zarr_format=2)
        levels = _create_levels(scratch_group, shapes, np.uint16)

    def read(local: Box) -> np.ndarray:
        return labels.codes(
            tuple(slice(a + s.start, a + s.stop) for a, s in zip(box.start, local, strict=True))
        )

    def emit(level: int, local: Box, codes: np.ndarray) -> None:
        for group, array in arrays_from_codes(codes, labels.classes):
            outputs[group][level][local] = array

    try:
        stream_pyramid(shapes, factors, read, reduce_labels, levels, emit, block)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
    from cellseg.data.store import discover_crops, read_crop_geometry
    from cellseg.data.voxel_checks import check_label_data

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


def import_dataset(
    mapping: MappingFile, index: int, out: Path, base: Path, block: int = BLOCK
) -> Path:
    """Import dataset ``index`` of ``mapping`` under ``out``; return the written ``.zarr`` store.

    ``base``: folder that relative source paths are resolved against. Refuses (one line) an
    existing ``{out}/{name}``, a non-uint8 EM, labels of another shape than the EM, a label
    value without a mapping and crops off the voxel grid or outside the volume, all before
    writing anything. Sources are read and the store written ``block`` voxels at a time
    (:data:`BLOCK`, a multiple of the 64-voxel chunk; :func:`stream_pyramid`), so memory is
    bounded by the block, not the volume; the arrays are those a whole-volume write makes.
    """
    if block <= 0 or block % CHUNK:
        raise ValueError(f"block {block}: must be a positive multiple of {CHUNK} voxels")
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
    em = open_volume(dataset["em"], base, at("em"))
    if em.dtype != np.uint8:
        raise CellsegError(
            f"{at('em')}: dtype {em.dtype}; cellseg's EM is 8-bit (fibsem-uint8): convert it "
            "to uint8 with your own contrast window first"
        )
    labels = LabelSource(mapping, index, em.shape, base, block)
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
    factors = pyramid_factors(voxel, em.shape)
    shapes = level_shapes(em.shape, factors)
    levels = create_pyramid_group(
        root.require_group(em_parent), em_name, shapes, em.dtype, voxel, offset, factors
    )
    stream_pyramid(shapes, factors, em.__getitem__, reduce_mean, levels, block=block)
    groundtruth = root.require_group(LABELS_PATH)
    for box in boxes:
        translation = [o + s * v for o, s, v in zip(offset, box.start, voxel, strict=True)]
        crop_group = groundtruth.require_group(box.name)
        _write_crop(crop_group, box, labels, voxel, translation, temporary / "scratch", block)
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
    mapping_path: Path | str, out: Path | str, source_root: Path | str | None = None,
    block: int = BLOCK,
) -> list[Path]:  # fmt: skip
    """Import every dataset of a mapping file under ``out``; return the written stores.

    Relative source paths resolve against ``source_root`` when given, else the mapping file's
    folder. Every dataset is checked for an existing output before any is written. ``block``:
    edge of the blocks read and written at a time (voxels, a multiple of 64; :data:`BLOCK`).
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
    datasets = range(len(mapping.content["datasets"]))
    return [import_dataset(mapping, i, out, base, block) for i in datasets]


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
