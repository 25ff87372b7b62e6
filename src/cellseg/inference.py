"""Applying a trained model to EM: the one inference path of evaluation, prediction and figures.

* **The model.** :class:`Predictor` is a network plus what reproduces training's input and
  output (the patch, the resolution, the EM range, the logit shift of the loss prior);
  :meth:`Predictor.from_checkpoint` rebuilds it from a ``best.pt`` and
  :meth:`Predictor.probabilities` turns logits into the adjusted probabilities of
  :mod:`cellseg.losses` (``train``: ``sigmoid(z + logit_shift)``, ``none``: ``sigmoid(z)``).
* **The window grid.** Windows are the training patch (2D models: depth 1, one z slice each),
  placed as MONAI's ``sliding_window_inference`` places them over an image
  (:func:`window_starts`: stride ``int(window × (1 - overlap))``, the last window moved back to
  end at the edge). A model may predict less than it reads (valid convolutions): its module's
  ``output_margin_voxels`` (per spatial axis, voxels lost on *each* side; absent: zeros) makes
  each window read ``window`` voxels and predict ``window - 2 margin``; the *output* windows then
  tile the image with the configured overlap and the EM is read ``margin`` voxels further out.
* **Blending.** Each output voxel is ``sum_w g_w z_w / sum_w g_w`` over the windows covering it,
  ``g`` MONAI's importance map of the output window (``gaussian``, sigma 0.125 of the window, or
  ``constant``). :class:`Blender` computes the windows of a grid that reach into a box of the
  image and accumulates only that box; consecutive boxes along its *carry axis* share the
  windows spanning their border (computed once, their overhang carried to the next box), so a
  box-by-box run equals a whole-image run. Windows are summed in one order whatever the boxes
  (carry-axis start first, then the other axes'), so the same voxel gets the same value however
  the image was cut into boxes, to the bit when the network's output for a window does not depend
  on the other windows of its batch.
* **Out of the volume.** Windows need context beyond the region predicted: half an output window
  per axis (:func:`context_voxels`, at least enough for one window), plus the output margin; EM
  beyond the volume repeats its edge.
* **One grid per volume.** :class:`VolumeGrid` is the model's voxel grid over the whole EM
  volume (voxel ``i`` centred at the volume's lower corner ``+ (i + 1/2) r``) and the one window
  grid over it plus context; evaluation, prediction and figures all compute the windows of that
  grid that reach the voxels they want (a crop, a slab, a block, one slice), so a voxel gets the
  same windows and the same value whatever was requested and however it was cut: slab and block
  sizes change memory and time only.
* **Crops** (evaluation, figures): :class:`PredictionGrid` is the part of the volume grid that
  covers a crop; :func:`predict_crop` streams it in z slabs (memory bounded by one slab; windows
  spanning two slabs are computed once and carried over).
* **Test-time augmentation** (:mod:`cellseg.tta`): each window's logits are the mean over the
  mode's flips and rotations, inside :class:`Blender`, so it applies to every caller alike.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellseg.classes import CLASSES, NUM_CLASSES
from cellseg.data.identity import DataIdentity
from cellseg.data.multiscale import ScaleLevel, StoredArray
from cellseg.data.patches import PatchGrid, normalize_em, sample_linear
from cellseg.data.store import CropGeometry
from cellseg.data.voxel_checks import check_em_array
from cellseg.errors import CellsegError
from cellseg.losses import adjusted_probabilities
from cellseg.tta import tta_forward, tta_transforms

__all__ = [
    "BLEND_MODES",
    "Blender",
    "EMReader",
    "PredictionGrid",
    "Predictor",
    "VolumeGrid",
    "WindowGrid",
    "context_voxels",
    "importance_map",
    "predict_crop",
    "predict_slab",
    "read_em_slab",
    "resolve_device",
    "sliding_window_logits",
    "window_starts",
]

BLEND_MODES: tuple[str, ...] = ("gaussian", "constant")
SIGMA_SCALE = 0.125  # MONAI's default Gaussian width, as its sliding_window_inference uses it

Box = Sequence[tuple[int, int]]
"""``[(start, stop)]`` per axis ``(z, y, x)``, voxels (half-open)."""


# ------------------------------------------------------------------------------ the model


@dataclass
class Predictor:
    """A network plus everything inference needs to reproduce training's input and output.

    Attributes:
        network: maps ``(B, 1, *S)`` images in [0, 1] to ``(B, 14, *S')`` logits, ``S' = S -
            2 margin`` (:attr:`output_margin`; ``S' = S`` for same-padded networks).
        model, dim: the registry name and ``"2d"`` / ``"3d"``.
        patch_shape: the training patch, ``(H, W)`` or ``(D, H, W)`` voxels; the window read.
        resolution_nm: the model's isotropic voxel size, nm.
        em_range: raw EM values clipped to before scaling to [0, 1].
        logit_shift: ``(14,)`` added to the logits in mode ``train`` (from the checkpoint).
        default_mode: the adjustment the model was trained to be read with.
        amp: bf16 autocast on CUDA.
        data_identity: the crops and priors it was trained on (``None``: not recorded).
    """

    network: torch.nn.Module
    model: str
    dim: str
    patch_shape: tuple[int, ...]
    resolution_nm: float
    em_range: tuple[float, float] = (10.6, 194.1)
    logit_shift: torch.Tensor | None = None
    default_mode: str = "train"
    amp: bool = False
    data_identity: DataIdentity | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.model}_{self.dim}"

    @property
    def window(self) -> tuple[int, int, int]:
        """The window read, ``(wz, wy, wx)`` voxels (``wz = 1`` for a 2D model).

        Raises:
            CellsegError: the patch does not match the model's dim.
        """
        patch = tuple(int(n) for n in self.patch_shape)
        if len(patch) != (3 if self.dim == "3d" else 2):
            raise CellsegError(f"{self.key}: patch shape {patch} does not match dim {self.dim}")
        return patch if self.dim == "3d" else (1, *patch)  # type: ignore[return-value]

    @property
    def output_margin(self) -> tuple[int, int, int]:
        """Voxels the network loses on each side, ``(mz, my, mx)``: its module's
        ``output_margin_voxels`` (one per spatial axis; absent: zeros), ``mz = 0`` for 2D.

        Raises:
            CellsegError: the attribute has the wrong length or leaves no output voxel.
        """
        from cellseg.models.margin import output_margin

        spatial = 3 if self.dim == "3d" else 2
        try:  # the module's attribute, looked up through DDP / torch.compile wrappers
            margin = output_margin(self.network, spatial)
        except ValueError as error:
            raise CellsegError(f"{self.key}: {error} (need {spatial} values)") from None
        window = self.window[-spatial:]
        if len(margin) != spatial or any(
            m < 0 or w - 2 * m < 1 for m, w in zip(margin, window, strict=False)
        ):
            raise CellsegError(
                f"{self.key}: output_margin_voxels = {list(margin)} does not fit the window "
                f"{list(window)} (need {spatial} values, each >= 0 and below half the window)"
            )
        return margin if spatial == 3 else (0, *margin)  # type: ignore[return-value]

    @property
    def output_window(self) -> tuple[int, int, int]:
        """The window predicted, ``window - 2 output_margin`` voxels per axis."""
        return tuple(w - 2 * m for w, m in zip(self.window, self.output_margin, strict=True))  # type: ignore[return-value]

    @classmethod
    def from_checkpoint(cls, path: Path | str, device: torch.device | str = "cpu") -> Predictor:
        """Rebuild the network of a ``best.pt`` written by the trainer and load its weights.

        Raises:
            CellsegError: the file is missing, unreadable or not a cellseg model checkpoint.
        """
        from cellseg.models import build_model
        from cellseg.training.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path)
        missing = {"model", "settings", "architecture", "logit_shift"} - set(checkpoint)
        if missing:
            raise CellsegError(
                f"{path}: not a cellseg model checkpoint (missing {', '.join(sorted(missing))}); "
                "evaluate the best.pt the train rule writes"
            )
        s = checkpoint["settings"]
        classes = list(checkpoint.get("classes", CLASSES))
        if classes != list(CLASSES):
            raise CellsegError(f"{path}: trained on classes {classes}, expected {list(CLASSES)}")
        network = build_model(
            s["model"], s["dim"], preset=s["preset"], **checkpoint["architecture"]
        )
        network.load_state_dict(checkpoint["model"])
        network.to(device).eval()
        return cls(
            network=network,
            model=s["model"],
            dim=s["dim"],
            patch_shape=tuple(int(n) for n in s["patch_shape"]),
            resolution_nm=float(s["resolution_nm"]),
            em_range=(float(s["em_range"][0]), float(s["em_range"][1])),
            logit_shift=torch.as_tensor(checkpoint["logit_shift"], dtype=torch.float32),
            default_mode=str(s.get("loss", {}).get("inference_logit_adjustment", "train")),
            amp=bool(s.get("amp", False)) and torch.device(device).type == "cuda",
            data_identity=(
                DataIdentity.from_dict(checkpoint["data_identity"])
                if checkpoint.get("data_identity") is not None
                else None
            ),
            extra={"summary": checkpoint.get("summary", {}), "epoch": checkpoint.get("epoch")},
        )

    def modes(self, settings: Any) -> tuple[str, ...]:
        """The adjustment modes to score: the settings' ``adjustment_modes``, else the model's
        own."""
        return tuple(settings.adjustment_modes) or (self.default_mode,)

    def probabilities(
        self, logits: torch.Tensor, mode: str | None = None, in_place: bool = False
    ) -> torch.Tensor:
        """``(14, *S)`` logits → adjusted probabilities in mode ``mode`` (default: the model's
        own), see :func:`cellseg.losses.adjusted_probabilities`; ``in_place`` overwrites the
        logits (no block-sized copy)."""
        mode = mode or self.default_mode
        return adjusted_probabilities(logits[None], self.logit_shift, mode, in_place=in_place)[0]


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CellsegError(f"device = {name!r} but no CUDA device is available")
    return device


# ------------------------------------------------------------------------------ the window grid


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
        predictor: Predictor,
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


@torch.no_grad()
def sliding_window_logits(
    network: torch.nn.Module,
    image: torch.Tensor,
    roi_size: Sequence[int],
    settings: Any,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> torch.Tensor:
    """Sliding-window logits of a batch of images in memory (what MONAI's
    ``sliding_window_inference`` computes, through :class:`Blender`).

    Args:
        network: ``(B, 1, *roi_size) -> (B, C, *roi_size - 2 margin)`` (``output_margin_voxels``).
        image: ``(B, 1, *S)``, 2D or 3D, every ``S_i - 2 margin_i >= roi_size_i - 2 margin_i``.
        roi_size: the window read, voxels (the training patch).
        settings: anything with ``overlap``, ``blend_mode`` and ``sw_batch_size``.
        device: where the network runs.
        amp: bf16 autocast (CUDA).

    Returns:
        ``(B, C, *(S - 2 margin))`` float32 CPU logits.
    """
    is_3d = len(roi_size) == 3
    predictor = Predictor(
        network, "sliding_window", "3d" if is_3d else "2d", tuple(roi_size), 1.0, amp=amp
    )
    margin = predictor.output_margin
    # a 2D batch is a stack of z slices (windows of depth 1); a 3D batch, one volume at a time
    volumes = [image[b, 0] for b in range(image.shape[0])] if is_3d else [image[:, 0]]
    outputs = []
    for volume in volumes:
        shape = [n - 2 * m for n, m in zip(volume.shape, margin, strict=True)]
        grid = WindowGrid.over(shape, predictor.output_window, margin, settings.overlap)
        blender = Blender(predictor, grid, settings.blend_mode, settings.sw_batch_size, device)
        values = volume.float()

        def read(box: Box, values: torch.Tensor = values) -> torch.Tensor:
            return values[tuple(slice(a + m, b + m) for (a, b), m in zip(box, margin, strict=True))]

        _, logits = next(blender.logits(read, [(None, [(0, n) for n in shape])]))
        outputs.append(logits)
    if is_3d:
        return torch.stack(outputs)
    return outputs[0].transpose(0, 1)


# ------------------------------------------------------------------------------ reading EM


class EMReader:
    """Normalised EM on boxes of a regular grid of ``resolution_nm`` voxels; indices beyond the
    EM level repeat its edge.

    Grid index ``g`` is centred at ``origin_nm + g r``; a box is given in *image* indices,
    ``g = image index + shift``. When the EM level's grid is the prediction grid (same voxel
    size, voxel centres on each other) and ``direct``, the box is read without interpolation;
    otherwise it is interpolated trilinearly (:func:`~cellseg.data.patches.sample_linear`).

    Args:
        array, level: the EM level read.
        origin_nm: ``(z, y, x)`` centre of grid voxel 0, nm.
        resolution_nm: ``r``, nm.
        shift: grid index of image index 0, per axis.
        em_range: raw EM values clipped to before scaling to [0, 1]; floating-point EM mostly
            outside it is refused (:func:`~cellseg.data.voxel_checks.check_em_array`).
        direct: read aligned levels without interpolation (evaluation interpolates always, as
            its scores were computed).
    """

    def __init__(
        self,
        array: StoredArray,
        level: ScaleLevel,
        origin_nm: Sequence[float],
        resolution_nm: float,
        shift: Sequence[int],
        em_range: tuple[float, float],
        direct: bool = True,
    ) -> None:
        if isinstance(array, StoredArray):  # float EM off the scale of em_range: one line
            check_em_array(array, em_range)
        self.array, self.level = array, level
        self.origin_nm = np.asarray(origin_nm, dtype=float)
        self.r = float(resolution_nm)
        self.shift = tuple(int(s) for s in shift)
        self.em_range = em_range
        offset = (self.origin_nm - np.asarray(level.translation_nm)) / self.r
        self.offset: tuple[int, ...] | None = None
        if (
            direct
            and np.allclose(level.voxel_size_nm, self.r, rtol=0, atol=1e-6)
            and np.allclose(offset, np.round(offset), atol=1e-6)
        ):
            self.offset = tuple(int(np.round(o)) for o in offset)

    def read(self, box: Box) -> np.ndarray:
        """``(D, H, W)`` float32 EM in [0, 1] on image indices ``[a, b)`` per axis."""
        grid = [np.arange(a, b) + s for (a, b), s in zip(box, self.shift, strict=True)]
        if self.offset is not None:
            index = [
                np.clip(g + o, 0, n - 1)
                for g, o, n in zip(grid, self.offset, self.level.shape, strict=True)
            ]
            lo = [int(i.min()) for i in index]
            hi = [int(i.max()) + 1 for i in index]
            raw = self.array[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
            raw = raw[np.ix_(*(i - a for i, a in zip(index, lo, strict=True)))]
        else:
            z, y, x = (o + g * self.r for o, g in zip(self.origin_nm, grid, strict=True))
            yy, xx = np.meshgrid(y, x, indexing="ij")
            raw = sample_linear(self.array, self.level, PatchGrid(z, np.stack([yy, xx], -1)))
        return normalize_em(raw, self.em_range)


# ------------------------------------------------------------------------------ the volume's grid


@dataclass(frozen=True)
class VolumeGrid:
    """The model's voxel grid over a whole EM volume and the one window grid anchored to it.

    Coordinates: *grid* indices over the volume (voxel ``i`` centred at ``origin_nm + i r``);
    *image* indices over the volume plus ``context`` (``image = grid + context``), the array the
    windows slide over (EM beyond the volume repeats its edge).

    Attributes:
        origin_nm: ``(z, y, x)`` centre of grid voxel 0, nm (the volume's lower corner + r/2).
        shape: grid voxels over the volume.
        resolution_nm: ``r``, the model's voxel size, nm.
        context: image voxels before grid voxel 0, per axis (half an output window, at least
            enough for one window; 0 along z for a 2D model).
        windows: the output windows over the image and the input margin each reads.
    """

    origin_nm: tuple[float, float, float]
    shape: tuple[int, int, int]
    resolution_nm: float
    context: tuple[int, int, int]
    windows: WindowGrid

    @classmethod
    def over(
        cls, bounds_nm: tuple[Sequence[float], Sequence[float]], predictor: Predictor,
        overlap: float,
    ) -> VolumeGrid:  # fmt: skip
        """The grid of ``predictor`` over a volume spanning ``bounds_nm`` (``(start, stop)``,
        nm), its windows placed with ``overlap``."""
        r = float(predictor.resolution_nm)
        start, stop = bounds_nm
        shape = tuple(
            max(1, math.ceil((float(b) - float(a)) / r - 1e-6))
            for a, b in zip(start, stop, strict=True)
        )
        output = predictor.output_window
        context = tuple(
            0 if w == 1 else context_voxels(w, n) for w, n in zip(output, shape, strict=True)
        )
        image = [n + 2 * c for n, c in zip(shape, context, strict=True)]
        windows = WindowGrid.over(image, output, predictor.output_margin, overlap)
        origin = tuple(float(a) + r / 2 for a in start)
        return cls(origin, shape, r, context, windows)  # type: ignore[arg-type]

    def region(
        self, bounds_nm: tuple[Sequence[float], Sequence[float]]
    ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """``(lo, hi)``: the grid voxels ``[lo, hi)`` that overlap the box ``bounds_nm``
        (``(start, stop)``, nm), clipped to the volume (empty along an axis it misses)."""
        r = self.resolution_nm
        corner = [o - r / 2 for o in self.origin_nm]
        start, stop = bounds_nm
        lo = tuple(
            max(0, math.floor((float(a) - c) / r + 1e-6))
            for a, c in zip(start, corner, strict=True)
        )
        hi = tuple(
            min(n, math.ceil((float(b) - c) / r - 1e-6))
            for b, c, n in zip(stop, corner, self.shape, strict=True)
        )
        return lo, hi  # type: ignore[return-value]

    def image_box(self, lo: Sequence[int], hi: Sequence[int]) -> list[tuple[int, int]]:
        """Grid voxels ``[lo, hi)`` in image indices."""
        return [(a + c, b + c) for a, b, c in zip(lo, hi, self.context, strict=True)]

    def reader(
        self, array: StoredArray, level: ScaleLevel, em_range: tuple[float, float]
    ) -> EMReader:
        """EM on image indices (read directly when the level is the grid, else interpolated)."""
        shift = tuple(-c for c in self.context)
        return EMReader(array, level, self.origin_nm, self.resolution_nm, shift, em_range)

    @property
    def carry_axis(self) -> int:
        """The axis along which consecutive boxes share windows: z for a 3D model, x for a 2D
        one (whose windows never span a z border)."""
        return 0 if self.windows.window[0] > 1 else 2


# ------------------------------------------------------------------------------ crops


@dataclass(frozen=True)
class PredictionGrid:
    """The part of a volume's grid (:class:`VolumeGrid`) a crop is predicted on: voxel ``i``
    centred at ``origin + i * r`` (nm).

    Attributes:
        origin_nm: ``(z, y, x)`` centre of voxel ``(0, 0, 0)``, nm.
        shape: ``(D, H, W)`` voxels.
        resolution_nm: ``r``, nm.
        start: the volume-grid index of voxel ``(0, 0, 0)``.
    """

    origin_nm: np.ndarray
    shape: tuple[int, int, int]
    resolution_nm: float
    start: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def for_crop(cls, geometry: CropGeometry, resolution_nm: float) -> PredictionGrid:
        """The voxels of the EM volume's grid at ``r`` nm that overlap the crop's box (union of
        its classes' finest levels); crops land on whole EM voxels, so with EM at ``r`` this is
        the crop's own box on the EM grid."""
        r = float(resolution_nm)
        start, stop = geometry.em.bounds_nm
        corner = np.asarray(start, dtype=float)
        shape = [max(1, math.ceil((b - a) / r - 1e-6)) for a, b in zip(start, stop, strict=True)]
        crop_start, crop_stop = geometry.bounds_nm
        lo = [
            min(n - 1, max(0, math.floor((a - c) / r + 1e-6)))
            for a, c, n in zip(crop_start, corner, shape, strict=True)
        ]
        hi = [
            max(low + 1, min(n, math.ceil((b - c) / r - 1e-6)))
            for b, c, n, low in zip(crop_stop, corner, shape, lo, strict=True)
        ]
        return cls(
            corner + r / 2 + np.asarray(lo) * r,
            tuple(b - a for a, b in zip(lo, hi, strict=True)),  # type: ignore[arg-type]
            r,
            tuple(lo),  # type: ignore[arg-type]
        )

    def nearest_index(self, axis: int, centres_nm: np.ndarray) -> np.ndarray:
        """Index of the prediction voxel nearest each world coordinate along ``axis`` (clipped)."""
        index = np.floor((centres_nm - self.origin_nm[axis]) / self.resolution_nm + 0.5)
        return np.clip(index, 0, self.shape[axis] - 1).astype(np.int64)


def read_em_slab(
    em_array: StoredArray,
    em_level: ScaleLevel,
    grid: PredictionGrid,
    z_range: tuple[int, int],
    margin: tuple[int, int, int],
    em_range: tuple[float, float],
) -> np.ndarray:
    """EM on prediction-grid slices ``z_range`` with ``margin = (mz, my, mx)`` voxels around them.

    Returns:
        ``(z1 - z0 + 2 mz, H + 2 my, W + 2 mx)`` float32 in [0, 1] (clipped to ``em_range``).
    """
    reader = EMReader(
        em_array, em_level, grid.origin_nm, grid.resolution_nm, (0, 0, 0), em_range, direct=False
    )
    (z0, z1), (_, height, width) = z_range, grid.shape
    return reader.read(
        [
            (z0 - margin[0], z1 + margin[0]),
            (-margin[1], height + margin[1]),
            (-margin[2], width + margin[2]),
        ]
    )


def _open_em(geometry: CropGeometry, resolution_nm: float) -> tuple[StoredArray, ScaleLevel]:
    level = geometry.em.level_for(resolution_nm)
    return geometry.em.open_level(level), level


def _crop_slabs(
    predictor: Predictor,
    geometry: CropGeometry,
    slabs: Sequence[tuple[int, int]],
    settings: Any,
    device: torch.device | str,
    em: tuple[StoredArray, ScaleLevel] | None = None,
) -> Iterator[tuple[tuple[int, int], torch.Tensor, EMReader, list[tuple[int, int]]]]:
    """Logits of prediction-grid slices ``slabs`` (consecutive ones share their windows): the
    windows of the volume's grid that reach each slab, blended on it.

    Yields:
        ``((z0, z1), logits, reader, box)``: ``(14, z1 - z0, H, W)`` float32 CPU logits, the EM
        reader and the slab's image box.
    """
    volume = VolumeGrid.over(geometry.em.bounds_nm, predictor, settings.overlap)
    grid = PredictionGrid.for_crop(geometry, predictor.resolution_nm)
    reader = volume.reader(*(em or _open_em(geometry, predictor.resolution_nm)), predictor.em_range)
    blender = Blender(
        predictor, volume.windows, settings.blend_mode, settings.sw_batch_size, device,
        getattr(settings, "tta", "none"),
    )  # fmt: skip
    lo, hi = grid.start, [a + n for a, n in zip(grid.start, grid.shape, strict=True)]
    boxes = {
        (z0, z1): volume.image_box((lo[0] + z0, lo[1], lo[2]), (lo[0] + z1, hi[1], hi[2]))
        for z0, z1 in slabs
    }
    # z slabs of a 3D model share the windows spanning their borders; a 2D model's never do
    carry = 0 if volume.carry_axis == 0 else None
    for key, logits in blender.logits(reader.read, boxes.items(), carry):
        yield key, logits, reader, boxes[key]  # type: ignore[misc]


def predict_slab(
    predictor: Predictor,
    geometry: CropGeometry,
    z_range: tuple[int, int],
    settings: Any,
    device: torch.device | str = "cpu",
    em: tuple[StoredArray, ScaleLevel] | None = None,
) -> tuple[np.ndarray, torch.Tensor]:
    """EM and logits of prediction-grid slices ``[z0, z1)`` of a crop (the volume's windows).

    Args:
        predictor: the model.
        geometry: the crop; the grid is :meth:`PredictionGrid.for_crop` at the model's resolution.
        z_range: ``(z0, z1)`` prediction-grid slices.
        settings: windows and blending (``overlap``, ``blend_mode``, ``sw_batch_size``, and
            ``tta`` when it has one).
        device: where the network runs.
        em: the open EM level (opened here when ``None``).

    Returns:
        ``(em, logits)``: ``(z1 - z0, H, W)`` float32 EM in [0, 1] and ``(14, z1 - z0, H, W)``
        float32 CPU logits.
    """
    slab = (int(z_range[0]), int(z_range[1]))
    (_, logits, reader, box), *_ = _crop_slabs(predictor, geometry, [slab], settings, device, em)
    return reader.read(box), logits


def predict_crop(
    predictor: Predictor,
    geometry: CropGeometry,
    settings: Any,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Logits of a whole crop, slab by slab along z (memory: one slab plus its context). The
    windows are the volume's (:class:`VolumeGrid`), so the slab size changes memory and time,
    never a value.

    Args:
        settings: ``slab_voxels`` plus what :func:`predict_slab` needs.

    Yields:
        ``(z0, z1, logits)``: prediction-grid slices ``[z0, z1)`` and their ``(14, z1 - z0, H, W)``
        float32 CPU logits (see :func:`predict_slab`).
    """
    depth = PredictionGrid.for_crop(geometry, predictor.resolution_nm).shape[0]
    step = settings.slab_voxels
    slabs = [(z0, min(depth, z0 + step)) for z0 in range(0, depth, step)]
    for (z0, z1), logits, _, _ in _crop_slabs(predictor, geometry, slabs, settings, device):
        yield z0, z1, logits
