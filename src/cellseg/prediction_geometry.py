"""A whole-dataset prediction's settings and its geometry: the grid, the ROI, the windows and the
blocks (:class:`PredictionPlan`, :func:`plan_prediction`), and each block's blended logits
(:func:`block_logits`); :mod:`cellseg.prediction` writes them into the OME-Zarr store.

Geometry. The prediction grid has the model's voxel size ``r`` and starts at the EM volume's
lower corner (voxel ``i`` centred at ``start + (i + 1/2) r``, ``r`` per axis; with an EM level at ``r`` it *is*
that level's grid and the EM is read without interpolation). An optional ROI (nm) keeps the grid
voxels that overlap it. The windows slide over the whole volume plus a margin of half a window
per axis (EM beyond the volume repeats its edge), whatever the ROI: anchored to the volume, they
give a voxel the same value however it was requested; 2D models see z slices (window depth 1,
no z margin).

Blending across block borders. The windows are :mod:`cellseg.inference`'s grid over that image
(MONAI's placement), fixed by its size, the window and the overlap; each output voxel is
``sum_w g_w z_w / sum_w g_w`` over the windows covering it (``g``: the importance map); models
with an output margin read that much more EM around each window. A block computes every window
of that global grid that intersects its core, so each voxel gets exactly the windows and weights
of a whole-volume run: a blockwise run equals a whole-volume run (to float rounding). Blocks are
``block_voxels`` tiles of the output (multiples of its chunks, so jobs write disjoint chunks).
Within one run, consecutive blocks along the plan's carry axis (z for a 3D model: column by
column; x for a 2D model, whose windows never span a z border: row by row) share their windows:
a window spanning that border is computed once and its contribution to the next block is carried
over, so a run pays duplicated windows only at the other borders. Memory: two blocks'
accumulators, ``(bz + window_z) × by × bx × 15 × 4`` bytes (2D: ``bz × by × (bx + window_x)``)
each (the block computing, and the one being written, whose core holds its probabilities in
place), plus a block's EM and the network's activations, independent of the volume's size (on a
GPU the accumulator is GPU memory and the host holds two blocks' probabilities,
``bz × by × bx × 14 × 4`` bytes each); the output is written chunk by chunk, one class at a time
(:class:`cellseg.ngff.ChunkWriter`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellseg.classes import CLASSES, NUM_CLASSES
from cellseg.data.multiscale import Multiscale, ScaleLevel
from cellseg.errors import CellsegError
from cellseg.inference import BLEND_MODES, Blender, EMReader, Predictor, VolumeGrid, WindowGrid
from cellseg.losses import InferenceLogitAdjustment
from cellseg.prediction_groups import GROUP_CHOICES
from cellseg.prediction_store import DTYPES
from cellseg.tta import TTA
from cellseg.voxels import Vec3, as_vec3, to_json

__all__ = ["PredictionPlan", "PredictionSettings", "block_logits", "plan_prediction"]


# ------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class PredictionSettings:
    """How a volume is predicted (the ``predict`` section of the config, or the CLI options).

    Attributes:
        overlap: fraction of a window shared with its neighbours, in [0, 1).
        blend_mode: ``gaussian`` or ``constant`` (MONAI's importance maps).
        sw_batch_size: windows per forward pass.
        adjustment: ``train`` / ``none``; ``None``: the model's own (as evaluation).
        threshold: probability above which the mask is 1: one number, or class → number
            (classes not named: 0.5).
        dtype: probability arrays' dtype: ``uint8`` (round(p × 255)), ``uint16`` or ``float32``.
        chunk_voxels: output chunks, voxels per axis (a cube; smaller where the volume is).
        block_voxels: ``(bz, by, bx)`` output voxels per block, multiples of ``chunk_voxels``;
            bounds memory (see the module docstring).
        pyramid_levels: levels in all (s0 included); ``None``: halve until every axis fits one
            chunk.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        tta: test-time augmentation (``inference.tta``, :mod:`cellseg.tta`).
        groups: which groups (whole organelles) get a probability array and a mask of their
            own (:mod:`cellseg.prediction_groups`): ``auto``, those whose labels the run trained
            on; ``all``; ``none``.
    """

    overlap: float = 0.25
    blend_mode: str = "gaussian"
    sw_batch_size: int = 4
    adjustment: str | None = None
    threshold: float | Mapping[str, float] = 0.5
    dtype: str = "uint8"
    chunk_voxels: int = 64
    block_voxels: tuple[int, int, int] = (64, 1024, 1024)
    pyramid_levels: int | None = None
    device: str = "auto"
    tta: str = "none"
    groups: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tta", TTA.parse(self.tta).value)
        if not 0.0 <= self.overlap < 1.0:
            raise CellsegError(f"predict.overlap = {self.overlap}: must be in [0, 1)")
        if self.blend_mode not in BLEND_MODES:
            raise CellsegError(f"predict.blend_mode = {self.blend_mode!r}: use gaussian/constant")
        if self.adjustment is not None and self.adjustment not in {
            m.value for m in InferenceLogitAdjustment
        }:
            raise CellsegError(f"predict.adjustment = {self.adjustment!r}: use train or none")
        if self.dtype not in DTYPES:
            raise CellsegError(f"predict.dtype = {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.sw_batch_size < 1 or self.chunk_voxels < 1:
            raise CellsegError("predict: sw_batch_size and chunk_voxels must be >= 1")
        if len(self.block_voxels) != 3 or any(
            b < 1 or b % self.chunk_voxels for b in self.block_voxels
        ):
            raise CellsegError(
                f"predict.block_voxels = {list(self.block_voxels)}: need 3 positive multiples of "
                f"chunk_voxels = {self.chunk_voxels} (blocks must write whole chunks)"
            )
        if self.groups not in GROUP_CHOICES:
            raise CellsegError(
                f"predict.groups = {self.groups!r}: use one of {', '.join(GROUP_CHOICES)}"
            )
        if self.pyramid_levels is not None and self.pyramid_levels < 1:
            raise CellsegError("predict.pyramid_levels must be >= 1 (or null for automatic)")
        thresholds = self.threshold if isinstance(self.threshold, Mapping) else {}
        unknown = set(thresholds) - set(CLASSES)
        if unknown:
            raise CellsegError(
                f"predict.threshold: unknown class {sorted(unknown)[0]!r}; classes are "
                f"{', '.join(CLASSES)}"
            )

    def thresholds(self) -> np.ndarray:
        """``(14,)`` per-class thresholds."""
        if isinstance(self.threshold, Mapping):
            return np.array([float(self.threshold.get(c, 0.5)) for c in CLASSES])
        return np.full(NUM_CLASSES, float(self.threshold))

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any] | None, inference: Mapping[str, Any] | None = None
    ) -> PredictionSettings:
        """From the config's ``predict`` section (keys that are not settings are ignored) and
        its ``inference`` section (``tta``)."""
        names = set(cls.__dataclass_fields__)
        values = {k: v for k, v in (section or {}).items() if k in names}
        if inference is not None:
            values["tta"] = inference.get("tta", "none")
        if "block_voxels" in values:
            values["block_voxels"] = tuple(int(b) for b in values["block_voxels"])
        return cls(**values)


# ------------------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class PredictionPlan:
    """Where a volume is predicted and how it is cut into windows and blocks.

    Coordinates: *grid* indices over the whole EM volume at ``resolution_nm``; *output* indices
    over the ROI (``grid = output + roi_start``); *image* indices over the whole volume plus
    ``margin`` (``image = grid + margin``), the array the windows slide over. The windows are
    anchored to the volume, not the ROI, so a voxel gets the same windows, and the same value,
    whatever ROI it was requested in.

    Attributes:
        em_store, em_group: the EM multiscale group.
        level: the EM level read (nearest the model's resolution).
        resolution_nm: ``r``, the model's ``(z, y, x)`` voxel size, nm.
        grid_origin_nm: ``(z, y, x)`` centre of grid voxel 0, nm.
        grid_shape: grid voxels over the EM volume.
        roi_start, shape: output voxel 0 in grid indices, and the output's shape.
        window: ``(wz, wy, wx)`` voxels read per window (``wz = 1`` for a 2D model).
        output_margin: voxels the network loses on each side of a window, per axis
            (:attr:`cellseg.inference.Predictor.output_margin`).
        margin: image voxels before grid voxel 0, per axis (context).
        starts: output-window starts per axis, image indices.
        block: ``(bz, by, bx)`` output voxels per block.
        carry_axis: the axis along which consecutive blocks share windows (0, z, for a 3D
            model; 2, x, for a 2D one, whose windows never span a z border); blocks are
            numbered along it first.
        chunk: output chunk edge, voxels.
    """

    em_store: Path
    em_group: str
    level: ScaleLevel
    resolution_nm: Vec3
    grid_origin_nm: tuple[float, float, float]
    grid_shape: tuple[int, int, int]
    roi_start: tuple[int, int, int]
    shape: tuple[int, int, int]
    window: tuple[int, int, int]
    output_margin: tuple[int, int, int]
    margin: tuple[int, int, int]
    starts: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    block: tuple[int, int, int]
    chunk: int
    carry_axis: int = 0

    @property
    def windows(self) -> WindowGrid:
        """The output windows over the image and the input margin each reads."""
        output = tuple(w - 2 * m for w, m in zip(self.window, self.output_margin, strict=True))
        return WindowGrid(output, self.output_margin, self.starts)  # type: ignore[arg-type]

    def image_box(self, index: int) -> list[tuple[int, int]]:
        """Block ``index``'s output box in image indices."""
        offset = [r + m for r, m in zip(self.roi_start, self.margin, strict=True)]
        return [
            (s.start + o, s.stop + o) for s, o in zip(self.block_box(index), offset, strict=True)
        ]

    def window_counts(self, blocks: Sequence[int]) -> tuple[int, int]:
        """``(computed, distinct)``: the window forward passes that predicting ``blocks`` in
        this order costs, and the distinct windows among them (computed / distinct - 1 is the
        fraction recomputed at block borders)."""
        grid, a = self.windows, self.carry_axis
        computed, distinct, previous = 0, set(), None
        for index in blocks:
            box = self.image_box(index)
            chosen = [grid.reaching(k, *box[k]) for k in range(3)]
            others = [box[k] for k in range(3) if k != a]
            if previous is not None and previous[0] == others and previous[1] == box[a][0]:
                chosen[a] = [i for i in chosen[a] if grid.starts[a][i] >= box[a][0]]
            previous = (others, box[a][1])
            computed += math.prod(len(c) for c in chosen)
            distinct.update(itertools.product(*chosen))
        return computed, len(distinct)

    def reader(self, em: Multiscale, em_range: tuple[float, float]) -> EMReader:
        """The plan's EM on image indices (edge values beyond the volume)."""
        shift = tuple(-m for m in self.margin)
        return EMReader(
            em.open_level(self.level), self.level, self.grid_origin_nm, self.resolution_nm,
            shift, em_range,
        )  # fmt: skip

    @property
    def translation_nm(self) -> tuple[float, float, float]:
        """Centre of output voxel 0, nm (the OME-NGFF translation of level s0)."""
        return tuple(
            o + s * r
            for o, s, r in zip(self.grid_origin_nm, self.roi_start, self.resolution_nm, strict=True)
        )  # type: ignore[return-value]

    def chunk_shape(self, shape: Sequence[int] | None = None) -> tuple[int, ...]:
        """Chunks of an output array of ``shape`` (default: s0's): ``chunk`` voxels an edge,
        or the whole axis when it is shorter."""
        return tuple(min(self.chunk, n) for n in (self.shape if shape is None else shape))

    @property
    def block_counts(self) -> tuple[int, int, int]:
        return tuple(-(-n // b) for n, b in zip(self.shape, self.block, strict=True))  # type: ignore[return-value]

    @property
    def n_blocks(self) -> int:
        return math.prod(self.block_counts)

    def block_box(self, index: int) -> tuple[slice, slice, slice]:
        """Output box of block ``index``; blocks run along the carry axis first (3D models:
        column by column, z fastest; 2D models: row by row, x fastest), then x, then y."""
        position = [0, 0, 0]
        for axis in dict.fromkeys((self.carry_axis, 2, 1, 0)):
            index, position[axis] = divmod(index, self.block_counts[axis])
        return tuple(
            slice(k * b, min((k + 1) * b, n))
            for k, b, n in zip(position, self.block, self.shape, strict=True)
        )  # type: ignore[return-value]

    def part_blocks(self, part: int, parts: int) -> range:
        """Blocks of the ``part``-th of ``parts`` contiguous ranges (the jobs of one dataset)."""
        if not 0 <= part < parts:
            raise CellsegError(f"--part {part}: must be in [0, --parts {parts})")
        n = self.n_blocks
        return range(part * n // parts, (part + 1) * n // parts)

    def describe(self) -> dict[str, Any]:
        """What the blocks depend on (stored in the output; a mismatch refuses to resume)."""
        return {
            "em": f"{self.em_store.resolve()}/{self.em_group}",
            "level": self.level.path,
            "resolution_nm": to_json(self.resolution_nm),
            "roi_start": list(self.roi_start),
            "shape": list(self.shape),
            "translation_nm": list(self.translation_nm),
            "window": list(self.window),
            "margin": list(self.margin),
            "block": list(self.block),
            "chunk": self.chunk,
            # the windows anchored to the volume (ROI stores of before were anchored to the ROI)
            "window_grid": "volume",
            "carry_axis": self.carry_axis,
        }


def plan_prediction(
    em: Multiscale,
    predictor: Predictor,
    settings: PredictionSettings,
    roi: Sequence[tuple[float, float]] | None = None,
) -> PredictionPlan:
    """The grid, ROI, windows and blocks of predicting ``em`` with ``predictor``.

    Raises:
        CellsegError: the ROI misses the volume, or the patch does not match the model's dim.
    """
    r = as_vec3(predictor.resolution_nm)
    start, stop = em.bounds_nm
    # the volume's grid and its one grid of windows, whatever the ROI (the same voxel, the same
    # value; cellseg.inference.VolumeGrid, as evaluation and figures)
    volume = VolumeGrid.over(em.bounds_nm, predictor, settings.overlap)
    grid_shape = volume.shape
    if roi is None:
        lo, hi = (0, 0, 0), grid_shape
    else:
        lo, hi = volume.region(tuple(zip(*roi, strict=True)))  # type: ignore[arg-type]
        if any(b <= a for a, b in zip(lo, hi, strict=True)):
            raise CellsegError(
                f"--roi {roi}: does not overlap the EM volume {em.location}, which spans "
                f"{[round(float(v), 3) for v in start]}–{[round(float(v), 3) for v in stop]} nm"
            )
    shape = tuple(b - a for a, b in zip(lo, hi, strict=True))
    return PredictionPlan(
        em_store=em.store,
        em_group=em.group,
        level=em.level_for(r),
        resolution_nm=r,
        grid_origin_nm=volume.origin_nm,
        grid_shape=grid_shape,  # type: ignore[arg-type]
        roi_start=lo,  # type: ignore[arg-type]
        shape=shape,  # type: ignore[arg-type]
        window=predictor.window,
        output_margin=predictor.output_margin,
        margin=volume.context,
        starts=volume.windows.starts,
        block=settings.block_voxels,
        chunk=settings.chunk_voxels,
        carry_axis=volume.carry_axis,
    )


def block_logits(
    predictor: Predictor,
    plan: PredictionPlan,
    reader: EMReader,
    blocks: Sequence[int],
    settings: PredictionSettings,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[int, torch.Tensor]]:
    """Blended logits of each block over the plan's window grid (see the module docstring).

    Args:
        predictor: the model; its network already on ``device``.
        plan: the geometry.
        reader: the plan's EM (:meth:`PredictionPlan.reader`).
        blocks: block indices, in the order to compute them (consecutive blocks along the
            plan's carry axis share their windows).
        settings: blending and windows per forward pass.
        device: where the network runs and the sums accumulate.

    Yields:
        ``(index, logits)``: ``(14, bz, by, bx)`` float32 CPU logits of the block's output box.
    """
    blender = Blender(
        predictor, plan.windows, settings.blend_mode, settings.sw_batch_size, device, settings.tta
    )
    boxes = ((index, plan.image_box(index)) for index in blocks)
    yield from blender.logits(reader.read, boxes, plan.carry_axis)  # type: ignore[misc]
