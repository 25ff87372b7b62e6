"""Where the demo's crops go: each crop of the layout placed in its dataset's EM volume.

A crop is centred on a scene anchor (a Golgi stack, a cell boundary, a nucleus' edge) or at a
random point, snapped to the EM grid with the phase its :class:`~cellseg.data.demo_layout.CropSpec`
asks for, kept inside the volume (with context for training patches where the size asks for it)
and, for sizes whose crops must not share a voxel, moved apart (:func:`separate`).
:func:`plan_dataset` draws a dataset's scene and places its crops without writing anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from cellseg.data.demo.scene import Scene, build_scene
from cellseg.data.demo_layout import (
    ALL,
    BIG_CROP_NUMBER,
    EM_VOXEL_NM,
    SIZES,
    CropSpec,
    SizePreset,
)
from cellseg.errors import CellsegError


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
    scene: Scene,
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


def separate(
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


def pack(
    crops: Sequence[PlacedCrop], em_shape: Sequence[int], context: Sequence[int], gap: int = 2
) -> list[PlacedCrop]:
    """Place a dataset's crops one by one, each at the allowed start nearest (in EM voxels, z y
    x alike) to where :func:`_place_crop` put it, such that its EM footprint stays at least
    ``gap`` EM voxels (8 nm each) from every crop placed before it along some axis: no two crops
    share or touch a voxel, so each is a split unit of its own (:mod:`cellseg.data.split_units`
    groups crops whose boxes overlap or touch). Homogeneous crops go first (they must stay inside
    their nucleus), then the crops annotating the most classes (the full-class crops on their
    Golgi stacks), then the others in layout order. Moves may be along z as well as y and x;
    "odd"-phase crops keep odd starts. Returns the crops in their input order.

    Raises:
        ValueError: some crop finds no free start in the volume.
    """
    order = sorted(
        range(len(crops)),
        key=lambda k: (
            not crops[k].spec.homogeneous,
            len(crops[k].spec.classes) < len(ALL),
            -math.prod(crops[k].footprint_em),
            k,
        ),
    )
    done: list[PlacedCrop] = []
    out: list[PlacedCrop | None] = [None] * len(crops)
    for k in order:
        crop = crops[k]
        ranges = _start_ranges(crop.spec, crop.extent_em, em_shape, context)
        step = 2 if crop.spec.phase == "odd" else 1
        axes = [np.arange(lo, hi + 1, step) for lo, hi in ranges]
        if any(axis.size == 0 for axis in axes):
            raise ValueError(f"{crop.spec.name} does not fit the EM volume {tuple(em_shape)}")
        free = np.ones([axis.size for axis in axes], dtype=bool)
        footprint = crop.footprint_em
        for other in done:
            # starts whose footprint comes within ``gap`` of ``other`` along every axis
            box = tuple(
                slice(
                    np.searchsorted(axis, s - f - gap, side="right"),
                    np.searchsorted(axis, s + o + gap, side="left"),
                )
                for axis, s, o, f in zip(
                    axes, other.start_em, other.footprint_em, footprint, strict=True
                )
            )
            free[box] = False
        if not free.any():
            raise ValueError(
                f"{crop.spec.name} finds no start {gap} EM voxels clear of the other crops in an "
                f"EM volume of {tuple(em_shape)} voxels; enlarge it"
            )
        distance = sum(
            ((axis - start).astype(np.float64) ** 2).reshape(
                [-1 if i == j else 1 for j in range(3)]
            )
            for i, (axis, start) in enumerate(zip(axes, crop.start_em, strict=True))
        )
        best = np.unravel_index(np.argmin(np.where(free, distance, np.inf)), free.shape)
        start = [int(axis[i]) for axis, i in zip(axes, best, strict=True)]
        placed = _placed(crop.spec, start, crop.extent_em)
        done.append(placed)
        out[k] = placed
    return [crop for crop in out if crop is not None]


@dataclass(frozen=True)
class DatasetPlan:
    """What one dataset of the demo will hold: its scene, EM shape and placed crops."""

    name: str
    index: int
    em_shape: tuple[int, int, int]  # EM s0 voxels (z, y, x) at 8 nm
    crops: tuple[PlacedCrop, ...]
    scene: Scene


def preset_of(size: str, extent_scale: float) -> SizePreset:
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
    scene = build_scene(rng, em_shape, preset.cell_nm)
    placement_rng = np.random.default_rng([*key, 1])
    placed = [
        _place_crop(
            spec, scene, em_shape,
            1.0 if spec.number == BIG_CROP_NUMBER else preset.crop_scale,
            placement_rng, preset.context_em,
        )
        for spec in crops
    ]  # fmt: skip
    if preset.packed:
        big = [c for c in placed if c.spec.number == BIG_CROP_NUMBER]
        placed = pack(
            [c for c in placed if c.spec.number != BIG_CROP_NUMBER],
            em_shape, preset.context_em, preset.gap_em,
        ) + big  # fmt: skip
    elif preset.disjoint:
        placed = separate(placed, em_shape, preset.context_em)
    return DatasetPlan(name, index, tuple(em_shape), tuple(placed), scene)  # type: ignore[arg-type]


def plan_layout(
    seed: int = 0, size: str = "default", extent_scale: float = 1.0
) -> list[DatasetPlan]:
    """Every dataset's :class:`DatasetPlan` for (seed, size), without writing (fast: no voxels)."""
    preset = preset_of(size, extent_scale)
    return [plan_dataset(seed, preset, index) for index in range(len(preset.datasets))]
