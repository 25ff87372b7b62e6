"""Embedded synthetic FIB-SEM demo data in the exact CellMap layout (SPEC §3).

``cellseg make-demo-data --out DIR --seed N [--size small|default|large|realistic] [--force]``
writes four datasets ``DIR/{name}/{name}.zarr`` (zarr format 2, written with zarr 3.x; two for
``realistic``, whose crops have the real training crops' geometry: see :data:`SIZES`):

* EM: ``recon-1/em/fibsem-uint8/s0, s1, s2`` (uint8; 8, 16, 32 nm isotropic; first-voxel centre
  of s0 at 0 nm, level k shifted by half the voxel-size growth, i.e. +4 nm and +12 nm);
* labels: ``recon-1/labels/groundtruth/cropN/{class}/s0, s1, s2`` for each annotated class and
  ``cropN/all`` (class ids), at 4, 8 or 16 nm per crop (``realistic``: 4 nm, (2.6, 2, 2) nm and
  32 nm), placed by their translation only.

How it works. Each dataset is a *scene*: an analytic description in nanometres of phantom cells
(a Voronoi tessellation of cell seeds capped by spheres, thin extracellular gaps, plasma
membrane) holding a nucleus and organelles (mitochondria with ribosome-like specks, curved Golgi
stacks, vesicles, endosomes, ER tubes and sheets), each a signed-distance shape split into a
membrane shell and a lumen. ``_Scene.render`` evaluates the scene on any voxel grid (origin,
voxel size, shape), so the EM (at 8 nm) and every label crop (at 4/8/16 nm) are sampled from the
same geometry and agree to the nanometre, and anything large can be produced slab by slab in z
without holding the whole volume in memory. EM intensities are derived from the 8 nm class map
(per-class mean and texture, chromatin clumps in the nucleus, blur, noise); EM pyramid levels are
block means, label pyramid levels are block modes that turn a block containing any ``unknown``
(255) voxel into 255.

Everything is deterministic for a seed (``numpy.random.default_rng``; noise is drawn per global
z slice so slab boundaries leave no seams). The generator writes only under ``--out`` and leaves
a marker file there; it refuses to write into a non-empty directory without that marker unless
``--force`` is given.

Class ids in ``cropN/all`` follow the CellMap label ids (``CELLMAP_LABEL_IDS``); ``nuc`` is a
composite class in CellMap, so its voxels carry the nucleoplasm id. The mapping is also written
as an attribute of every ``all`` group (``cellseg.class_ids``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.classes import CLASSES
from cellseg.errors import CellsegError

# --------------------------------------------------------------------------------------------
# Constants of the layout
# --------------------------------------------------------------------------------------------

EM_PATH = "recon-1/em/fibsem-uint8"
LABELS_PATH = "recon-1/labels/groundtruth"
EM_VOXEL_NM = 8.0
EM_LEVELS = 3
LABEL_LEVELS = 3
UNKNOWN = 255
MARKER_NAME = "cellseg_demo.json"
CHUNK = 64

CELLMAP_LABEL_IDS: dict[str, int] = {
    "ecs": 1,
    "pm": 2,
    "mito_mem": 3,
    "mito_lum": 4,
    "mito_ribo": 5,
    "golgi_mem": 6,
    "golgi_lum": 7,
    "ves_mem": 8,
    "ves_lum": 9,
    "endo_mem": 10,
    "endo_lum": 11,
    "er_mem": 16,
    "er_lum": 17,
    # CellMap's nuc is a composite of nuclear sub-classes; its voxels carry the nucleoplasm id.
    "nuc": 28,
}
"""Value of each class in ``cropN/all`` (CellMap label ids); 0 = none of the annotated classes."""

SEMANTIC_ENCODING: dict[str, int] = {"absent": 0, "present": 1, "unknown": UNKNOWN}
INSTANCE_ENCODING: dict[str, int] = {"absent": 0, "unknown": UNKNOWN}
INSTANCE_CLASSES: frozenset[str] = frozenset({"nuc"})

# Internal per-voxel label codes (uint16): 0 cytoplasm (no class), 1..13 = CLASSES[0..12],
# nucleus instance i = NUC_BASE + i, and UNKNOWN_CODE. One code space for the class and the
# instance id lets the label pyramid take a single block mode and derive every array from it,
# so `all`, the per-class arrays and the nuc instance array always agree at every level.
CYTO = 0
CODE: dict[str, int] = {name: i + 1 for i, name in enumerate(CLASSES) if name != "nuc"}
NUC_BASE = 1000
UNKNOWN_CODE = 65535

# EM appearance per class: (mean grey value, texture amplitude), the contrast polarity of
# CellMap's (inverted) FIB-SEM uint8 volumes: stained membranes dark; ECS brightest (it saturates
# at the top of data.em_range, 194); lumens of vesicles and Golgi cisternae light and smooth, the
# Golgi's a little darker; granular cytoplasm in between; ER lumen denser than the cytoplasm
# (smooth, where the cytoplasm is grainy); mitochondrial matrix dark with darker ribosome specks;
# mottled endosome content; nucleoplasm with chromatin clumps. The lumens and the cytoplasm sit
# about 16 grey levels apart within [10.6, 194.1] (the range the models see), so a membrane is
# told apart by what it encloses, as in real EM. Index = class index 0..14 (0 = cyto).
_EM_LOOK: dict[str, tuple[float, float]] = {
    "cyto": (150.0, 8.0),
    "ecs": (215.0, 3.0),
    "pm": (50.0, 4.0),
    "mito_mem": (45.0, 4.0),
    "mito_lum": (84.0, 6.0),
    "mito_ribo": (22.0, 3.0),
    "golgi_mem": (55.0, 4.0),
    "golgi_lum": (167.0, 3.0),
    "ves_mem": (50.0, 4.0),
    "ves_lum": (183.0, 3.0),
    "endo_mem": (48.0, 4.0),
    "endo_lum": (133.0, 16.0),
    "er_mem": (55.0, 4.0),
    "er_lum": (116.0, 3.0),
    "nuc": (100.0, 9.0),
}
_EM_MEAN = np.array([_EM_LOOK[n][0] for n in ("cyto", *CLASSES)], dtype=np.float32)
_EM_TEXTURE = np.array([_EM_LOOK[n][1] for n in ("cyto", *CLASSES)], dtype=np.float32)
_NUC_CLASS_INDEX = len(CLASSES)  # index of nuc in the 0..14 class-index space (0 = cyto)

# EM synthesis: texture and chromatin are low-pass filtered versions of one white-noise field; a
# final blur stands in for the point-spread function, then additive noise. The halo (voxels)
# covers the filters' reach (truncate=3: 3 * 2.5 + 3 * 0.7 < 10) so slabs join without seams.
_TEXTURE_SIGMA = 1.0
_CHROMATIN_SIGMA = 2.5
_BLUR_SIGMA = 0.7
_NOISE_STD = 6.0
_TRUNCATE = 3.0
_EM_HALO = 10

# Geometry (nm). Membranes at least one EM voxel thick along any axis so that 8 nm point
# sampling never leaves holes in them.
# Stained membranes image about two 8 nm voxels thick in FIB-SEM; so are the demo's.
_ECS_GAP = 24.0  # half-width of the extracellular gap between touching cells
_PM_NM = 16.0
_MITO_MEM_NM = 16.0
_ORGANELLE_MEM_NM = 13.0
_ENDO_MEM_NM = 14.0


# --------------------------------------------------------------------------------------------
# Reusable writing helpers
# --------------------------------------------------------------------------------------------


def blosc_zstd() -> Any:
    """The compressor for every array: Blosc/zstd level 3 with bit-shuffle (numcodecs)."""
    import numcodecs

    return numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)


def level_transform(
    voxel_size_nm: Sequence[float], translation_nm: Sequence[float], level: int
) -> tuple[list[float], list[float]]:
    """Scale and translation (nm, z y x) of pyramid level ``level`` of a ×2-per-level pyramid.

    Translations give the centre of the first voxel, so level k's translation is the base
    translation plus half the voxel-size growth: ``t_k = t_0 + (s_k - s_0) / 2``
    (an 8 nm level over a 4 nm base: +2 nm).
    """
    scale = [float(s) * 2**level for s in voxel_size_nm]
    translation = [
        float(t) + (sk - float(s0)) / 2
        for t, sk, s0 in zip(translation_nm, scale, voxel_size_nm, strict=True)
    ]
    return scale, translation


def multiscales_attrs(
    name: str, voxel_size_nm: Sequence[float], translation_nm: Sequence[float], n_levels: int
) -> dict[str, Any]:
    """OME-NGFF 0.4 ``multiscales`` attributes for levels ``s0..s{n_levels-1}``.

    Axes ``z, y, x`` (space, nanometer); per level ``[scale, translation]`` in nm, see
    :func:`level_transform`.
    """
    datasets = []
    for level in range(n_levels):
        scale, translation = level_transform(voxel_size_nm, translation_nm, level)
        datasets.append(
            {
                "path": f"s{level}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": translation},
                ],
            }
        )
    return {
        "multiscales": [
            {
                "version": "0.4",
                "name": name,
                "axes": [
                    {"name": axis, "type": "space", "unit": "nanometer"} for axis in ("z", "y", "x")
                ],
                "datasets": datasets,
            }
        ]
    }


def annotation_attrs(class_name: str) -> dict[str, Any]:
    """CellMap ``cellmap.annotation`` attributes of a class group (semantic or instance)."""
    if class_name in INSTANCE_CLASSES:
        annotation_type = {"type": "instance_segmentation", "encoding": dict(INSTANCE_ENCODING)}
    else:
        annotation_type = {"type": "semantic_segmentation", "encoding": dict(SEMANTIC_ENCODING)}
    return {
        "cellmap": {"annotation": {"class_name": class_name, "annotation_type": annotation_type}}
    }


def create_multiscale_group(
    parent: Any,
    name: str,
    shape: Sequence[int],
    dtype: str | np.dtype,
    voxel_size_nm: Sequence[float],
    translation_nm: Sequence[float],
    n_levels: int,
    attrs: dict[str, Any] | None = None,
    chunks: int = CHUNK,
) -> list[Any]:
    """Create group ``parent/name`` with empty arrays ``s0..s{n_levels-1}``; return them.

    ``shape`` is s0's shape in voxels (z, y, x); level k has shape ``ceil(shape / 2**k)``.
    Arrays are chunked ``min(chunks, extent)`` per axis, Blosc/zstd compressed, fill value 0.
    The group gets :func:`multiscales_attrs` plus ``attrs``. Fill the arrays slab by slab to keep
    memory bounded.
    """
    group = parent.create_group(
        name,
        attributes={
            **multiscales_attrs(name, voxel_size_nm, translation_nm, n_levels),
            **(attrs or {}),
        },
    )
    arrays = []
    for level in range(n_levels):
        level_shape = tuple(-(-int(n) // 2**level) for n in shape)
        arrays.append(
            group.create_array(
                f"s{level}",
                shape=level_shape,
                chunks=tuple(min(chunks, n) for n in level_shape),
                dtype=dtype,
                compressors=blosc_zstd(),
                fill_value=0,
            )
        )
    return arrays


def write_multiscale_array(
    parent: Any,
    name: str,
    levels: Sequence[np.ndarray],
    voxel_size_nm: Sequence[float],
    translation_nm: Sequence[float],
    attrs: dict[str, Any] | None = None,
    chunks: int = CHUNK,
) -> Any:
    """Write in-memory pyramid ``levels`` (s0 first, each ×2 coarser) as group ``parent/name``.

    ``voxel_size_nm`` and ``translation_nm`` describe s0 (nm, z y x; translation = centre of
    the first voxel); coarser levels get :func:`level_transform`. Returns the group.
    """
    arrays = create_multiscale_group(
        parent, name, levels[0].shape, levels[0].dtype, voxel_size_nm, translation_nm,
        len(levels), attrs, chunks,
    )  # fmt: skip
    for array, data in zip(arrays, levels, strict=True):
        if array.shape != data.shape:
            raise ValueError(f"{name}: level shape {data.shape} != expected {array.shape}")
        array[...] = data
    return parent[name]


def downsample_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """Block mean over ``factor``³ blocks (EM pyramid); shape must divide; rounds to uint8."""
    z, y, x = (n // factor for n in volume.shape)
    blocks = volume.reshape(z, factor, y, factor, x, factor).astype(np.float32)
    return np.round(blocks.mean(axis=(1, 3, 5))).astype(np.uint8)


def downsample_labels(codes: np.ndarray, unknown: int = UNKNOWN_CODE) -> np.ndarray:
    """×2 label pyramid step: block mode over 2×2×2; any ``unknown`` voxel makes the block unknown.

    Ties go to the larger value (so thin membranes and instances survive a 4-4 split). Uses a
    bincount of the values present instead of sorting, which keeps it linear in the voxel count.
    Shape must be even along every axis.
    """
    out_shape = tuple(n // 2 for n in codes.shape)
    values = np.flatnonzero(np.bincount(codes.ravel(), minlength=1))
    best = np.zeros(out_shape, dtype=codes.dtype)
    best_count = np.zeros(out_shape, dtype=np.uint8)
    views = [codes[dz::2, dy::2, dx::2] for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]
    for value in values:
        if value == unknown:
            continue
        count = np.zeros(out_shape, dtype=np.uint8)
        for view in views:
            count += view == value
        better = count >= best_count  # ascending values + ">=": ties go to the larger value
        best[better] = value
        best_count[better] = count[better]
    if unknown in values:
        any_unknown = np.zeros(out_shape, dtype=bool)
        for view in views:
            any_unknown |= view == unknown
        best[any_unknown] = unknown
    return best


# --------------------------------------------------------------------------------------------
# The analytic scene
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    """An organelle part: signed distance < 0 inside; a membrane shell ``mem_nm`` thick.

    kind: "sphere" (centre, radius), "capsule" (centre, a, b offsets, radius),
    "ellipsoid" (centre, axes 3x3 rows = local unit axes, semi-axes, bend curvature 1/nm).
    """

    kind: str
    cell: int
    centre: np.ndarray
    params: tuple[Any, ...]
    mem_code: int
    lum_code: int
    mem_nm: float
    allowed: tuple[int, ...]
    reach: float | np.ndarray  # bounding half-extent (nm) around centre, scalar or per axis

    def __post_init__(self) -> None:
        # Tight per-axis box: a thin tilted cisterna in a cubic box would cost 10x the voxels.
        if self.kind == "ellipsoid":
            axes, semi, bend = self.params
            extent = np.sqrt(((axes * np.asarray(semi)[:, None]) ** 2).sum(axis=0))
            extent += abs(bend) * float(np.max(semi)) ** 2 * np.abs(axes[0]) + 1.0
            object.__setattr__(self, "reach", extent)

    def sdf(self, dz: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """Signed distance (nm, approximately for ellipsoids) on centre-relative coordinates."""
        if self.kind == "sphere":
            (radius,) = self.params
            return np.sqrt(dz * dz + dy * dy + dx * dx) - radius
        if self.kind == "capsule":
            a, b, radius = self.params
            ba = b - a
            pz, py, px = dz - a[0], dy - a[1], dx - a[2]
            h = np.clip((pz * ba[0] + py * ba[1] + px * ba[2]) / float(ba @ ba), 0.0, 1.0)
            qz, qy, qx = pz - h * ba[0], py - h * ba[1], px - h * ba[2]
            return np.sqrt(qz * qz + qy * qy + qx * qx) - radius
        axes, semi, bend = self.params
        u = [axes[i, 0] * dz + axes[i, 1] * dy + axes[i, 2] * dx for i in range(3)]
        # bending the thin axis by a paraboloid curves sheets / cisternae like the real ones
        u[0] = u[0] - bend * (u[1] * u[1] + u[2] * u[2])
        k0 = np.sqrt(sum((u[i] / semi[i]) ** 2 for i in range(3)))
        k1 = np.sqrt(sum((u[i] / semi[i] ** 2) ** 2 for i in range(3)))
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


@dataclass
class _Cell:
    seed: np.ndarray  # nm (z, y, x)
    radius: float  # cap of the Voronoi cell (nm)
    nucleus_centre: np.ndarray
    nucleus_semi: np.ndarray  # semi-axes (nm, z y x)
    nucleus_id: int


@dataclass
class _Scene:
    """Analytic phantom tissue of one dataset, in nm; ``render`` samples it on any grid."""

    extent_nm: np.ndarray
    cells: list[_Cell]
    shapes: list[_Shape]
    wobble: list[tuple[np.ndarray, float, float]]  # (wave vector 1/nm, phase, amplitude nm)
    anchors: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._seeds = np.array([c.seed for c in self.cells])
        self._radii = np.array([c.radius for c in self.cells])
        # bisectors that cut cell k's cap: the only planes that can bound cell k
        sep = np.sqrt(((self._seeds[:, None] - self._seeds[None]) ** 2).sum(axis=-1))
        self._cutting = [
            [j for j in range(len(self.cells)) if j != k and sep[k, j] < 2 * self._radii[k]]
            for k in range(len(self.cells))
        ]
        if self.shapes:
            centres = np.array([s.centre for s in self.shapes])
            reach = np.array([np.broadcast_to(s.reach, (3,)) for s in self.shapes])
            self._lo, self._hi = centres - reach, centres + reach
        else:
            self._lo = self._hi = np.zeros((0, 3))

    def render(
        self, origin_nm: Sequence[float], voxel_nm: float | Sequence[float], shape: Sequence[int]
    ) -> np.ndarray:
        """Label codes (uint16, ``shape`` voxels z y x) sampled at voxel centres.

        ``origin_nm`` is the centre of the first voxel; voxel ``i`` is at ``origin + i*voxel``.
        ``voxel_nm``: one size for all axes or ``(z, y, x)`` sizes (anisotropic grids), nm.
        """
        origin = np.asarray(origin_nm, dtype=np.float64)
        shape = tuple(int(n) for n in shape)
        voxel = np.broadcast_to(np.asarray(voxel_nm, dtype=np.float64), (3,))
        axes = [(origin[i] + voxel[i] * np.arange(shape[i])).astype(np.float32) for i in range(3)]
        z, y, x = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
        lo, hi = origin, origin + voxel * (np.array(shape) - 1)

        # Seeds farther than 3 max radii from the box cannot change any voxel (see module doc).
        # Cell k is the part of its sphere cap (radius R_k around the seed) on its side of every
        # Voronoi bisector; "inside" is the distance to that boundary, min(cap, bisector planes).
        # Cells are disjoint, so the running max over cells gives both owner and distance. Only
        # the cap's bounding box is visited and only bisectors that cut the cap, which keeps
        # this ~10x cheaper than a nearest-seed pass over the whole grid per seed.
        codes = np.full(shape, CODE["ecs"], dtype=np.uint16)
        inside = np.full(shape, -np.inf, dtype=np.float32)
        owner = np.full(shape, -1, dtype=np.int16)
        present: list[int] = []  # cells whose cap reaches the grid
        for k, cell in enumerate(self.cells):
            sl = _box_slices(cell.seed - cell.radius, cell.seed + cell.radius, origin, voxel, shape)
            if sl is None:
                continue
            present.append(k)
            dz, dy, dx = (
                (axes[i][sl[i]] - np.float32(cell.seed[i])).reshape(_bshape(i)) for i in range(3)
            )
            value = np.float32(cell.radius) - np.sqrt(dz * dz + dy * dy + dx * dx)
            for j in self._cutting[k]:
                # signed distance to the bisector plane of (k, j), positive on k's side
                n = self._seeds[j] - cell.seed
                sep = float(np.linalg.norm(n))
                n = (n / sep).astype(np.float32)
                plane = np.float32(sep / 2) - ((dz * n[0] + dy * n[1]) + dx * n[2])
                np.minimum(value, plane, out=value)
            sub_inside, sub_owner = inside[sl], owner[sl]
            better = value > sub_inside
            np.copyto(sub_inside, value, where=better)
            np.copyto(sub_owner, np.int16(k), where=better)
        # Boundaries wobble in y-x, modulated along z (separable: no extra full-grid sin).
        wobble = np.zeros((shape[1], shape[2]), dtype=np.float32)
        for wave, phase, amplitude in self.wobble:
            wobble += np.float32(amplitude) * np.sin(
                y[0, :, :] * np.float32(wave[1])
                + x[0, :, :] * np.float32(wave[2])
                + np.float32(phase)
            )
        wave_z = self.wobble[0][0][0] if self.wobble else 0.0
        inside += wobble[None] * (1.0 + 0.3 * np.sin(z * np.float32(wave_z)))
        interior = inside >= _ECS_GAP + _PM_NM
        codes[(inside >= _ECS_GAP) & ~interior] = CODE["pm"]
        codes[interior] = CYTO

        # Nuclei: clipped to their cell, kept clear of the plasma membrane.
        for k in present:
            cell = self.cells[k]
            sl = _box_slices(
                cell.nucleus_centre - cell.nucleus_semi,
                cell.nucleus_centre + cell.nucleus_semi,
                origin,
                voxel,
                shape,
            )
            if sl is None:
                continue
            q = sum(
                ((axes[i][sl[i]] - cell.nucleus_centre[i]) / cell.nucleus_semi[i]).reshape(
                    _bshape(i)
                )
                ** 2
                for i in range(3)
            )
            mask = (q < 1.0) & (owner[sl] == k) & (inside[sl] > _ECS_GAP + _PM_NM + 40.0)
            codes[sl][mask] = NUC_BASE + cell.nucleus_id

        # Organelles, in generation order (ER first, vesicles last).
        hit = np.flatnonzero(((self._lo <= hi) & (self._hi >= lo)).all(axis=1))
        near_set = set(present)
        for index in hit:
            part = self.shapes[index]
            if part.cell not in near_set:
                continue
            sl = _box_slices(
                part.centre - part.reach, part.centre + part.reach, origin, voxel, shape
            )
            if sl is None:
                continue
            dz, dy, dx = (
                (axes[i][sl[i]] - np.float32(part.centre[i])).reshape(_bshape(i)) for i in range(3)
            )
            sdf = part.sdf(dz, dy, dx)
            sub = codes[sl]
            ok = (owner[sl] == part.cell) & (inside[sl] >= _ECS_GAP + _PM_NM + 4.0)
            lum_ok = ok & np.isin(sub, (*part.allowed, part.mem_code)) & (sdf < -part.mem_nm)
            mem_ok = ok & np.isin(sub, part.allowed) & (sdf < 0) & (sdf >= -part.mem_nm)
            sub[lum_ok] = part.lum_code
            sub[mem_ok] = part.mem_code
        return codes


def _bshape(axis: int) -> tuple[int, int, int]:
    return tuple(-1 if i == axis else 1 for i in range(3))  # type: ignore[return-value]


def _box_slices(
    lo: np.ndarray,
    hi: np.ndarray,
    origin: np.ndarray,
    voxel_nm: float | np.ndarray,
    shape: Sequence[int],
) -> tuple[slice, slice, slice] | None:
    """Voxel slices of the grid whose centres fall in [lo, hi] (nm), or None if empty.

    ``voxel_nm``: scalar or per-axis ``(z, y, x)`` voxel size, nm."""
    start = np.maximum(np.ceil((lo - origin) / voxel_nm), 0).astype(int)
    stop = np.minimum(np.floor((hi - origin) / voxel_nm) + 1, shape).astype(int)
    if (stop <= start).any():
        return None
    return tuple(slice(a, b) for a, b in zip(start, stop, strict=True))  # type: ignore[return-value]


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _frame(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal rows (normal, u, v) with a random in-plane rotation."""
    helper = _unit(rng)
    u = np.cross(normal, helper)
    u /= np.linalg.norm(u)
    return np.stack([normal, u, np.cross(normal, u)])


def _build_scene(
    rng: np.random.Generator, em_shape: Sequence[int], cell_nm: float = 1800.0
) -> _Scene:
    """Random phantom tissue filling an EM volume of ``em_shape`` voxels at 8 nm.

    ``cell_nm``: target spacing of the cell grid in y-x (nm); cells, their nuclei (in y-x) and
    the organelle counts grow with it, organelles keep their size.

    Cells sit on a jittered grid in y-x (at least two across x, plus a ring of neighbours outside
    the volume), each a Voronoi cell capped by a sphere (ECS lakes at the corners). Organelle
    counts follow fixed densities per µm³ of visible cytoplasm. The first two cells ("A", "B")
    each get a Golgi stack beside the nucleus with vesicles, mitochondria, an endosome and ER
    around it; the "golgi" (A) and "golgi_b" (B) anchors lie between the stack and the A|B
    boundary, so a crop centred there sees every class. "golgi_stack" and "golgi_b_stack" are the
    stacks' centres (a crop of about one cell's size centred there also reaches the nucleus and,
    with two rows of cells, the cell boundary the stack faces), "golgi_front" / "golgi_b_front"
    lie 200 nm in front of them (away from the nucleus); "boundary_bc" is midway between the
    seeds of B and the third cell.
    """
    extent = np.array(em_shape, dtype=np.float64) * EM_VOXEL_NM
    n_y = max(1, round(extent[1] / cell_nm))
    n_x = max(2, round(extent[2] / cell_nm))
    step_y, step_x = extent[1] / n_y, extent[2] / n_x
    cells: list[_Cell] = []
    positions = [(iy, ix) for iy in range(-1, n_y + 1) for ix in range(-1, n_x + 1)]
    # in-volume cells first so that nucleus ids 1, 2 are the visible cells A and B
    positions.sort(key=lambda p: not (0 <= p[0] < n_y and 0 <= p[1] < n_x))
    for iy, ix in positions:
        seed = np.array(
            [
                extent[0] * rng.uniform(0.4, 0.6),
                (iy + 0.5 + rng.uniform(-0.06, 0.06)) * step_y,
                (ix + 0.5 + rng.uniform(-0.06, 0.06)) * step_x,
            ]
        )
        radius = 0.5 * float(np.hypot(step_y, step_x)) * rng.uniform(0.86, 0.94)
        semi = np.array(
            [
                rng.uniform(280.0, 360.0),
                step_y * rng.uniform(0.22, 0.28),
                step_x * rng.uniform(0.24, 0.3),
            ]
        )
        offset = np.array([0.0, *rng.uniform(-0.04, 0.04, size=2) * (step_y, step_x)])
        cells.append(_Cell(seed, radius, seed + offset, semi, nucleus_id=len(cells) + 1))
    seeds = np.array([c.seed for c in cells])

    shapes: list[_Shape] = []
    anchors: dict[str, np.ndarray] = {}
    cyto_er = (CYTO, CODE["er_mem"], CODE["er_lum"])

    def random_point(k: int) -> np.ndarray:
        """A point in cell k's cytoplasm within the volume's z range (outside its nucleus)."""
        cell = cells[k]
        for _ in range(50):
            r = 0.85 * cell.radius * np.sqrt(rng.uniform())
            angle = rng.uniform(0, 2 * np.pi)
            p = np.array(
                [rng.uniform(-50.0, extent[0] + 50.0), cell.seed[1] + r * np.sin(angle),
                 cell.seed[2] + r * np.cos(angle)]
            )  # fmt: skip
            if (((p - cell.nucleus_centre) / (cell.nucleus_semi * 1.15)) ** 2).sum() <= 1.0:
                continue
            if int(np.argmin(((seeds - p) ** 2).sum(axis=1))) == k:
                return p
        return p

    def add_mito(k: int, centre: np.ndarray) -> None:
        radius = rng.uniform(85.0, 130.0)
        half = _unit(rng) * rng.uniform(100.0, 420.0)
        shapes.append(
            _Shape("capsule", k, centre, (-half, half, radius), CODE["mito_mem"], CODE["mito_lum"],
                   _MITO_MEM_NM, cyto_er, np.abs(half) + radius)
        )  # fmt: skip
        for _ in range(rng.integers(4, 9)):
            along = rng.uniform(-1.0, 1.0) * half
            radial = _unit(rng) * rng.uniform(0.0, radius - _MITO_MEM_NM - 25.0)
            speck = rng.uniform(10.0, 14.0)
            shapes.append(
                _Shape("sphere", k, centre + along + radial, (speck,), CODE["mito_ribo"],
                       CODE["mito_ribo"], 0.0, (CODE["mito_lum"],), speck)
            )  # fmt: skip

    def add_vesicle(k: int, centre: np.ndarray) -> None:
        radius = rng.uniform(32.0, 50.0)
        shapes.append(
            _Shape("sphere", k, centre, (radius,), CODE["ves_mem"], CODE["ves_lum"],
                   _ORGANELLE_MEM_NM, cyto_er, radius)
        )  # fmt: skip

    def add_endosome(k: int, centre: np.ndarray) -> None:
        radius = rng.uniform(90.0, 190.0)
        shapes.append(
            _Shape("sphere", k, centre, (radius,), CODE["endo_mem"], CODE["endo_lum"],
                   _ENDO_MEM_NM, cyto_er, radius)
        )  # fmt: skip

    def add_er_tube(k: int, start: np.ndarray) -> None:
        p, direction = start, _unit(rng)
        radius = rng.uniform(30.0, 40.0)
        for _ in range(rng.integers(3, 7)):
            q = p + direction * rng.uniform(120.0, 280.0)
            half = (q - p) / 2
            shapes.append(
                _Shape("capsule", k, (p + q) / 2, (-half, half, radius), CODE["er_mem"],
                       CODE["er_lum"], _ORGANELLE_MEM_NM, (CYTO,), np.abs(half) + radius)
            )  # fmt: skip
            direction = direction + 0.8 * _unit(rng)
            direction /= np.linalg.norm(direction)
            p = q

    def add_er_sheet(k: int, centre: np.ndarray) -> None:
        semi = np.array(
            [rng.uniform(30.0, 38.0), rng.uniform(220.0, 450.0), rng.uniform(150.0, 300.0)]
        )
        shapes.append(
            _Shape("ellipsoid", k, centre, (_frame(_unit(rng), rng), semi, rng.uniform(-0.0012, 0.0012)),
                   CODE["er_mem"], CODE["er_lum"], _ORGANELLE_MEM_NM, (CYTO,), 0.0)
        )  # fmt: skip

    def add_golgi(k: int, centre: np.ndarray, normal: np.ndarray) -> None:
        frame = _frame(normal, rng)
        bend = rng.choice([-1.0, 1.0]) * rng.uniform(0.0006, 0.0012)
        n = int(rng.integers(4, 7))
        spacing = rng.uniform(72.0, 84.0)
        for i in range(n):
            semi = np.array(
                [rng.uniform(24.0, 28.0), rng.uniform(230.0, 380.0), rng.uniform(160.0, 260.0)]
            )
            shapes.append(
                _Shape("ellipsoid", k, centre + (i - (n - 1) / 2) * spacing * normal,
                       (frame, semi, bend), CODE["golgi_mem"], CODE["golgi_lum"],
                       _ORGANELLE_MEM_NM, cyto_er, 0.0)
            )  # fmt: skip

    a, b = cells[0], cells[1]
    boundary = (a.seed + b.seed) / 2
    for k, cell in enumerate(cells):
        if ((cell.seed + cell.radius < 0) | (cell.seed - cell.radius > extent)).any():
            continue  # invisible: no organelles needed
        # visible cytoplasm (µm³): the cap's disc times the volume's depth
        visible = np.pi * cell.radius**2 * min(2 * cell.radius, extent[0]) / 1e9
        # ER first: everything else may be painted over it.
        for _ in range(rng.poisson(3.0 * visible)):
            add_er_tube(k, random_point(k))
        for _ in range(rng.poisson(1.2 * visible)):
            add_er_sheet(k, random_point(k))

        golgi_centre = None
        if k <= 1 or rng.uniform() < 0.6:
            # perinuclear, stacked along y; cells A's and B's face the volume's centre in y
            side = 1.0 if cell.nucleus_centre[1] < extent[1] / 2 else -1.0
            if k > 1:
                side = rng.choice([-1.0, 1.0])
            normal = np.array([0.0, side, 0.25 * rng.normal()])
            normal /= np.linalg.norm(normal)
            golgi_centre = cell.nucleus_centre + normal * (
                cell.nucleus_semi[1] + rng.uniform(130.0, 170.0)
            )
            golgi_centre[0] = np.clip(golgi_centre[0], 0.3 * extent[0], 0.7 * extent[0])
            add_golgi(k, golgi_centre, normal)
            if k <= 1:
                anchors["golgi_stack" if k == 0 else "golgi_b_stack"] = golgi_centre.copy()
                # 200 nm in front of the stack: an 800 nm crop there still holds the tip of
                # the nucleus behind the stack and mostly reaches the boundary it faces
                anchors["golgi_front" if k == 0 else "golgi_b_front"] = golgi_centre + 200 * normal
                towards_b = np.sign(boundary[2] - golgi_centre[2])
                anchors["golgi" if k == 0 else "golgi_b"] = np.array(
                    [golgi_centre[0], golgi_centre[1], (golgi_centre[2] + boundary[2]) / 2]
                )
                # around the stack, on the boundary side: what a crop there must also see
                for dy in (-1.0, 1.0):
                    add_mito(k, golgi_centre + np.array([0.0, dy * 280.0, towards_b * 300.0]))
                add_endosome(k, golgi_centre + np.array([0.0, 0.0, towards_b * 420.0]))
                for _ in range(2):
                    add_er_tube(
                        k, golgi_centre + np.array([0.0, rng.uniform(-300, 300), towards_b * 200.0])
                    )

        for _ in range(rng.poisson(2.0 * visible)):
            add_mito(k, random_point(k))
        for _ in range(rng.poisson(0.8 * visible)):
            add_endosome(k, random_point(k))
        n_ves = rng.poisson(15.0 * visible)
        for i in range(n_ves):
            if golgi_centre is not None and i < n_ves // 2:
                # vesicles cluster around the Golgi, as in real cells
                offset = _unit(rng) * rng.uniform(150.0, 450.0) * np.array([0.4, 1.0, 1.0])
                add_vesicle(k, golgi_centre + offset)
            else:
                add_vesicle(k, random_point(k))

    anchors["boundary"] = boundary
    anchors["boundary_bc"] = (b.seed + cells[2].seed) / 2
    anchors["nucleus"] = b.nucleus_centre.copy()  # nucleus id 2: the homogeneous crop
    anchors["nucleus_edge"] = a.nucleus_centre - np.array([0.0, 0.0, a.nucleus_semi[2]])
    anchors["centre"] = extent / 2
    wobble = [
        (
            _unit(rng) * 2 * np.pi / rng.uniform(600.0, 1500.0),
            rng.uniform(0, 2 * np.pi),
            rng.uniform(8.0, 20.0),
        )
        for _ in range(3)
    ]
    return _Scene(extent, cells, shapes, wobble, anchors)


# --------------------------------------------------------------------------------------------
# EM synthesis
# --------------------------------------------------------------------------------------------


def code_to_class_index(codes: np.ndarray) -> np.ndarray:
    """Class index per voxel: 0 cytoplasm, c+1 for ``CLASSES[c]`` (nuc instances → nuc), 255 unknown."""
    out = np.where(codes >= NUC_BASE, _NUC_CLASS_INDEX, codes).astype(np.uint8)
    out[codes == UNKNOWN_CODE] = UNKNOWN
    return out


def _slice_noise(key: Sequence[int], z_indices: range, shape_yx: tuple[int, int]) -> np.ndarray:
    """White noise (float32) drawn per global z index, so any slab partition gives the same field."""
    out = np.empty((len(z_indices), *shape_yx), dtype=np.float32)
    for i, zi in enumerate(z_indices):
        out[i] = np.random.default_rng([*key, zi + 1_000_000]).standard_normal(
            shape_yx, dtype=np.float32
        )
    return out


def _em_slab(
    scene: _Scene, key: Sequence[int], em_shape: Sequence[int], z0: int, z1: int
) -> np.ndarray:
    """EM s0 voxels ``z0:z1`` (uint8, full y-x) rendered with a halo, so slabs join seamlessly."""
    from scipy import ndimage

    halo = _EM_HALO
    ny, nx = int(em_shape[1]) + 2 * halo, int(em_shape[2]) + 2 * halo
    origin = (np.array([z0, 0, 0]) - halo) * EM_VOXEL_NM
    codes = scene.render(origin, EM_VOXEL_NM, (z1 - z0 + 2 * halo, ny, nx))
    cls = code_to_class_index(codes)
    del codes
    zs = range(z0 - halo, z1 + halo)

    noise = _slice_noise((*key, 1), zs, (ny, nx))

    def lowpass(noise: np.ndarray, sigma: float) -> np.ndarray:
        # normalised by the analytic std of filtered unit white noise (not the sample std,
        # which would differ between slabs)
        return ndimage.gaussian_filter(noise, sigma, truncate=_TRUNCATE) * np.float32(
            (4 * np.pi * sigma**2) ** 0.75
        )

    intensity = _EM_MEAN[cls] + _EM_TEXTURE[cls] * lowpass(noise, _TEXTURE_SIGMA)
    chromatin = np.clip((lowpass(noise, _CHROMATIN_SIGMA) - 0.5) / 0.8, 0.0, 1.0)
    intensity -= np.float32(48.0) * chromatin * (cls == _NUC_CLASS_INDEX)
    del chromatin, cls, noise
    intensity = ndimage.gaussian_filter(intensity, _BLUR_SIGMA, truncate=_TRUNCATE)
    intensity += np.float32(_NOISE_STD) * _slice_noise((*key, 3), zs, (ny, nx))
    core = intensity[halo:-halo, halo:-halo, halo:-halo]
    return np.clip(np.round(core), 0, 255).astype(np.uint8)


def _write_em(
    root: Any, scene: _Scene, key: Sequence[int], em_shape: Sequence[int], slab: int
) -> None:
    """EM pyramid s0..s2 written slab by slab (``slab`` voxels of s0 in z, a multiple of 4)."""
    arrays = create_multiscale_group(
        root.require_group(EM_PATH.rsplit("/", 1)[0]), EM_PATH.rsplit("/", 1)[1], em_shape, "uint8",
        [EM_VOXEL_NM] * 3, [0.0] * 3, EM_LEVELS,
    )  # fmt: skip
    for z0 in range(0, int(em_shape[0]), slab):
        z1 = min(z0 + slab, int(em_shape[0]))
        data = _em_slab(scene, key, em_shape, z0, z1)
        arrays[0][z0:z1] = data
        for level in range(1, EM_LEVELS):
            f = 2**level
            arrays[level][z0 // f : z1 // f] = downsample_mean(data, f)


# --------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropSpec:
    """One ground-truth crop of the demo layout.

    ``extent_em``: size in 8 nm EM voxels (z, y, x) at the default size; the s0 shape is
    ``extent_em * 8 / voxel_nm``. ``phase``: where its first voxel sits relative to the EM grid —
    "em": its lower edge on an EM s0 voxel edge (a 4 nm crop then has translation ≡ 6 mod 8 nm,
    and its s1 coincides with EM s0, as in the real data); "half": lower edge at an EM voxel
    centre (4 nm crops only; translation ≡ 2 mod 8); "odd": like "em" with an odd EM start
    index, so the crop is off the EM s1 / s2 grids. ``unknown``: a box, in fractions of the crop
    extent (z, y, x) as ``((lo, hi), (lo, hi), (lo, hi))``, encoded 255 in every array.
    ``voxel_nm`` is one size or ``(z, y, x)`` sizes (anisotropic crops; each at most the EM's).
    """

    number: int
    voxel_nm: float | tuple[float, float, float]
    extent_em: tuple[int, int, int]
    anchor: str
    phase: str
    classes: tuple[str, ...]
    unknown: tuple[tuple[float, float], ...] | None = None
    homogeneous: bool = False

    @property
    def name(self) -> str:
        return f"crop{self.number}"

    @property
    def voxel_size_nm(self) -> tuple[float, float, float]:
        """s0 voxel size ``(z, y, x)``, nm."""
        if isinstance(self.voxel_nm, tuple):
            return tuple(float(v) for v in self.voxel_nm)  # type: ignore[return-value]
        return (float(self.voxel_nm),) * 3


ALL = tuple(CLASSES)
NO_GOLGI = tuple(c for c in CLASSES if not c.startswith("golgi"))
DATASETS: tuple[tuple[str, tuple[CropSpec, ...]], ...] = (
    (
        "jrc_demo-1",
        (
            CropSpec(1, 8.0, (32, 128, 128), "golgi", "odd", ALL),
            CropSpec(2, 4.0, (24, 96, 96), "boundary", "em",
                     ("ecs", "pm", "mito_mem", "mito_lum", "mito_ribo", "er_mem", "er_lum", "nuc"),
                     unknown=((0.0, 0.5), (0.0, 1.0), (0.7, 1.0))),
            CropSpec(3, 16.0, (32, 96, 96), "nucleus_edge", "odd", ("ecs", "mito_lum", "endo_lum", "nuc")),
            CropSpec(4, 8.0, (16, 32, 32), "nucleus", "em", ("nuc", "ecs", "pm", "er_mem", "er_lum"),
                     homogeneous=True),
            CropSpec(5, 4.0, (24, 96, 96), "golgi_b", "half", ALL),
            CropSpec(6, 8.0, (24, 96, 128), "random", "em", NO_GOLGI),
            CropSpec(7, 8.0, (24, 96, 96), "random", "odd",
                     ("pm", "golgi_mem", "golgi_lum", "ves_mem", "ves_lum", "er_mem", "er_lum")),
        ),
    ),
    (
        "jrc_demo-2",
        (
            CropSpec(8, 4.0, (24, 96, 96), "boundary", "half",
                     ("ecs", "pm", "mito_mem", "mito_lum", "ves_mem", "ves_lum", "endo_mem",
                      "endo_lum", "er_mem", "er_lum", "nuc"),
                     unknown=((0.0, 1.0), (0.6, 1.0), (0.0, 0.4))),
            CropSpec(9, 8.0, (32, 96, 160), "nucleus_edge", "odd",
                     ("ecs", "pm", "mito_mem", "mito_lum", "ves_mem", "ves_lum", "er_mem",
                      "er_lum", "nuc")),
            CropSpec(10, 4.0, (24, 96, 96), "golgi", "em", ALL),
            CropSpec(11, 8.0, (32, 128, 128), "golgi_b", "odd", ALL),
            CropSpec(12, 16.0, (24, 96, 96), "random", "em", ("ecs", "pm", "mito_mem", "mito_lum", "nuc")),
            CropSpec(13, 8.0, (24, 96, 96), "random", "em",
                     ("mito_mem", "mito_lum", "mito_ribo", "ves_mem", "ves_lum", "er_mem", "er_lum")),
            CropSpec(14, 4.0, (24, 80, 80), "random", "half",
                     ("ecs", "pm", "endo_mem", "endo_lum", "golgi_mem", "golgi_lum")),
        ),
    ),
    (
        "jrc_demo-3",
        (
            CropSpec(15, 8.0, (40, 128, 160), "boundary", "em",
                     ("ecs", "pm", "mito_mem", "mito_lum", "mito_ribo", "endo_mem", "endo_lum",
                      "ves_mem", "ves_lum", "nuc"),
                     unknown=((0.5, 1.0), (0.0, 0.3), (0.0, 1.0))),
            CropSpec(16, 4.0, (24, 80, 80), "random", "half",
                     ("ecs", "pm", "er_mem", "er_lum", "ves_mem", "ves_lum")),
            CropSpec(17, 16.0, (24, 80, 80), "random", "em", ("ecs", "nuc", "mito_lum", "er_lum")),
            CropSpec(18, 8.0, (32, 128, 128), "golgi", "em", ALL),
            CropSpec(19, 8.0, (24, 96, 96), "golgi_b", "odd", ALL),
            CropSpec(20, 8.0, (24, 96, 96), "nucleus_edge", "em",
                     ("ecs", "pm", "mito_mem", "mito_lum", "mito_ribo", "endo_mem", "endo_lum", "nuc")),
            CropSpec(21, 4.0, (24, 96, 96), "random", "em",
                     ("er_mem", "er_lum", "ves_mem", "ves_lum", "golgi_mem", "golgi_lum")),
        ),
    ),
    (
        "jrc_demo-4",
        (
            CropSpec(22, 8.0, (32, 128, 128), "golgi", "odd", ALL),
            CropSpec(23, 4.0, (24, 96, 96), "golgi_b", "em", ALL),
            CropSpec(24, 8.0, (24, 128, 128), "boundary", "em",
                     ("ecs", "pm", "mito_mem", "mito_lum", "mito_ribo", "er_mem", "er_lum", "nuc"),
                     unknown=((0.0, 1.0), (0.0, 0.35), (0.0, 0.35))),
            CropSpec(25, 16.0, (32, 96, 96), "centre", "odd",
                     ("ecs", "pm", "mito_lum", "endo_lum", "ves_lum", "nuc")),
            CropSpec(26, 8.0, (24, 96, 128), "random", "em",
                     tuple(c for c in NO_GOLGI if c != "mito_ribo")),
            CropSpec(27, 4.0, (24, 80, 80), "random", "half",
                     ("mito_mem", "mito_lum", "mito_ribo", "er_mem", "er_lum")),
            CropSpec(28, 8.0, (24, 96, 96), "nucleus_edge", "em",
                     ("ecs", "pm", "ves_mem", "ves_lum", "er_mem", "er_lum", "nuc")),
        ),
    ),
)  # fmt: skip
"""The demo layout: (dataset name, crops). Two crops per dataset annotate all 14 classes (centred
on a Golgi stack next to a cell boundary); the others annotate subsets, as real crops do."""

BIG_CROP_NUMBER = 1 + max(spec.number for _, specs in DATASETS for spec in specs)
"""Number of the ``--size large`` crop added to the first dataset."""


REALISTIC_DATASETS: tuple[tuple[str, tuple[CropSpec, ...]], ...] = (
    (
        "jrc_realistic-1",
        (
            CropSpec(1, 4.0, (200, 200, 200), "golgi_stack", "em", ALL),
            CropSpec(2, 4.0, (200, 200, 200), "golgi_b_stack", "odd", ALL),
        ),
    ),
    (
        "jrc_realistic-2",
        (
            CropSpec(3, 4.0, (200, 200, 200), "golgi_stack", "odd", ALL),
            # 400³ voxels at (2.6, 2, 2) nm: 1040 × 800 × 800 nm, on whole EM voxels
            CropSpec(4, (2.6, 2.0, 2.0), (130, 100, 100), "golgi_b_front", "em", ALL),
            # coarse annotation: membranes thinner than a voxel are not annotated at 32 nm
            CropSpec(5, 32.0, (192, 256, 256), "boundary_bc", "em",
                     ("ecs", "pm", "mito_lum", "endo_lum", "nuc")),
        ),
    ),
)  # fmt: skip
"""The ``--size realistic`` layout: crops of the real training crops' geometry (400³ voxels at
4 nm, one at (2.6, 2, 2) nm, one at 32 nm), four of five annotating all 14 classes."""


@dataclass(frozen=True)
class SizePreset:
    """EM volume and crop scaling of a ``--size`` choice.

    ``layout`` and ``em_shapes`` replace :data:`DATASETS` and ``em_shape`` (one EM shape per
    dataset) when set. ``context_em``: the least EM (s0 voxels, z y x) between a crop's centre
    and the volume's edges, so that training patches centred anywhere in the crop read real EM.
    ``disjoint``: crops of a dataset are moved apart (in x, then y) until none overlaps, so no
    voxel is in two splits.
    """

    em_shape: tuple[int, int, int]  # EM s0 voxels (z, y, x) at 8 nm
    crop_scale: float  # multiplies every CropSpec.extent_em
    slab: int  # s0 z-slab (voxels) for EM and label writing; a multiple of 4
    big_crop_extent: tuple[int, int, int] | None = None  # extra 8 nm crop in the first dataset
    big_em_shape: tuple[int, int, int] | None = None  # first dataset's EM when big_crop is set
    layout: tuple[tuple[str, tuple[CropSpec, ...]], ...] | None = None
    em_shapes: tuple[tuple[int, int, int], ...] | None = None
    cell_nm: float = 1800.0  # spacing of the phantom cells in y-x, nm
    context_em: tuple[int, int, int] = (0, 0, 0)
    disjoint: bool = False

    @property
    def datasets(self) -> tuple[tuple[str, tuple[CropSpec, ...]], ...]:
        """(dataset name, crops) of this size."""
        return self.layout if self.layout is not None else DATASETS

    def scaled(self, factor: float) -> SizePreset:
        """The same layout with every length times ``factor`` (EM, crops, cells, context).

        For tests: a reduced variant runs the same code at a fraction of the cost. EM shapes stay
        multiples of 4 (the EM pyramid's block means); crop extents are rounded as usual.
        """

        def em(shape: tuple[int, int, int]) -> tuple[int, int, int]:
            return tuple(max(4, round(n * factor / 4) * 4) for n in shape)  # type: ignore[return-value]

        return SizePreset(
            em(self.em_shape),
            self.crop_scale * factor,
            self.slab,
            None if self.big_crop_extent is None else em(self.big_crop_extent),
            None if self.big_em_shape is None else em(self.big_em_shape),
            self.layout,
            None if self.em_shapes is None else tuple(em(e) for e in self.em_shapes),
            self.cell_nm * factor,
            tuple(math.ceil(n * factor) for n in self.context_em),  # type: ignore[arg-type]
            self.disjoint,
        )


SIZES: dict[str, SizePreset] = {
    "small": SizePreset((48, 192, 192), 0.5, 48),
    "default": SizePreset((96, 320, 320), 1.0, 96),
    # ≥ 2 GB of (uncompressed) labels for the streaming benchmarks: one 112×1024×1024 crop
    # at 8 nm with all 14 classes + `all` in the first dataset.
    "large": SizePreset((96, 320, 320), 1.0, 64, (112, 1024, 1024), (128, 1088, 1088)),
    # The real training crops' geometry (REALISTIC_DATASETS). Cells of 2.4 µm in two rows, so a
    # 1.6 µm crop centred on a Golgi stack reaches the nucleus and a cell boundary; EM reaches
    # 128 voxels (half a 256² patch) beyond every crop centre in y-x and 16 (half of 32) in z.
    "realistic": SizePreset(
        (232, 600, 600), 1.0, 128,
        layout=REALISTIC_DATASETS, em_shapes=((232, 600, 600), (232, 600, 900)),
        cell_nm=2400.0, context_em=(16, 128, 128), disjoint=True,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class PlacedCrop:
    """A crop placed in its dataset: s0 shape (voxels) and translation (nm, first voxel centre).

    ``start_em`` / ``extent_em``: the EM s0 voxels (8 nm, z y x) the crop starts at and spans.
    """

    spec: CropSpec
    shape: tuple[int, int, int]
    translation_nm: tuple[float, float, float]
    start_em: tuple[int, int, int] = (0, 0, 0)
    extent_em: tuple[int, int, int] = (0, 0, 0)

    @property
    def footprint_em(self) -> tuple[int, int, int]:
        """EM s0 voxels the crop touches per axis (a "half"-phase crop ends inside one more)."""
        extra = 1 if self.spec.phase == "half" else 0
        return tuple(e + extra for e in self.extent_em)  # type: ignore[return-value]

    def overlaps(self, other: PlacedCrop) -> bool:
        """Whether the two crops' EM footprints share a voxel."""
        return all(
            a < b + m and b < a + n
            for a, n, b, m in zip(
                self.start_em, self.footprint_em, other.start_em, other.footprint_em, strict=True
            )
        )


def _extent_multiple(voxel_nm: float) -> int:
    """Smallest EM-voxel count m such that m EM voxels are a whole number of label voxels
    divisible by 4 (a 3-level label pyramid halves it twice): 2 at 4 nm, 13 at 2.6 nm."""
    ratio = Fraction(EM_VOXEL_NM / voxel_nm).limit_denominator(1000)  # label voxels per EM voxel
    return ratio.denominator * 4 // math.gcd(ratio.numerator, 4)


def _start_ranges(
    spec: CropSpec, extent: Sequence[int], em_shape: Sequence[int], context: Sequence[int]
) -> list[tuple[int, int]]:
    """Allowed EM start index (lo, hi) per axis: inside the volume with one voxel to spare, the
    crop centre ``context[i]`` voxels or more from either edge; odd starts for the "odd" phase."""
    extra = 1 if spec.phase == "half" else 0
    ranges = []
    for n, e, c in zip(em_shape, extent, context, strict=True):
        lo = max(1, math.ceil(c - e / 2))
        hi = int(n) - e - extra - 1
        if c:
            hi = min(hi, math.floor(int(n) - c - e / 2))
        if spec.phase == "odd":
            lo, hi = lo + (lo % 2 == 0), hi - (hi % 2 == 0)
        ranges.append((lo, hi))
    return ranges


def _placed(spec: CropSpec, start: Sequence[int], extent: Sequence[int]) -> PlacedCrop:
    """The crop starting at EM voxel ``start`` and spanning ``extent`` EM voxels."""
    voxel = spec.voxel_size_nm
    if spec.phase == "half":
        translation = [EM_VOXEL_NM * i0 + v / 2 for i0, v in zip(start, voxel, strict=True)]
    else:
        translation = [
            EM_VOXEL_NM * i0 - EM_VOXEL_NM / 2 + v / 2 for i0, v in zip(start, voxel, strict=True)
        ]
    shape = tuple(round(e * EM_VOXEL_NM / v) for e, v in zip(extent, voxel, strict=True))
    return PlacedCrop(
        spec,
        shape,  # type: ignore[arg-type]
        tuple(float(t) for t in translation),  # type: ignore[arg-type]
        tuple(int(i) for i in start),  # type: ignore[arg-type]
        tuple(int(e) for e in extent),  # type: ignore[arg-type]
    )


def _place_crop(
    spec: CropSpec,
    scene: _Scene,
    em_shape: Sequence[int],
    scale: float,
    rng: np.random.Generator,
    context: Sequence[int] = (0, 0, 0),
) -> PlacedCrop:
    multiples = [_extent_multiple(v) for v in spec.voxel_size_nm]  # s0 shape divisible by 4
    extent = [
        max(m, round(e * scale / m) * m) for e, m in zip(spec.extent_em, multiples, strict=True)
    ]
    if spec.anchor == "random":
        centre = rng.uniform(0.25, 0.75, size=3) * scene.extent_nm
    else:
        centre = scene.anchors[spec.anchor]
    start = []
    for i, (lo, hi) in enumerate(_start_ranges(spec, extent, em_shape, context)):
        i0 = min(max(round(centre[i] / EM_VOXEL_NM - extent[i] / 2), lo), hi)
        if spec.phase == "odd" and i0 % 2 == 0:  # only when lo > hi: the error below
            i0 += 1 if i0 + 1 <= hi else -1
        if i0 < 0 or (any(context) and not lo <= i0 <= hi):
            raise ValueError(f"{spec.name} does not fit the EM volume {tuple(em_shape)}")
        start.append(i0)
    return _placed(spec, start, extent)


def _separate(
    crops: Sequence[PlacedCrop], em_shape: Sequence[int], context: Sequence[int]
) -> list[PlacedCrop]:
    """Move overlapping crops of one dataset apart: the later one first (x, then y), the earlier
    one for what the later cannot take, each within its allowed starts; even steps keep the
    "odd" phase. Raises ValueError when some pair still overlaps."""
    crops = list(crops)
    for j in range(len(crops)):
        for i in range(j):
            for axis in (2, 1):
                a, b = crops[i], crops[j]
                if not a.overlaps(b):
                    break
                ranges = [_start_ranges(c.spec, c.extent_em, em_shape, context) for c in (a, b)]
                # b moves up (a down) when b's centre is not below a's, else the other way
                up = (
                    b.start_em[axis] * 2 + b.extent_em[axis]
                    >= a.start_em[axis] * 2 + a.extent_em[axis]
                )
                if up:
                    need = a.start_em[axis] + a.footprint_em[axis] - b.start_em[axis]
                else:
                    need = b.start_em[axis] + b.footprint_em[axis] - a.start_em[axis]
                need += need % 2
                sign = 1 if up else -1
                for k, c in ((j, b), (i, a)):
                    lo, hi = ranges[0 if k == i else 1][axis]
                    step = min(max(c.start_em[axis] + sign * need, lo), hi) - c.start_em[axis]
                    step = int(np.sign(step)) * (abs(step) // 2 * 2)  # even, within the range
                    need -= abs(step)
                    start = list(c.start_em)
                    start[axis] += step
                    crops[k] = _placed(c.spec, start, c.extent_em)
                    sign = -sign
                    if need <= 0:
                        break
    for j in range(len(crops)):
        for i in range(j):
            if crops[i].overlaps(crops[j]):
                raise ValueError(
                    f"{crops[i].spec.name} and {crops[j].spec.name} overlap in an EM volume of "
                    f"{tuple(em_shape)} voxels; enlarge it"
                )
    return crops


def _render_crop_slab(scene: _Scene, crop: PlacedCrop, z0: int, z1: int) -> np.ndarray:
    """Label codes of s0 voxels ``z0:z1`` of a crop, with its unknown box applied.

    Crops coarser than the EM are rendered at 8 nm and reduced by block mode: point samples
    16 nm apart would cut thin structures at random, which no annotator does. Finer crops,
    anisotropic ones included, are sampled on their own grid.
    """
    voxel = np.array(crop.spec.voxel_size_nm)
    if (voxel > EM_VOXEL_NM).any():
        if not (voxel == voxel[0]).all():
            raise ValueError(f"{crop.spec.name}: anisotropic crops must be finer than the EM")
        base: float | np.ndarray = EM_VOXEL_NM
        factor = round(float(voxel[0]) / EM_VOXEL_NM)
    else:
        base, factor = voxel, 1
    t = np.array(crop.translation_nm)
    origin = t - (voxel - base) / 2 + np.array([z0 * voxel[0], 0.0, 0.0])
    shape = (z1 - z0, crop.shape[1], crop.shape[2])
    codes = scene.render(origin, base, tuple(n * factor for n in shape))
    while factor > 1:
        codes = downsample_labels(codes)
        factor //= 2
    if crop.spec.unknown is not None:
        box = [
            slice(round(lo * n), round(hi * n))
            for (lo, hi), n in zip(crop.spec.unknown, crop.shape, strict=True)
        ]
        zlo = max(box[0].start, z0) - z0
        zhi = min(box[0].stop, z1) - z0
        if zhi > zlo:
            codes[zlo:zhi, box[1], box[2]] = UNKNOWN_CODE
    return codes


def _arrays_from_codes(
    codes: np.ndarray, classes: Sequence[str]
) -> Iterator[tuple[str, np.ndarray]]:
    """(group name, array) for ``all`` and each annotated class, from label codes."""
    unknown = codes == UNKNOWN_CODE
    cls = code_to_class_index(codes)
    lut = np.zeros(256, dtype=np.uint8)
    for name in classes:
        lut[CLASSES.index(name) + 1] = CELLMAP_LABEL_IDS[name]
    lut[UNKNOWN] = UNKNOWN
    yield "all", lut[cls]
    for name in classes:
        if name in INSTANCE_CLASSES:
            inst = np.where(codes >= NUC_BASE, codes - NUC_BASE, 0).astype(np.uint16)
            inst[unknown] = UNKNOWN
            yield name, inst
        else:
            binary = (cls == CLASSES.index(name) + 1).astype(np.uint8)
            binary[unknown] = UNKNOWN
            yield name, binary


def _write_crop(labels: Any, scene: _Scene, crop: PlacedCrop, slab: int) -> dict[str, Any]:
    """Write one crop slab by slab; return its manifest entry (positives counted at s0)."""
    spec = crop.spec
    voxel = list(spec.voxel_size_nm)
    group = labels.require_group(spec.name)
    all_attrs = {
        "cellmap": {
            "annotation": {
                "class_name": "all",
                "annotation_type": {
                    "type": "semantic_segmentation",
                    "encoding": {"absent": 0, "unknown": UNKNOWN},
                },
            }
        },
        "cellseg": {"class_ids": {name: CELLMAP_LABEL_IDS[name] for name in spec.classes}},
    }
    arrays = {
        "all": create_multiscale_group(
            group, "all", crop.shape, "uint8", voxel, crop.translation_nm, LABEL_LEVELS, all_attrs
        )
    }
    for name in spec.classes:
        dtype = "uint16" if name in INSTANCE_CLASSES else "uint8"
        arrays[name] = create_multiscale_group(
            group,
            name,
            crop.shape,
            dtype,
            voxel,
            crop.translation_nm,
            LABEL_LEVELS,
            annotation_attrs(name),
        )
    positives = dict.fromkeys(spec.classes, 0)
    unknown_voxels = 0
    values_seen: set[int] = set()
    for z0 in range(0, crop.shape[0], slab):
        z1 = min(z0 + slab, crop.shape[0])
        levels = [_render_crop_slab(scene, crop, z0, z1)]
        for _ in range(1, LABEL_LEVELS):
            levels.append(downsample_labels(levels[-1]))
        values_seen.update(np.flatnonzero(np.bincount(levels[0].ravel())).tolist())
        unknown_voxels += int((levels[0] == UNKNOWN_CODE).sum())
        for level, codes in enumerate(levels):
            f = 2**level
            for name, data in _arrays_from_codes(codes, spec.classes):
                arrays[name][level][z0 // f : z1 // f] = data
                if level == 0 and name != "all":
                    positives[name] += int(((data != 0) & (data != UNKNOWN)).sum())
    if spec.homogeneous and len(values_seen) != 1:
        raise AssertionError(
            f"{spec.name} is meant to be homogeneous but holds codes {sorted(values_seen)}"
        )
    return {
        "name": spec.name,
        "voxel_size_nm": voxel,
        "translation_nm": list(crop.translation_nm),
        "shape": list(crop.shape),
        "classes": list(spec.classes),
        "positive_voxels_s0": positives,
        "unknown_voxels_s0": unknown_voxels,
        "homogeneous": spec.homogeneous,
    }


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def _prepare_out(out: Path, force: bool) -> None:
    """Refuse a non-empty directory that is not a previous demo output, unless ``force``."""
    if out.exists() and not out.is_dir():
        raise CellsegError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        marker = out / MARKER_NAME
        if not marker.is_file() and not force:
            raise CellsegError(
                f"{out}: directory is not empty and holds no {MARKER_NAME} from a previous demo "
                f"run; choose an empty --out or pass --force to write into it"
            )
        if marker.is_file():
            try:
                previous = json.loads(marker.read_text())
            except json.JSONDecodeError:
                previous = {}
            # remove only what a previous run made, so stale datasets of another size go away
            for name in previous.get("datasets", {}):
                target = out / Path(name).name
                if target.is_dir():
                    shutil.rmtree(target)
    out.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class DatasetPlan:
    """What one dataset of the demo will hold: its scene, EM shape and placed crops."""

    name: str
    index: int
    em_shape: tuple[int, int, int]  # EM s0 voxels (z, y, x) at 8 nm
    crops: tuple[PlacedCrop, ...]
    scene: _Scene


def _preset(size: str, extent_scale: float) -> SizePreset:
    if size not in SIZES:
        raise CellsegError(f"--size {size!r}: unknown; choose one of {', '.join(SIZES)}")
    if not extent_scale > 0:
        raise CellsegError(f"extent_scale = {extent_scale}: must be > 0")
    return SIZES[size] if extent_scale == 1.0 else SIZES[size].scaled(extent_scale)


def plan_dataset(seed: int, preset: SizePreset, index: int) -> DatasetPlan:
    """Build dataset ``index``'s scene and place its crops, without writing anything.

    Depends only on (seed, preset, index); this is exactly what :func:`make_demo_data` writes.
    """
    name, specs = preset.datasets[index]
    key = (int(seed), index)
    rng = np.random.default_rng([*key, 0])
    em_shape = preset.em_shape if preset.em_shapes is None else preset.em_shapes[index]
    crops = list(specs)
    if preset.big_crop_extent is not None and index == 0:
        assert preset.big_em_shape is not None
        em_shape = preset.big_em_shape
        crops.append(CropSpec(BIG_CROP_NUMBER, 8.0, preset.big_crop_extent, "centre", "em", ALL))
    scene = _build_scene(rng, em_shape, preset.cell_nm)
    placement_rng = np.random.default_rng([*key, 1])
    placed = [
        _place_crop(
            spec, scene, em_shape,
            1.0 if spec.number == BIG_CROP_NUMBER else preset.crop_scale,
            placement_rng, preset.context_em,
        )
        for spec in crops
    ]  # fmt: skip
    if preset.disjoint:
        placed = _separate(placed, em_shape, preset.context_em)
    return DatasetPlan(name, index, tuple(em_shape), tuple(placed), scene)  # type: ignore[arg-type]


def plan_layout(
    seed: int = 0, size: str = "default", extent_scale: float = 1.0
) -> list[DatasetPlan]:
    """Every dataset's :class:`DatasetPlan` for (seed, size), without writing (fast: no voxels)."""
    preset = _preset(size, extent_scale)
    return [plan_dataset(seed, preset, index) for index in range(len(preset.datasets))]


def make_demo_data(
    out: Path | str,
    seed: int = 0,
    size: str = "default",
    force: bool = False,
    datasets: Sequence[str] | None = None,
    extent_scale: float = 1.0,
) -> list[Path]:
    """Write the synthetic CellMap-layout demo under ``out``; return the ``.zarr`` store paths.

    ``size``: "small" (tests: EM 48×192×192, crops halved), "default" (EM 96×320×320 voxels at
    8 nm per dataset, < 100 MB), "large" (adds crop 29, 112×1024×1024 voxels at 8 nm with all
    14 classes, ≥ 2 GB of uncompressed labels, to the first dataset) or "realistic" (two
    datasets with the real training crops' geometry: three crops of 400³ voxels at 4 nm and one
    of 400³ at (2.6, 2, 2) nm, all 14 classes each, and a 48×64×64 crop at 32 nm; EM of
    232×600×600 and 232×600×900 voxels at 8 nm). Deterministic for (``seed``, ``size``,
    ``extent_scale``). Writes ``out/cellseg_demo.json`` (the marker and a manifest of every crop)
    first as "incomplete" and finally as "complete". ``datasets`` restricts the output to those
    dataset names (for quick tests); each dataset depends only on (seed, size, its index).
    ``extent_scale`` multiplies every length of the size (:meth:`SizePreset.scaled`): a reduced
    variant for tests, the same code at a fraction of the cost.
    """
    import zarr

    preset = _preset(size, extent_scale)
    names = [name for name, _ in preset.datasets]
    unknown_names = sorted(set(datasets or ()) - set(names))
    if unknown_names:
        raise CellsegError(f"datasets {unknown_names}: unknown; choose from {names}")
    out = Path(out)
    _prepare_out(out, force)
    started = time.perf_counter()
    manifest: dict[str, Any] = {
        "generator": "cellseg make-demo-data",
        "status": "incomplete",
        "seed": seed,
        "size": size,
        "class_ids": CELLMAP_LABEL_IDS,
        "datasets": {},
    }
    if extent_scale != 1.0:
        manifest["extent_scale"] = extent_scale
    marker = out / MARKER_NAME
    marker.write_text(json.dumps(manifest, indent=1))
    stores: list[Path] = []
    for index, name in enumerate(names):
        if datasets is not None and name not in datasets:
            continue
        plan = plan_dataset(seed, preset, index)
        store = out / name / f"{name}.zarr"
        root = zarr.open_group(store, mode="w", zarr_format=2)
        _write_em(root, plan.scene, (int(seed), index), plan.em_shape, preset.slab)
        labels = root.require_group(LABELS_PATH)
        entries = [_write_crop(labels, plan.scene, placed, preset.slab) for placed in plan.crops]
        manifest["datasets"][name] = {
            "store": str(store.relative_to(out)),
            "em_shape": list(plan.em_shape),
            "em_voxel_size_nm": EM_VOXEL_NM,
            "crops": entries,
        }
        stores.append(store)
    manifest["status"] = "complete"
    manifest["seconds"] = round(time.perf_counter() - started, 2)
    marker.write_text(json.dumps(manifest, indent=1))
    return stores


def add_parser(subparsers: Any) -> None:
    """Register ``cellseg make-demo-data``."""
    parser = subparsers.add_parser(
        "make-demo-data",
        help="write synthetic FIB-SEM demo data in the CellMap layout",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write (only there)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--size", choices=tuple(SIZES), default="default",
        help="small (tests), default (< 100 MB), large (≥ 2 GB of labels, for benchmarks) or "
        "realistic (the real crops' geometry: 400³ voxels at 4 nm, 2.6×2×2 nm and 32 nm crops)",
    )  # fmt: skip
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty directory without a demo marker",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    stores = make_demo_data(args.out, seed=args.seed, size=args.size, force=args.force)
    size_mb = sum(f.stat().st_size for s in stores for f in s.rglob("*") if f.is_file()) / 1e6
    print(
        f"wrote {len(stores)} datasets to {args.out} ({size_mb:.1f} MB) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0
