"""Reading training patches from CellMap crops: placement, resampling, augmentation.

A patch is a regular grid of ``(D, H, W)`` voxels at ``resolution_nm`` centred on a point in
world space (nm). Augmentation (mirrors, x–y transpose, rotation about z) is a transform of that
grid, so EM and labels are resampled once, directly from the stored scale level nearest the
requested resolution: EM linearly, labels by nearest neighbour, so unannotated (NaN) regions stay
NaN and 0/1 values are never blended. Only the box of stored voxels the transformed grid touches
is read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import zarr

from cellseg.classes import CLASS_INDEX, NUM_CLASSES
from cellseg.data.store import CropGeometry, ScaleLevel


@dataclass(frozen=True)
class Augmentation:
    """Random spatial augmentation (SPEC §5). Probabilities are per patch.

    Attributes:
        mirror_z: probability of flipping z (3D patches only).
        mirror_y: probability of flipping y.
        mirror_x: probability of flipping x.
        transpose_xy: probability of swapping the y and x axes.
        rotate_xy: probability of rotating about the z axis by an angle uniform in [0, 360°).
    """

    mirror_z: float = 0.5
    mirror_y: float = 0.5
    mirror_x: float = 0.5
    transpose_xy: float = 0.5
    rotate_xy: float = 1.0

    @classmethod
    def none(cls) -> Augmentation:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class PatchTransform:
    """A drawn augmentation: ``world = centre + (z_sign * oz, A @ (oy, ox))`` for grid offsets o."""

    z_sign: float = 1.0
    yx_matrix: np.ndarray = field(default_factory=lambda: np.eye(2))

    @classmethod
    def draw(
        cls, rng: np.random.Generator, augmentation: Augmentation, is_3d: bool
    ) -> PatchTransform:
        z_sign = -1.0 if is_3d and rng.random() < augmentation.mirror_z else 1.0
        matrix = np.diag(
            [
                -1.0 if rng.random() < augmentation.mirror_y else 1.0,
                -1.0 if rng.random() < augmentation.mirror_x else 1.0,
            ]
        )
        if rng.random() < augmentation.transpose_xy:
            matrix = matrix[::-1].copy()
        if rng.random() < augmentation.rotate_xy:
            angle = rng.uniform(0.0, 2.0 * math.pi)
            cos, sin = math.cos(angle), math.sin(angle)
            matrix = np.array([[cos, -sin], [sin, cos]]) @ matrix
        return cls(z_sign, matrix)


@dataclass(frozen=True)
class PatchGrid:
    """World coordinates (nm) of a patch's voxel centres, kept separable: z × (y, x).

    Attributes:
        z_nm: ``(D,)`` z of each slice.
        yx_nm: ``(H, W, 2)`` y and x of each voxel in a slice.
    """

    z_nm: np.ndarray
    yx_nm: np.ndarray

    @classmethod
    def build(
        cls,
        centre_nm: np.ndarray,
        shape: tuple[int, int, int],
        resolution_nm: float,
        transform: PatchTransform | None = None,
    ) -> PatchGrid:
        """Grid of ``shape = (D, H, W)`` voxels at ``resolution_nm``, centred on ``centre_nm``."""
        transform = transform or PatchTransform()
        offsets = [(np.arange(n) - (n - 1) / 2.0) * resolution_nm for n in shape]
        z_nm = centre_nm[0] + transform.z_sign * offsets[0]
        oy, ox = np.meshgrid(offsets[1], offsets[2], indexing="ij")
        yx = np.stack([oy, ox], axis=-1) @ transform.yx_matrix.T
        return cls(z_nm, yx + centre_nm[1:])


def _index_box(indices: list[np.ndarray], shape: tuple[int, ...]) -> list[slice]:
    return [
        slice(int(np.clip(i.min(), 0, n - 1)), int(np.clip(i.max(), 0, n - 1)) + 1)
        for i, n in zip(indices, shape, strict=True)
    ]


def sample_nearest(
    array: zarr.Array, level: ScaleLevel, grid: PatchGrid
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour values of ``array`` at the grid's points.

    Returns:
        ``(values, inside)``, both ``(D, H, W)``: the stored values (clamped at the border) and
        whether each point lies inside the array's box.
    """
    iz = np.floor(_z_index(level, grid.z_nm) + 0.5).astype(np.int64)
    yx = (grid.yx_nm - np.asarray(level.translation_nm[1:])) / np.asarray(level.voxel_size_nm[1:])
    iy = np.floor(yx[..., 0] + 0.5).astype(np.int64)
    ix = np.floor(yx[..., 1] + 0.5).astype(np.int64)
    inside = ((iz >= 0) & (iz < level.shape[0]))[:, None, None] & (
        (iy >= 0) & (iy < level.shape[1]) & (ix >= 0) & (ix < level.shape[2])
    )[None]
    box = _index_box([iz, iy, ix], level.shape)
    region = np.asarray(array[tuple(box)])
    lz = np.clip(iz - box[0].start, 0, region.shape[0] - 1)
    ly = np.clip(iy - box[1].start, 0, region.shape[1] - 1)
    lx = np.clip(ix - box[2].start, 0, region.shape[2] - 1)
    flat = (ly * region.shape[2] + lx).ravel()
    values = region.reshape(region.shape[0], -1)[lz][:, flat]
    return values.reshape(len(iz), *iy.shape), inside


def sample_linear(array: zarr.Array, level: ScaleLevel, grid: PatchGrid) -> np.ndarray:
    """Trilinear interpolation of ``array`` at the grid's points, edge values beyond the box.

    Returns:
        ``(D, H, W)`` float32.
    """
    fz = _z_index(level, grid.z_nm)
    yx = (grid.yx_nm - np.asarray(level.translation_nm[1:])) / np.asarray(level.voxel_size_nm[1:])
    fy, fx = yx[..., 0], yx[..., 1]
    z0, y0, x0 = (np.floor(f).astype(np.int64) for f in (fz, fy, fx))
    box = _index_box(
        [np.concatenate([z0, z0 + 1]), np.stack([y0, y0 + 1]), np.stack([x0, x0 + 1])], level.shape
    )
    region = np.asarray(array[tuple(box)], dtype=np.float32)
    dz, dy, dx = region.shape

    def local(i: np.ndarray, axis_start: int, n: int) -> np.ndarray:
        return np.clip(i - axis_start, 0, n - 1)

    wz = (fz - z0).astype(np.float32)[:, None]
    wy = (fy - y0).astype(np.float32).ravel()
    wx = (fx - x0).astype(np.float32).ravel()
    flat_region = region.reshape(dz, dy * dx)
    ly0, ly1 = local(y0, box[1].start, dy).ravel(), local(y0 + 1, box[1].start, dy).ravel()
    lx0, lx1 = local(x0, box[2].start, dx).ravel(), local(x0 + 1, box[2].start, dx).ravel()

    def bilinear(slices: np.ndarray) -> np.ndarray:
        top = slices[:, ly0 * dx + lx0] * (1 - wx) + slices[:, ly0 * dx + lx1] * wx
        bottom = slices[:, ly1 * dx + lx0] * (1 - wx) + slices[:, ly1 * dx + lx1] * wx
        return top * (1 - wy) + bottom * wy

    lower = bilinear(flat_region[local(z0, box[0].start, dz)])
    if np.any(wz > 0):
        upper = bilinear(flat_region[local(z0 + 1, box[0].start, dz)])
        lower = lower * (1 - wz) + upper * wz
    return lower.reshape(len(fz), *fy.shape)


def _z_index(level: ScaleLevel, z_nm: np.ndarray) -> np.ndarray:
    """Continuous z voxel index of ``(D,)`` world z values in nm."""
    return (z_nm - level.translation_nm[0]) / level.voxel_size_nm[0]


class CachedBox:
    """A box of an array held in memory; reads outside it go to the array itself.

    Behaves like the array for the ``array[z0:z1, y0:y1, x0:x1]`` reads of the samplers.
    """

    def __init__(self, array: zarr.Array, box: tuple[slice, ...]) -> None:
        self.array = array
        self.origin = tuple(b.start for b in box)
        self.data = np.asarray(array[box])

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def __getitem__(self, box: tuple[slice, ...]) -> np.ndarray:
        local = tuple(slice(b.start - o, b.stop - o) for b, o in zip(box, self.origin, strict=True))
        if all(s.start >= 0 and s.stop <= n for s, n in zip(local, self.data.shape, strict=True)):
            return self.data[local]
        return np.asarray(self.array[box])


class ArrayCache:
    """A per-process LRU of :class:`CachedBox` es, bounded in bytes.

    Training draws many patches from few crops; zarr decodes every chunk a patch touches again
    for each patch, which dominates loading time. Holding each crop's label arrays (at the level
    read) and the EM box around it in memory removes that cost after the first visit. The bound
    keeps memory flat: once full, the least recently used crop is dropped. Each data-loader
    worker has its own cache (``max_bytes`` each); a cache never travels to a worker (it is
    emptied when pickled).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._entries: dict[str, CachedBox] = {}
        self.bytes = 0

    def __getstate__(self) -> dict:
        return {"max_bytes": self.max_bytes, "_entries": {}, "bytes": 0}

    def get(self, key: str, array: zarr.Array, box: tuple[slice, ...]) -> CachedBox | zarr.Array:
        """The cached box for ``key``, loading it when it fits; else the array itself."""
        entry = self._entries.pop(key, None)
        if entry is None:
            size = int(np.prod([b.stop - b.start for b in box])) * array.dtype.itemsize
            if size > self.max_bytes:
                return array
            while self._entries and self.bytes + size > self.max_bytes:
                oldest = next(iter(self._entries))
                self.bytes -= self._entries.pop(oldest).nbytes
            entry = CachedBox(array, box)
            self.bytes += entry.nbytes
        self._entries[key] = entry  # most recently used last
        return entry


class CropReader:
    """Reads resampled EM and 14-channel targets from one crop.

    Holds only picklable state until first use; zarr handles are opened lazily in the process
    that reads (each data-loader worker gets its own).

    Args:
        geometry: the crop's parsed multiscales (:func:`cellseg.data.store.read_crop_geometry`).
        resolution_nm: isotropic output voxel size in nm.
        em_range: ``(low, high)`` raw EM values clipped to before scaling to [0, 1].
        infer_true_negatives: where an annotated class is positive, set classes the crop does not
            annotate to 0 (the 14 classes are mutually exclusive in the CellMap hierarchy).
        cache: an :class:`ArrayCache` to hold this crop's arrays in memory, or None to read
            every patch from the store.
        context_nm: ``(z, yx)`` half-extent of the patches read (rotation included), nm: the EM
            box cached around the crop reaches this far beyond it.
    """

    def __init__(
        self,
        geometry: CropGeometry,
        resolution_nm: float,
        em_range: tuple[float, float] = (10.6, 194.1),
        infer_true_negatives: bool = False,
        cache: ArrayCache | None = None,
        context_nm: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        self.geometry = geometry
        self.resolution_nm = float(resolution_nm)
        self.em_range = (float(em_range[0]), float(em_range[1]))
        self.infer_true_negatives = infer_true_negatives
        self._em_level = geometry.em.level_for(resolution_nm)
        self._label_levels = {
            name: multiscale.level_for(resolution_nm)
            for name, multiscale in geometry.labels.items()
        }
        self.cache = cache
        self.context_nm = context_nm
        self._arrays: dict[str, zarr.Array] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def _open(self) -> dict[str, zarr.Array]:
        if self._arrays is None:
            arrays = {"__em__": self.geometry.em.open_level(self._em_level)}
            for name, multiscale in self.geometry.labels.items():
                arrays[name] = multiscale.open_level(self._label_levels[name])
            self._arrays = arrays
        if self.cache is None:
            return self._arrays
        return {name: self._cached(name, array) for name, array in self._arrays.items()}

    def _cached(self, name: str, array: zarr.Array) -> CachedBox | zarr.Array:
        level = self._em_level if name == "__em__" else self._label_levels[name]
        if name == "__em__":
            start, stop = self.geometry.bounds_nm
            margin = np.array([self.context_nm[0], self.context_nm[1], self.context_nm[1]])
            low = np.floor(level.world_to_index(start - margin)).astype(int) - 1
            high = np.ceil(level.world_to_index(stop + margin)).astype(int) + 2
            box = tuple(
                slice(int(max(lo, 0)), int(min(hi, n)))
                for lo, hi, n in zip(low, high, level.shape, strict=True)
            )
        else:
            box = tuple(slice(0, n) for n in level.shape)
        group = self.geometry.em if name == "__em__" else self.geometry.labels[name]
        return self.cache.get(f"{group.location}/{level.path}", array, box)  # type: ignore[union-attr]

    def read(self, grid: PatchGrid) -> tuple[np.ndarray, np.ndarray]:
        """EM and targets at the grid's points.

        Returns:
            ``(em, target)``: ``(D, H, W)`` float32 in [0, 1] and ``(14, D, H, W)`` float32 with
            1 present, 0 absent and NaN where unannotated (class not annotated by this crop,
            outside the crop's box, or encoded unknown).
        """
        arrays = self._open()
        em = normalize_em(sample_linear(arrays["__em__"], self._em_level, grid), self.em_range)
        target = np.full((NUM_CLASSES, *em.shape), np.nan, dtype=np.float32)
        for name, level in self._label_levels.items():
            values, inside = sample_nearest(arrays[name], level, grid)
            channel = self.geometry.encodings[name].decode(values)
            channel[~inside] = np.nan
            target[CLASS_INDEX[name]] = channel
        if self.infer_true_negatives:
            infer_true_negatives(target)
        return em, target


def normalize_em(raw: np.ndarray, em_range: tuple[float, float]) -> np.ndarray:
    """Raw EM values clipped to ``em_range = (low, high)`` and scaled to [0, 1], float32: the one
    normalisation of training patches and of evaluation."""
    low, high = em_range
    return ((np.clip(raw, low, high) - low) / (high - low)).astype(np.float32, copy=False)


def infer_true_negatives(target: np.ndarray) -> np.ndarray:
    """In place: where any class is 1, every NaN class becomes 0. ``target`` is ``(C, ...)``."""
    positive_somewhere = np.nan_to_num(target, nan=0.0).max(axis=0) > 0
    unknown = np.isnan(target)
    target[unknown & positive_somewhere[None]] = 0.0
    return target


def crop_sampling_weights(
    geometries: list[CropGeometry], rare_class_boost: float = 0.0
) -> np.ndarray:
    """Probability of drawing each crop: proportional to its annotated volume, times
    ``1 + rare_class_boost * r`` where ``r`` = 1 − (crops annotating its rarest class / crops).

    Returns:
        ``(len(geometries),)`` float64 summing to 1.
    """
    volumes = np.array([np.prod(g.bounds_nm[1] - g.bounds_nm[0]) for g in geometries], dtype=float)
    counts: Mapping[str, int] = {}
    for geometry in geometries:
        for name in geometry.labels:
            counts[name] = counts.get(name, 0) + 1  # type: ignore[index]
    n = len(geometries)
    rarity = np.array([max(1.0 - counts[name] / n for name in g.labels) for g in geometries])
    weights = volumes * (1.0 + rare_class_boost * rarity)
    return weights / weights.sum()
