"""Split units: crops that must share a split because they share data (SPEC §8).

A model must never be scored on voxels it trained or validated on. Crop names do not say that
two crops share voxels: crops of one dataset may overlap or nest, and a dataset copied under
another name or root (a "v2" folder) holds the same crops again. So the datasplit places every
crop in nm and groups crops into **split units**, assigned to splits whole:

* every crop is placed by its box (:attr:`~cellseg.data.store.CropGeometry.bounds_nm`: the union
  of its classes' finest levels, nm ``z y x``) in its EM;
* crops whose EM is the same (:func:`em_fingerprint`: equal EM geometry and equal voxels at the
  coarsest EM level, whatever the store's name or root) are in one **dataset**: a renamed copy
  of a dataset is that dataset, and its crops land on the original's boxes;
* two crops of one dataset are **linked** when their boxes share volume, touch, or come within
  ``margin_nm`` of each other along every axis (the gap between the boxes, the largest of the
  per-axis gaps, is at most ``margin_nm``);
* a split unit is a connected component of linked crops (``split_by="crop"``), or a whole
  dataset with its copies (``split_by="dataset"``).

Everything here is in nm; nothing reads whole EM volumes (the fingerprint reads at most
:data:`FINGERPRINT_VOXELS` voxels of the coarsest EM level).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellseg.data.multiscale import open_group, read_multiscale
from cellseg.data.store import Crop
from cellseg.errors import CellsegError

SPLIT_BY: tuple[str, ...] = ("crop", "dataset")
"""What a split holds out: crops (units of overlapping crops) or whole datasets (new cells)."""

FINGERPRINT_EDGE = 64
"""Voxels per axis of the central block of the coarsest EM level hashed by :func:`em_fingerprint`."""

FINGERPRINT_VOXELS = FINGERPRINT_EDGE**3

TOLERANCE_NM = 1e-3
"""Box comparisons are exact up to this (nm): translations are floats read from JSON."""


@dataclass(frozen=True)
class CropBox:
    """A crop placed in its dataset.

    Attributes:
        crop: the crop.
        dataset: the EM's fingerprint (:func:`em_fingerprint`); copies of a dataset share it.
        start_nm: lower corner of the crop's box, nm ``(z, y, x)``.
        stop_nm: upper corner, nm ``(z, y, x)``.
    """

    crop: Crop
    dataset: str
    start_nm: tuple[float, float, float]
    stop_nm: tuple[float, float, float]

    @property
    def size_nm(self) -> np.ndarray:
        """Edge lengths of the box, nm ``(z, y, x)``."""
        return np.asarray(self.stop_nm) - np.asarray(self.start_nm)

    @property
    def volume_nm3(self) -> float:
        return float(np.prod(self.size_nm))


def em_fingerprint(store: Path | str, group: str) -> str:
    """A hash of an EM multiscale group's content that a copy keeps and another dataset lacks.

    Hashed: every level's path, shape, voxel size and translation (nm), and the decoded voxels
    (not the chunk files: a copy re-chunked or re-compressed is still a copy) of the central
    block of at most :data:`FINGERPRINT_EDGE` voxels per axis of the coarsest level. Cheap on
    real stores (at most 64³ voxels are hashed, read from the few chunks that hold them; no
    whole volume is read) and blind to the store's name and root. Two stores of equal fingerprint are treated as one
    dataset: a partial or re-registered copy (another EM shape or translation) is not detected.
    """
    store = Path(store)
    multiscale = read_multiscale(open_group(store), store, group)
    digest = hashlib.sha256()
    for level in multiscale.levels:
        digest.update(
            repr((level.path, level.shape, level.voxel_size_nm, level.translation_nm)).encode()
        )
    coarsest = max(multiscale.levels, key=lambda level: float(np.prod(level.voxel_size_nm)))
    array = multiscale.open_level(coarsest)
    first = [max(0, (n - FINGERPRINT_EDGE) // 2) for n in array.shape]
    block = tuple(
        slice(f, f + min(n, FINGERPRINT_EDGE)) for f, n in zip(first, array.shape, strict=True)
    )
    data = np.ascontiguousarray(array[block])
    digest.update(f"{data.dtype.str}{data.shape}".encode())
    digest.update(data.tobytes())
    return digest.hexdigest()


def crop_box(crop: Crop) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(start, stop)`` of a crop's box in nm ``(z, y, x)``: the union of its annotated classes'
    finest levels (read from the label store's ``multiscales``; no voxel is read)."""
    root = open_group(crop.label_store)
    starts, stops = [], []
    for name in crop.classes:
        start, stop = read_multiscale(root, crop.label_store, f"{crop.crop_group}/{name}").bounds_nm
        starts.append(start)
        stops.append(stop)
    return (
        tuple(float(v) for v in np.min(starts, axis=0)),
        tuple(float(v) for v in np.max(stops, axis=0)),
    )


def place_crops(
    crops: Sequence[Crop], where: Sequence[str] | None = None
) -> tuple[list[CropBox | None], list[str]]:
    """Each crop's :class:`CropBox` (None where it cannot be read) and the problems, one line
    each prefixed by ``where[i]`` (the crop's name by default). EM fingerprints are computed once
    per EM group (store paths resolved)."""
    fingerprints: dict[tuple[Path, str], str] = {}
    boxes: list[CropBox | None] = []
    problems: list[str] = []
    for index, crop in enumerate(crops):
        key = (crop.em_store.resolve(), crop.em_group)
        try:
            if key not in fingerprints:
                fingerprints[key] = em_fingerprint(crop.em_store, crop.em_group)
            start, stop = crop_box(crop)
        except CellsegError as error:
            problems.append(f"{crop.name if where is None else where[index]}: {error}")
            boxes.append(None)
            continue
        boxes.append(CropBox(crop, fingerprints[key], start, stop))  # type: ignore[arg-type]
    return boxes, problems


def gap_nm(a: CropBox, b: CropBox) -> float:
    """How far apart two boxes are, nm: the largest of the per-axis gaps (negative when they
    share volume, by the smallest per-axis overlap; 0 when they touch)."""
    lower = np.maximum(np.asarray(a.start_nm), np.asarray(b.start_nm))
    upper = np.minimum(np.asarray(a.stop_nm), np.asarray(b.stop_nm))
    return float(np.max(lower - upper))


def overlap_nm(a: CropBox, b: CropBox) -> np.ndarray:
    """Edge lengths (nm, ``z y x``) of the box two boxes share; zeros where they share none."""
    lower = np.maximum(np.asarray(a.start_nm), np.asarray(b.start_nm))
    upper = np.minimum(np.asarray(a.stop_nm), np.asarray(b.stop_nm))
    size = np.clip(upper - lower, 0.0, None)
    return size if (size > TOLERANCE_NM).all() else np.zeros(3)


def linked(a: CropBox, b: CropBox, margin_nm: float = 0.0) -> bool:
    """Whether two crops must share a split: same dataset (or a copy of it) and boxes that share
    volume, touch or are at most ``margin_nm`` apart (:func:`gap_nm`)."""
    return a.dataset == b.dataset and gap_nm(a, b) <= margin_nm + TOLERANCE_NM


def split_units(
    boxes: Sequence[CropBox], margin_nm: float = 0.0, split_by: str = "crop"
) -> list[list[int]]:
    """The split units of ``boxes``: lists of indexes into ``boxes``, each sorted, the units
    ordered by their first index (so crops that share nothing give ``[[0], [1], …]``).

    ``split_by="crop"``: connected components of :func:`linked` crops. ``"dataset"``: every
    crop of a dataset and of its copies (equal :attr:`CropBox.dataset`).
    """
    if split_by not in SPLIT_BY:
        raise CellsegError(f"data.split_by = {split_by!r}: choose one of {', '.join(SPLIT_BY)}")
    if margin_nm < 0 or not math.isfinite(margin_nm):
        raise CellsegError(f"data.split_margin_nm = {margin_nm}: must be a number >= 0 (nm)")
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for j in range(len(boxes)):
        for i in range(j):
            same = boxes[i].dataset == boxes[j].dataset
            if same and (split_by == "dataset" or linked(boxes[i], boxes[j], margin_nm)):
                parent[root(j)] = root(i)
    units: dict[int, list[int]] = {}
    for index in range(len(boxes)):
        units.setdefault(root(index), []).append(index)
    return sorted(units.values(), key=lambda unit: unit[0])


def _number(value: float) -> str:
    return f"{value:.6g}"


def _stores(a: CropBox, b: CropBox) -> str:
    """The two EM stores of a pair, by dataset name, or by path when the names agree."""
    first, second = a.crop.em_store, b.crop.em_store
    return (
        f"{first.stem} and {second.stem}" if first.stem != second.stem else f"{first} and {second}"
    )


def link_description(a: CropBox, b: CropBox, margin_nm: float) -> str:
    """How ``a`` is tied to ``b``, for a problem line: ``overlaps B by 96×512×512 nm (56 % of
    cropN)``, ``touches B (0 nm apart)``, ``lies 40 nm from B (data.split_margin_nm = 100)``;
    ``is a copy of B`` when both hold one box in two stores of identical EM, and the two stores
    named when they differ."""
    other = f"{b.crop.name} ({b.crop.split})"
    same_store = a.crop.em_store.resolve() == b.crop.em_store.resolve()
    size = overlap_nm(a, b)
    identical = np.allclose(a.start_nm, b.start_nm, atol=TOLERANCE_NM) and np.allclose(
        a.stop_nm, b.stop_nm, atol=TOLERANCE_NM
    )
    if identical and not same_store:
        return (
            f"is a copy of {other}: the same box in identical EM ({_stores(a, b)}: one dataset "
            "under two names or roots)"
        )
    if size.any():
        smaller = a if a.volume_nm3 <= b.volume_nm3 else b
        percent = 100.0 * float(np.prod(size)) / smaller.volume_nm3
        shown = "<1" if percent < 0.5 else f"{percent:.0f}"
        text = (
            f"overlaps {other} by {'×'.join(_number(v) for v in size)} nm ({shown} % of "
            f"{smaller.crop.name.rsplit('/', 1)[-1]})"
        )
    else:
        gap = max(gap_nm(a, b), 0.0)
        if gap <= TOLERANCE_NM:
            text = f"touches {other} (0 nm apart)"
        else:
            text = (
                f"lies {_number(gap)} nm from {other} (data.split_margin_nm = {_number(margin_nm)})"
            )
    if not same_store:
        text += f" in identical EM ({_stores(a, b)}: one dataset under two names or roots)"
    return text


def leakage_problems(
    rows: Sequence[tuple[str, Crop]],
    boxes: Sequence[CropBox | None],
    margin_nm: float = 0.0,
    split_by: str = "crop",
) -> list[str]:
    """Pairs of crops of a split that share data but not a split, one line per pair at the later
    row (``where`` of ``rows``): ``file:7: jrc_x/crop24 (test) overlaps jrc_x/crop25 (validate) by
    96×512×512 nm (56 % of crop24): put them in one split``. A crop whose box is None (it could
    not be read; reported elsewhere) is skipped. With ``split_by="dataset"``, also a dataset (or
    a copy of it) whose crops are in more than one split, one line at its first row.
    """
    problems = []
    for j, (where, crop) in enumerate(rows):
        b = boxes[j]
        if b is None:
            continue
        for i in range(j):
            a, other = boxes[i], rows[i][1]
            if a is None or other.split == crop.split or not linked(b, a, margin_nm):
                continue
            if (other.label_store.resolve(), other.crop_group) == (
                crop.label_store.resolve(),
                crop.crop_group,
            ):
                continue  # one crop listed twice: split_problems says so
            problems.append(
                f"{where}: {crop.name} ({crop.split}) {link_description(b, a, margin_nm)}: "
                "put them in one split"
            )
    if split_by == "dataset":
        seen: dict[str, tuple[str, Crop]] = {}
        spread: dict[str, set[str]] = {}
        for (where, crop), box in zip(rows, boxes, strict=True):
            if box is None:
                continue
            seen.setdefault(box.dataset, (where, crop))
            spread.setdefault(box.dataset, set()).add(crop.split)
        for dataset, splits in spread.items():
            if len(splits) > 1:
                where, crop = seen[dataset]
                problems.append(
                    f"{where}: dataset {crop.label_store.stem} has crops in "
                    f"{', '.join(sorted(splits))}, but data.split_by is dataset (whole datasets "
                    "held out): put all its crops, and its copies', in one split, or set "
                    "data.split_by: crop"
                )
    return problems
