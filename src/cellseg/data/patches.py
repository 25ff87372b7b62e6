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

from cellseg.classes import CLASS_INDEX, GROUP_INDEX, NUM_CLASSES, NUM_GROUPS
from cellseg.data.multiscale import LabelEncoding, ScaleLevel
from cellseg.data.store import CropGeometry
from cellseg.data.voxel_checks import check_em_array
from cellseg.errors import CellsegError
from cellseg.groups import apply_group_negatives, infer_group_negatives
from cellseg.voxels import Resolution, as_vec3


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
        resolution_nm: Resolution,
        transform: PatchTransform | None = None,
    ) -> PatchGrid:
        """Grid of ``shape = (D, H, W)`` voxels at ``resolution_nm`` (one number, or ``(z, y, x)``
        nm: the spacing along each axis), centred on ``centre_nm``."""
        transform = transform or PatchTransform()
        offsets = [
            (np.arange(n) - (n - 1) / 2.0) * r
            for n, r in zip(shape, as_vec3(resolution_nm), strict=True)
        ]
        z_nm = centre_nm[0] + transform.z_sign * offsets[0]
        oy, ox = np.meshgrid(offsets[1], offsets[2], indexing="ij")
        yx = np.stack([oy, ox], axis=-1) @ transform.yx_matrix.T
        return cls(z_nm, yx + centre_nm[1:])


def _index_box(indices: list[np.ndarray], shape: tuple[int, ...]) -> list[slice]:
    return [
        slice(int(np.clip(i.min(), 0, n - 1)), int(np.clip(i.max(), 0, n - 1)) + 1)
        for i, n in zip(indices, shape, strict=True)
    ]


def _read_region(
    array: zarr.Array | CachedBox, box: list[slice]
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The stored voxels of ``box``, or of a larger in-memory box holding it (no copy).

    Returns:
        ``(region, origin)``: a C-contiguous ``(z, y, x)`` array and the level index of its
        first voxel.
    """
    if isinstance(array, CachedBox):
        return array.region(tuple(box))
    return np.ascontiguousarray(array[tuple(box)]), tuple(b.start for b in box)


def _location(array: zarr.Array | CachedBox) -> str:
    """Store path + group + level of an array, for error messages."""
    array = array.array if isinstance(array, CachedBox) else array
    location = getattr(array, "location", None)  # a store.StoredArray names itself
    if location is None:  # a plain zarr array: its store URL
        location = str(getattr(array, "store_path", "the EM array")).removeprefix("file://")
    return str(location)


def _as_slice(positions: np.ndarray) -> slice | np.ndarray:
    """``positions`` as a slice when they step by ±1 (a view instead of a copy), else as is."""
    if len(positions) > 1 and np.all(np.diff(positions) == positions[1] - positions[0]):
        step = int(positions[1] - positions[0])
        if step in (1, -1):
            stop = int(positions[-1]) + step
            return slice(int(positions[0]), None if stop < 0 else stop, step)
    if len(positions) == 1:
        return slice(int(positions[0]), int(positions[0]) + 1)
    return positions


TARGET_UNKNOWN = 255
"""Unknown (unannotated) in the compact ``uint8`` target: 0 absent, 1 present, 255 unknown."""


def compact_target(target: np.ndarray) -> np.ndarray:
    """float32 target (1 present, 0 absent, NaN unknown) → the compact ``uint8`` one."""
    return np.nan_to_num(target, nan=TARGET_UNKNOWN).astype(np.uint8)


def _as_target(decoded: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return decoded if dtype.kind == "f" else compact_target(decoded)


class NearestIndex:
    """The stored voxel nearest each point of a grid in one scale level (clamped at the border).

    Every label class of a crop stored on the same level shares one index: the grid arithmetic
    is done once per patch, and each class costs one gather and one table lookup.

    Attributes:
        shape: ``(D, H, W)`` grid shape.
        inside_z: ``(D,)`` whether each slice lies inside the level's box.
        inside_yx: ``(H * W,)`` whether each in-slice point lies inside the level's box.
        box: the index box of stored voxels the grid touches.
    """

    def __init__(self, level: ScaleLevel, grid: PatchGrid) -> None:
        iz = np.floor(_z_index(level, grid.z_nm) + 0.5).astype(np.int64)
        yx = (grid.yx_nm - np.asarray(level.translation_nm[1:])) / np.asarray(
            level.voxel_size_nm[1:]
        )
        iy = np.floor(yx[..., 0] + 0.5).astype(np.int64)
        ix = np.floor(yx[..., 1] + 0.5).astype(np.int64)
        self.shape = (len(iz), *iy.shape)
        self.inside_z = (iz >= 0) & (iz < level.shape[0])
        self.inside_yx = (
            (iy >= 0) & (iy < level.shape[1]) & (ix >= 0) & (ix < level.shape[2])
        ).ravel()
        self.box = _index_box([iz, iy, ix], level.shape)
        self._iz, self._iy, self._ix = iz, iy.ravel(), ix.ravel()
        # inside slices form one run (z is linear in the slice index); so do the points kept
        z_inside = np.flatnonzero(self.inside_z)
        self._z_run = (int(z_inside[0]), int(z_inside[-1]) + 1) if len(z_inside) else (0, 0)
        self._yx_all = bool(self.inside_yx.all())
        self._yx_kept = None if self._yx_all else np.flatnonzero(self.inside_yx)
        self._sources: dict[tuple, np.ndarray] = {}
        self._destination: np.ndarray | None = None

    @property
    def inside(self) -> np.ndarray:
        """``(D, H, W)`` whether each point lies inside the level's box."""
        return (self.inside_z[:, None] & self.inside_yx[None]).reshape(self.shape)

    def _source(self, region: np.ndarray, origin: tuple[int, ...], every_point: bool) -> np.ndarray:
        """Flat indices into ``region`` of the points read: ``(D, H * W)`` for every point, else
        ``(z run, points inside)``."""
        key = (origin, region.shape, every_point)
        source = self._sources.get(key)
        if source is None:
            rz, ry, rx = region.shape
            lz = np.clip(self._iz - origin[0], 0, rz - 1)
            lyx = np.clip(self._iy - origin[1], 0, ry - 1) * rx + np.clip(
                self._ix - origin[2], 0, rx - 1
            )
            if not every_point:
                lz = lz[self._z_run[0] : self._z_run[1]]
                lyx = lyx if self._yx_kept is None else lyx[self._yx_kept]
            source = lz[:, None] * (ry * rx) + lyx[None, :]
            self._sources[key] = source
        return source

    def gather(self, array: zarr.Array | CachedBox) -> np.ndarray:
        """``(D, H, W)`` stored values at every point (clamped at the border), stored dtype."""
        region, origin = _read_region(array, self.box)
        return np.take(region.ravel(), self._source(region, origin, True)).reshape(self.shape)

    def fill(
        self,
        out: np.ndarray,
        array: zarr.Array | CachedBox,
        encoding: LabelEncoding,
        table: np.ndarray | None = None,
    ) -> None:
        """``out`` (``(D, H, W)``) ← decoded labels inside the level's box, unknown outside.

        ``out`` is float32 (unknown: NaN) or uint8 (the compact target, unknown:
        :data:`TARGET_UNKNOWN`); ``table``: ``encoding`` as a 256-entry lookup of ``out``'s dtype
        for uint8 arrays (one gather a voxel).
        """
        unknown = np.nan if out.dtype.kind == "f" else TARGET_UNKNOWN
        rows = out.reshape(self.shape[0], -1)
        z0, z1 = self._z_run
        if z0 == z1 or not self.inside_yx.any():
            rows.fill(unknown)
            return
        region, origin = _read_region(array, self.box)
        values = np.take(region.ravel(), self._source(region, origin, False))
        lookup = table is not None and values.dtype == np.uint8
        if self._yx_kept is None:  # whole slices inside: decode straight into them
            rows[:z0] = unknown
            rows[z1:] = unknown
            if lookup:
                np.take(table, values, out=rows[z0:z1])
            else:
                rows[z0:z1] = _as_target(encoding.to_target(values), out.dtype)
            return
        # part of each slice inside: NaN everywhere, then the points inside (a flat scatter is
        # several times faster than masked 2D assignment)
        if self._destination is None:
            kept = self._yx_kept
            self._destination = (np.arange(z0, z1)[:, None] * rows.shape[1] + kept).ravel()
        rows.fill(unknown)
        if lookup:
            decoded = np.take(table, values)
        else:
            decoded = _as_target(encoding.to_target(values), out.dtype)
        out.reshape(-1)[self._destination] = decoded.ravel()


def sample_nearest(
    array: zarr.Array, level: ScaleLevel, grid: PatchGrid
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour values of ``array`` at the grid's points.

    Returns:
        ``(values, inside)``, both ``(D, H, W)``: the stored values (clamped at the border) and
        whether each point lies inside the array's box.
    """
    index = NearestIndex(level, grid)
    return index.gather(array), index.inside


# dtypes whose products with float32 weights are float32, exactly as if converted first
_EXACT_IN_FLOAT32 = {np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.float32)}


def sample_linear(
    array: zarr.Array | CachedBox,
    level: ScaleLevel,
    grid: PatchGrid,
    location: str | None = None,
) -> np.ndarray:
    """Trilinear interpolation of ``array`` at the grid's points, edge values beyond the box.

    Bilinear in each stored z plane the grid needs (each plane once, shared by the slices either
    side of it), then linear in z; weights and arithmetic in float32.

    Args:
        location: the array's store path, group and level for the error message (derived from
            the array when None).

    Returns:
        ``(D, H, W)`` float32.

    Raises:
        CellsegError: a floating-point array holds NaN or ±inf where the grid reads it (integer
            EM cannot, and is not checked).
    """
    fz = _z_index(level, grid.z_nm)
    yx = (grid.yx_nm - np.asarray(level.translation_nm[1:])) / np.asarray(level.voxel_size_nm[1:])
    fy, fx = yx[..., 0], yx[..., 1]
    z0, y0, x0 = (np.floor(f).astype(np.int64) for f in (fz, fy, fx))
    # the box of the points' lower and upper neighbours (their extremes, without stacking them)
    box = _index_box([np.array([i.min(), i.max() + 1]) for i in (z0, y0, x0)], level.shape)
    region, origin = _read_region(array, box)
    is_float = region.dtype.kind == "f"
    if region.dtype not in _EXACT_IN_FLOAT32:
        region = region.astype(np.float32)
    rz, ry, rx = region.shape

    wz = (fz - z0).astype(np.float32)[:, None]
    wy = (fy - y0).astype(np.float32).ravel()
    wx = (fx - x0).astype(np.float32).ravel()
    ly0 = np.clip(y0 - origin[1], 0, ry - 1).ravel()
    ly1 = np.clip(y0 + 1 - origin[1], 0, ry - 1).ravel()
    lx0 = np.clip(x0 - origin[2], 0, rx - 1).ravel()
    lx1 = np.clip(x0 + 1 - origin[2], 0, rx - 1).ravel()
    corners = (ly0 * rx + lx0, ly0 * rx + lx1, ly1 * rx + lx0, ly1 * rx + lx1)
    lower = np.clip(z0 - origin[0], 0, rz - 1)
    upper = np.clip(z0 + 1 - origin[0], 0, rz - 1)
    needs_upper = bool(np.any(wz > 0))
    planes, positions = np.unique(
        np.concatenate([lower, upper]) if needs_upper else lower, return_inverse=True
    )
    # the four corner values of every point in each plane, in the stored dtype
    gathered = np.empty((4, len(planes), len(wx)), dtype=region.dtype)
    for row, plane in enumerate(planes):
        flat_plane = region[plane].ravel()
        for corner, index in enumerate(corners):
            np.take(flat_plane, index, out=gathered[corner, row])
    # non-finite float EM is refused below, not warned about on the way
    with np.errstate(invalid="ignore", over="ignore"):
        planes_yx = _bilinear(gathered, wx, wy)
        result = planes_yx[_as_slice(positions[: len(z0)])]
        if needs_upper:
            result = result * (1 - wz) + planes_yx[_as_slice(positions[len(z0) :])] * wz
    result = result.reshape(len(fz), *fy.shape)
    if is_float and not np.isfinite(result).all():
        where = location or _location(array)
        raise CellsegError(
            f"{where}: EM holds NaN or infinite values ({region.dtype}); replace them with "
            "finite intensities (e.g. the background value) in the store, or leave the crops "
            "on this EM out of the datasplit"
        )
    return result


def _bilinear(gathered: np.ndarray, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """``(planes, P)`` float32 bilinear values from the ``(4, planes, P)`` corner values
    (y0x0, y0x1, y1x0, y1x1) and ``(P,)`` float32 weights of x1 and y1.

    The same operations in the same order as on corners converted to float32 first (the
    products of small integers and float32 are float32), so the result is bit-identical to
    ``top = a (1 - wx) + b wx; bottom = c (1 - wx) + d wx; top (1 - wy) + bottom wy``; in place
    to save temporaries.
    """
    one_minus_wx, one_minus_wy = 1 - wx, 1 - wy
    top = np.multiply(gathered[0], one_minus_wx, dtype=np.float32)
    scratch = np.multiply(gathered[1], wx, dtype=np.float32)
    top += scratch
    bottom = np.multiply(gathered[2], one_minus_wx, dtype=np.float32)
    np.multiply(gathered[3], wx, out=scratch, dtype=np.float32)
    bottom += scratch
    top *= one_minus_wy
    bottom *= wy
    top += bottom
    return top


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
        if self._holds(local):
            return self.data[local]
        return np.asarray(self.array[box])

    def _holds(self, local: tuple[slice, ...]) -> bool:
        return all(
            s.start >= 0 and s.stop <= n for s, n in zip(local, self.data.shape, strict=True)
        )

    def region(self, box: tuple[slice, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
        """``(region, origin)`` holding ``box``: the whole cached box when it holds ``box`` (no
        copy; the samplers index into it), else ``box`` read from the array."""
        local = tuple(slice(b.start - o, b.stop - o) for b, o in zip(box, self.origin, strict=True))
        if self._holds(local):
            return self.data, self.origin
        return np.ascontiguousarray(self.array[box]), tuple(b.start for b in box)


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
    """Reads resampled EM and 14-channel targets from one crop (19 with ``groups``).

    Holds only picklable state until first use; zarr handles are opened lazily in the process
    that reads (each data-loader worker gets its own).

    Args:
        geometry: the crop's parsed multiscales (:func:`cellseg.data.store.read_crop_geometry`).
        resolution_nm: output voxel size in nm, one number or ``(z, y, x)``.
        em_range: ``(low, high)`` raw EM values clipped to before scaling to [0, 1];
            floating-point EM mostly outside it is refused
            (:func:`~cellseg.data.voxel_checks.check_em_array`).
        infer_true_negatives: where an annotated class is positive, set classes the crop does not
            annotate to 0 (the 14 classes are mutually exclusive in the CellMap hierarchy).
        cache: an :class:`ArrayCache` to hold this crop's arrays in memory, or None to read
            every patch from the store.
        context_nm: ``(z, yx)`` half-extent of the patches read (rotation included), nm: the EM
            box cached around the crop reaches this far beyond it.
        groups: append the :data:`cellseg.classes.NUM_GROUPS` group channels after the 14
            (:mod:`cellseg.groups`, issue 33 item 2; NaN where the crop has no such group label)
            and, where a group label is 0, make its members' unknown voxels 0. Without it a
            crop's group labels are not read (so targets keep 14 channels).
    """

    def __init__(
        self,
        geometry: CropGeometry,
        resolution_nm: Resolution,
        em_range: tuple[float, float] = (10.6, 194.1),
        infer_true_negatives: bool = False,
        cache: ArrayCache | None = None,
        context_nm: tuple[float, float] = (0.0, 0.0),
        groups: bool = False,
    ) -> None:
        self.geometry = geometry
        self.groups = groups
        # target channel of each label array read: the 14 classes, then (with groups) the groups
        self._channels = dict(CLASS_INDEX)
        if groups:
            self._channels.update({g: NUM_CLASSES + i for g, i in GROUP_INDEX.items()})
        self.voxel_nm = as_vec3(resolution_nm)
        self.em_range = (float(em_range[0]), float(em_range[1]))
        self.infer_true_negatives = infer_true_negatives
        self._em_level = geometry.em.level_for(resolution_nm)
        # float EM off the scale of em_range (float32 in [0, 1]) would clip to a blank image:
        # refused in the datasplit step's line (a central block of the level, float EM only)
        check_em_array(geometry.em.open_level(self._em_level), self.em_range)
        self._label_levels = {
            name: multiscale.level_for(resolution_nm)
            for name, multiscale in geometry.labels.items()
            if name in self._channels
        }
        self.cache = cache
        self.context_nm = context_nm
        self._arrays: dict[str, zarr.Array] | None = None
        # classes this crop does not annotate: NaN in every patch
        self._unannotated = [
            i for name, i in self._channels.items() if name not in self._label_levels
        ]
        # uint8 labels decode through a 256-entry table (LabelEncoding.decode's own rule)
        self._tables = {
            name: encoding.to_target(np.arange(256, dtype=np.int64))
            for name, encoding in geometry.encodings.items()
        }
        self._compact_tables = {name: compact_target(t) for name, t in self._tables.items()}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def _open(self) -> dict[str, zarr.Array]:
        if self._arrays is None:
            arrays = {"__em__": self.geometry.em.open_level(self._em_level)}
            for name, level in self._label_levels.items():
                arrays[name] = self.geometry.labels[name].open_level(level)
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
        # the EM box is this crop's (crops of a dataset share the EM array): keyed by the box,
        # or every crop after the first would miss and read the store on each patch
        key = f"{group.location}/{level.path}" + (str(box) if name == "__em__" else "")
        return self.cache.get(key, array, box)  # type: ignore[union-attr]

    def read(self, grid: PatchGrid, compact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """EM and targets at the grid's points.

        Args:
            grid: the patch's points.
            compact: the target as ``uint8`` (0 absent, 1 present, :data:`TARGET_UNKNOWN`
                unknown): a quarter of the bytes a loader worker hands to the trainer.

        Returns:
            ``(em, target)``: ``(D, H, W)`` float32 in [0, 1] and ``(14, D, H, W)`` (with
            ``groups``: ``(14 + NUM_GROUPS, D, H, W)``, the group labels after) float32 with
            1 present, 0 absent and NaN where unannotated (class not annotated by this crop,
            outside the crop's box, or encoded unknown), or its compact ``uint8`` form.
        """
        arrays = self._open()
        em_location = f"{self.geometry.em.location}/{self._em_level.path}"
        em = normalize_em(
            sample_linear(arrays["__em__"], self._em_level, grid, em_location), self.em_range
        )
        channels = NUM_CLASSES + NUM_GROUPS if self.groups else NUM_CLASSES
        target = np.empty((channels, *em.shape), dtype=np.uint8 if compact else np.float32)
        target[self._unannotated] = TARGET_UNKNOWN if compact else np.nan
        tables = self._compact_tables if compact else self._tables
        # classes stored on the same grid (the usual case) share one nearest-voxel index
        indices: dict[tuple, NearestIndex] = {}
        for name, level in self._label_levels.items():
            key = (level.voxel_size_nm, level.translation_nm, level.shape)
            index = indices.get(key)
            if index is None:
                index = indices[key] = NearestIndex(level, grid)
            index.fill(
                target[self._channels[name]],
                arrays[name],
                self.geometry.encodings[name],
                tables[name],
            )
        if self.groups:
            for name in GROUP_INDEX:
                if name in self._label_levels:
                    apply_group_negatives(target, name, target[self._channels[name]])
        if self.infer_true_negatives:
            if self.groups:
                # the groups' own rule (it only ever writes 0, so the order is free)
                infer_group_negatives(target)
            # the 14 classes only: a group positive is some member, so it must not make its
            # members negative
            infer_true_negatives(target[:NUM_CLASSES])
        return em, target


def normalize_em(raw: np.ndarray, em_range: tuple[float, float]) -> np.ndarray:
    """Raw EM values clipped to ``em_range = (low, high)`` and scaled to [0, 1], float32: the one
    normalisation of training patches and of evaluation."""
    low, high = em_range
    return ((np.clip(raw, low, high) - low) / (high - low)).astype(np.float32, copy=False)


def infer_true_negatives(target: np.ndarray) -> np.ndarray:
    """In place: where any class is 1, every unknown class becomes 0. ``target`` is
    ``(C, ...)``, float32 (unknown NaN) or compact uint8 (unknown :data:`TARGET_UNKNOWN`)."""
    if target.dtype.kind == "f":
        positive_somewhere = np.nan_to_num(target, nan=0.0).max(axis=0) > 0
        unknown = np.isnan(target)
    else:
        positive_somewhere = (target == 1).any(axis=0)
        unknown = target == TARGET_UNKNOWN
    target[unknown & positive_somewhere[None]] = 0
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
