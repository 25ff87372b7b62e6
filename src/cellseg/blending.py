"""The window grid and the blending of the windows' logits: how a model too small for the image is
slid over it, the same for evaluation, prediction and figures (through :mod:`cellseg.inference`).

* **The window grid.** Windows are the training patch (2D models: depth 1, one z slice each),
  placed as MONAI's ``sliding_window_inference`` places them over an image
  (:func:`window_starts`: stride ``int(window × (1 - overlap))``, the last window moved back to
  end at the edge). A model may predict less than it reads (valid convolutions): its module's
  ``output_margin_voxels`` (per spatial axis, voxels lost on *each* side; absent: zeros) makes
  each window read ``window`` voxels and predict ``window - 2 margin``; the *output* windows then
  tile the image with the configured overlap and the EM is read ``margin`` voxels further out
  (:class:`WindowGrid`).
* **Blending.** Each output voxel is ``sum_w g_w z_w / sum_w g_w`` over the windows covering it,
  ``g`` MONAI's importance map of the output window (:func:`importance_map`: ``gaussian``, sigma
  0.125 of the window, or ``constant``). :class:`Blender` computes the windows of a grid that
  reach into a box of the image and accumulates only that box; consecutive boxes along its
  *carry axis* share the windows spanning their border (computed once, their overhang carried to
  the next box), so a box-by-box run equals a whole-image run. Windows are summed in one order
  whatever the boxes (carry-axis start first, then the other axes'), so the same voxel gets the
  same value however the image was cut into boxes, to the bit when the network's output for a
  window does not depend on the other windows of its batch.
* **Context.** Windows need context beyond the region predicted: half an output window per axis
  (:func:`context_voxels`, at least enough for one window), plus the output margin.
* **Test-time augmentation** (:mod:`cellseg.tta`): each window's logits are the mean over the
  mode's flips and rotations, inside :class:`Blender`, so it applies to every caller alike.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from cellseg.classes import NUM_CLASSES
from cellseg.errors import CellsegError
from cellseg.tta import tta_forward, tta_transforms

__all__ = [
    "BLEND_MODES",
    "Blender",
    "Box",
    "WindowGrid",
    "WindowModel",
    "context_voxels",
    "importance_map",
    "window_starts",
]

BLEND_MODES: tuple[str, ...] = ("gaussian", "constant")
SIGMA_SCALE = 0.125  # MONAI's default Gaussian width, as its sliding_window_inference uses it

Box = Sequence[tuple[int, int]]
"""``[(start, stop)]`` per axis ``(z, y, x)``, voxels (half-open)."""


class WindowModel(Protocol):
    """What :class:`Blender` needs of a model (:class:`cellseg.inference.Predictor` is one)."""

    network: torch.nn.Module
    dim: str  # "2d" (windows of depth 1 go through the network as (n, 1, H, W)) or "3d"
    amp: bool  # bf16 autocast

    @property
    def key(self) -> str:
        """The model's name in messages."""
        ...

    @property
    def window(self) -> tuple[int, int, int]:
        """The input window ``(wz, wy, wx)``, voxels."""
        ...


def context_voxels(window: int, extent: int) -> int:
    """Context (voxels) on each side of a region of ``extent`` voxels: half a window, and enough
    that one window fits."""
    return max(window // 2, math.ceil(max(window - extent, 0) / 2))


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Window starts along one axis of an image of ``size`` voxels, as MONAI's
    ``sliding_window_inference`` places them (``_get_scan_interval`` + ``dense_patch_slices``):
    stride ``int(window × (1 - overlap))`` (at least 1; the whole axis when the window equals
    it), the last window moved back to end at the edge. Needs ``size >= window``."""
    if window == size:
        return [0]
    stride = max(int(window * (1 - overlap)), 1)
    count = next(d for d in range(size) if d * stride + window >= size) + 1
    return [i * stride - max(i * stride + window - size, 0) for i in range(count)]


def importance_map(
    window: Sequence[int], mode: str, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """MONAI's importance map of an output window ``(wz, wy, wx)``, float32 of that shape (a 2D
    window, ``wz = 1``, gets the 2D map)."""
    from monai.data.utils import compute_importance_map

    spatial = tuple(window) if window[0] > 1 else tuple(window[1:])
    weights = compute_importance_map(
        spatial, mode=mode, sigma_scale=SIGMA_SCALE, device=device, dtype=torch.float32
    )
    return weights.reshape(tuple(window)).float()


@dataclass(frozen=True)
class WindowGrid:
    """The output windows over an image, and the input each reads.

    Attributes:
        window: output window ``(wz, wy, wx)``, voxels.
        margin: input voxels read beyond the output window on each side, per axis.
        starts: output-window starts per axis, image indices.
    """

    window: tuple[int, int, int]
    margin: tuple[int, int, int]
    starts: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]

    @classmethod
    def over(
        cls,
        shape: Sequence[int],
        window: Sequence[int],
        margin: Sequence[int],
        overlap: float,
    ) -> WindowGrid:
        """Windows placed over an image of ``shape`` voxels (each axis at least the window)."""
        starts = tuple(
            tuple(window_starts(int(n), int(w), overlap))
            for n, w in zip(shape, window, strict=True)
        )
        return cls(tuple(window), tuple(margin), starts)  # type: ignore[arg-type]

    def reaching(self, axis: int, lo: int, hi: int) -> list[int]:
        """Indices into ``starts[axis]`` of the windows that reach into ``[lo, hi)``."""
        w = self.window[axis]
        return [i for i, s in enumerate(self.starts[axis]) if s < hi and s + w > lo]

    @property
    def n_windows(self) -> int:
        return math.prod(len(s) for s in self.starts)


@dataclass
class _Carry:
    """Sums of the windows computed so far beyond a box's stop along the carry axis."""

    others: tuple[tuple[int, int], ...]  # the box on the other axes
    stop: int  # the box's stop on the carry axis
    next_window: int  # index into starts[carry axis] of the first window not yet computed
    sums: torch.Tensor  # (14, *shape)
    weights: torch.Tensor  # shape


class Blender:
    """Runs the windows of a :class:`WindowGrid` and blends their logits on boxes of the image.

    Args:
        predictor: the model; its network already on ``device``.
        grid: the windows (output windows and input margin of ``predictor``).
        blend_mode: ``gaussian`` or ``constant``.
        sw_batch_size: windows per forward pass.
        device: where the network runs and the sums accumulate.
        tta: test-time augmentation (:class:`cellseg.tta.TTA`): each window's logits are the
            mean over its transforms.
    """

    def __init__(
        self,
        predictor: WindowModel,
        grid: WindowGrid,
        blend_mode: str,
        sw_batch_size: int,
        device: torch.device | str = "cpu",
        tta: str = "none",
    ) -> None:
        self.predictor = predictor
        self.grid = grid
        self.device = torch.device(device)
        self.importance = importance_map(grid.window, blend_mode, self.device)
        self.batch = max(int(sw_batch_size), 1)
        self.transforms = tta_transforms(tta, predictor.dim, predictor.window, grid.margin)
        self.windows_run = 0  # forward passes of single windows so far (benchmarks)

    def _network(self, batch: torch.Tensor) -> torch.Tensor:
        """One forward pass: ``(n, 1, *input window)`` → ``(n, 14, *output)`` float32."""
        p = self.predictor
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=p.amp):
            if p.dim == "3d":
                return p.network(batch).float()
            return p.network(batch[:, :, 0]).float()[:, :, None]

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """``(n, 1, *input window)`` → ``(n, 14, *output window)`` float32 (the mean over the
        TTA transforms)."""
        p = self.predictor
        logits = tta_forward(self._network, batch, self.transforms)
        expected = (batch.shape[0], NUM_CLASSES, *self.grid.window)
        if tuple(logits.shape) != expected:
            raise CellsegError(
                f"{p.key}: the network maps windows {tuple(batch.shape[2:])} to "
                f"{tuple(logits.shape[2:])}, expected {self.grid.window} with "
                f"output_margin_voxels = {list(self.grid.margin)}; set the model module's "
                "output_margin_voxels to the voxels it loses on each side"
            )
        return logits

    @torch.no_grad()
    def logits(
        self,
        read: Callable[[Box], np.ndarray],
        boxes: Iterable[tuple[Hashable, Box]],
        carry_axis: int | None = None,
    ) -> Iterator[tuple[Hashable, torch.Tensor]]:
        """Blended logits on each box, in the order given.

        Args:
            read: EM on an image box, ``(D, H, W)`` float32 in [0, 1] (any indices: the reader
                decides what lies beyond the volume).
            boxes: ``(key, box)``, boxes in image indices; a box that starts where the previous
                one stopped along ``carry_axis``, with the same extent on the other axes, reuses
                the windows spanning their border.
            carry_axis: the axis along which consecutive boxes share windows (``None``: never).

        Yields:
            ``(key, logits)``: ``(14, *box shape)`` float32 CPU logits.
        """
        grid, device = self.grid, self.device
        carry: _Carry | None = None
        for key, box in boxes:
            lo = [int(a) for a, _ in box]
            hi = [int(b) for _, b in box]
            extended = list(hi)
            if carry_axis is not None:  # room for windows reaching past the box's stop
                extended[carry_axis] += grid.window[carry_axis]
            shape = [b - a for a, b in zip(lo, extended, strict=True)]
            sums = torch.zeros((NUM_CLASSES, *shape), device=device)
            weights = torch.zeros(shape, device=device)
            chosen = [grid.reaching(a, lo[a], hi[a]) for a in range(3)]
            if carry_axis is not None:
                others = tuple((lo[a], hi[a]) for a in range(3) if a != carry_axis)
                if carry is not None and carry.others == others and carry.stop == lo[carry_axis]:
                    kept = min(carry.sums.shape[1 + carry_axis], shape[carry_axis])
                    part = [slice(None)] * 3
                    part[carry_axis] = slice(0, kept)
                    sums[(slice(None), *part)] = _head(carry.sums, carry_axis, kept)
                    weights[tuple(part)] = _head(carry.weights[None], carry_axis, kept)[0]
                    chosen[carry_axis] = [i for i in chosen[carry_axis] if i >= carry.next_window]
            if all(chosen):
                self._add(read, chosen, lo, sums, weights, carry_axis)
            core = [slice(0, b - a) for a, b in zip(lo, hi, strict=True)]
            if carry_axis is not None:
                a = carry_axis
                starts = grid.starts[a]
                next_window = next((i for i, s in enumerate(starts) if s >= hi[a]), len(starts))
                rest = [slice(None)] * 3
                rest[a] = slice(hi[a] - lo[a], None)
                carry = _Carry(
                    others, hi[a], next_window, sums[(slice(None), *rest)], weights[tuple(rest)]
                )
            # the core is divided in place and yielded (on CPU) while the carry is a view of
            # the rest: one accumulator per box and no box-sized temporary
            core_logits = sums[(slice(None), *core)].div_(weights[tuple(core)]).cpu()
            del sums, weights
            yield key, core_logits
            del core_logits

    def _add(
        self,
        read: Callable[[Box], np.ndarray],
        chosen: list[list[int]],
        lo: list[int],
        sums: torch.Tensor,
        weights: torch.Tensor,
        carry_axis: int | None,
    ) -> None:
        """Compute the ``chosen`` windows (indices per axis) and add them to the accumulator
        whose voxel 0 is image index ``lo``."""
        grid = self.grid
        starts = [[grid.starts[a][i] for i in chosen[a]] for a in range(3)]
        em_box = [
            (s[0] - m, s[-1] + w + m)
            for s, w, m in zip(starts, grid.window, grid.margin, strict=True)
        ]
        em = torch.as_tensor(read(em_box)).to(self.device)
        # the carry axis outermost: a voxel's windows are summed in one order however the image
        # is cut into boxes (earlier boxes hold the windows of smaller carry-axis start)
        order = [0, 1, 2] if carry_axis is None else [carry_axis]
        order += [a for a in range(3) if a not in order]
        corners = []
        for combination in itertools.product(*(starts[a] for a in order)):
            corner = [0, 0, 0]
            for a, s in zip(order, combination, strict=True):
                corner[a] = s
            corners.append(corner)
        size = [w + 2 * m for w, m in zip(grid.window, grid.margin, strict=True)]
        for b in range(0, len(corners), self.batch):
            batch_corners = corners[b : b + self.batch]
            batch = torch.stack(
                [
                    em[
                        tuple(
                            slice(c - e[0] - m, c - e[0] - m + n)
                            for c, e, m, n in zip(corner, em_box, grid.margin, size, strict=True)
                        )
                    ]
                    for corner in batch_corners
                ]
            )[:, None]
            logits = self._forward(batch) * self.importance
            self.windows_run += len(batch_corners)
            for corner, window_logits in zip(batch_corners, logits, strict=True):
                # the window ∩ the accumulator
                target, source = [], []
                for c, w, a, n in zip(corner, grid.window, lo, weights.shape, strict=True):
                    start, stop = max(c, a), min(c + w, a + n)
                    if start >= stop:
                        break
                    target.append(slice(start - a, stop - a))
                    source.append(slice(start - c, stop - c))
                else:
                    sums[(slice(None), *target)] += window_logits[(slice(None), *source)]
                    weights[tuple(target)] += self.importance[tuple(source)]


def _head(values: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """The first ``n`` voxels of ``(C, D, H, W)`` ``values`` along spatial ``axis``."""
    return values.narrow(1 + axis, 0, n)
