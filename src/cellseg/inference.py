"""Applying a trained model to EM: the one inference path of evaluation, prediction and figures.

* **The model.** :class:`Predictor` is a network plus what reproduces training's input and
  output (the patch, the resolution, the EM range, the logit shift of the loss prior);
  :meth:`Predictor.from_checkpoint` rebuilds it from a ``best.pt`` and
  :meth:`Predictor.probabilities` turns logits into the adjusted probabilities of
  :mod:`cellseg.losses` (``train``: ``sigmoid(z + logit_shift)``, ``none``: ``sigmoid(z)``).
  The head keeps its 14 channels whatever the run trained (so every checkpoint and init loads as
  before); the channels of classes no training crop annotated (``best.pt``'s
  ``trained_classes``, :mod:`cellseg.trained_classes`) come out 0, and callers leave them out.
* **The window grid and blending** (:mod:`cellseg.blending`): windows placed as MONAI's
  ``sliding_window_inference`` places them, reading ``output_margin_voxels`` more EM for models
  with valid convolutions, their logits blended with MONAI's importance maps by
  :class:`~cellseg.blending.Blender`, which carries the windows spanning a box's border to the
  next box, so a box-by-box run equals a whole-image run.
* **Out of the volume.** Windows need context beyond the region predicted (half an output window
  per axis, :func:`~cellseg.blending.context_voxels`, plus the output margin); EM beyond the
  volume repeats its edge.
* **One grid per volume.** :class:`VolumeGrid` is the model's voxel grid over the whole EM
  volume (voxel ``i`` centred at the volume's lower corner ``+ (i + 1/2) r``) and the one window
  grid over it plus context; evaluation, prediction and figures all compute the windows of that
  grid that reach the voxels they want (a crop, a slab, a block, one slice), so a voxel gets the
  same windows and the same value whatever was requested and however it was cut: slab and block
  sizes change memory and time only.
* **Crops** (evaluation, figures): :class:`PredictionGrid` is the part of the volume grid that
  covers a crop; :func:`predict_crop` streams it in z slabs (memory bounded by one slab; windows
  spanning two slabs are computed once and carried over).
* **Test-time augmentation** (:mod:`cellseg.tta`) applies inside :class:`~cellseg.blending.Blender`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellseg.blending import (
    BLEND_MODES,
    Blender,
    Box,
    WindowGrid,
    context_voxels,
    importance_map,
    window_starts,
)
from cellseg.classes import CLASSES
from cellseg.data.identity import DataIdentity
from cellseg.data.multiscale import ScaleLevel, StoredArray
from cellseg.data.patches import PatchGrid, normalize_em, sample_linear
from cellseg.data.store import CropGeometry
from cellseg.data.voxel_checks import check_em_array
from cellseg.errors import CellsegError
from cellseg.losses import adjusted_probabilities
from cellseg.trained_classes import read_trained_classes, trained_groups
from cellseg.voxels import Resolution, Vec3, as_vec3

__all__ = [
    "BLEND_MODES",
    "Blender",
    "EMReader",
    "PredictionGrid",
    "Predictor",
    "VolumeGrid",
    "WindowGrid",
    "context_voxels",
    "crop_em",
    "importance_map",
    "predict_crop",
    "predict_slab",
    "read_em_slab",
    "resolve_device",
    "sliding_window_logits",
    "window_starts",
]


# ------------------------------------------------------------------------------ the model


@dataclass
class Predictor:
    """A network plus everything inference needs to reproduce training's input and output.

    Attributes:
        network: maps ``(B, 1, *S)`` images in [0, 1] to ``(B, 14, *S')`` logits, ``S' = S -
            2 margin`` (:attr:`output_margin`; ``S' = S`` for same-padded networks).
        model, dim: the registry name and ``"2d"`` / ``"3d"``.
        patch_shape: the training patch, ``(H, W)`` or ``(D, H, W)`` voxels; the window read.
        resolution_nm: the model's ``(z, y, x)`` voxel size, nm (one number given: isotropic).
        em_range: raw EM values clipped to before scaling to [0, 1].
        logit_shift: ``(14,)`` added to the logits in mode ``train`` (from the checkpoint).
        default_mode: the adjustment the model was trained to be read with.
        amp: bf16 autocast on CUDA.
        data_identity: the crops and priors it was trained on (``None``: not recorded).
        trained_classes: the classes some training crop annotated
            (:mod:`cellseg.trained_classes`); the others' channels are 0 in
            :meth:`probabilities`, and evaluation, prediction and figures leave them out.
        trained_groups: the groups whose labels its training crops held
            (:func:`cellseg.trained_classes.trained_groups`; none when not recorded).
    """

    network: torch.nn.Module
    model: str
    dim: str
    patch_shape: tuple[int, ...]
    resolution_nm: Vec3
    em_range: tuple[float, float] = (10.6, 194.1)
    logit_shift: torch.Tensor | None = None
    default_mode: str = "train"
    amp: bool = False
    data_identity: DataIdentity | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    trained_classes: tuple[str, ...] = CLASSES
    trained_groups: tuple[str, ...] = ()

    @property
    def untrained_channels(self) -> list[int]:
        """Channel indices of the classes not in :attr:`trained_classes`."""
        return [c for c, name in enumerate(CLASSES) if name not in self.trained_classes]

    def __post_init__(self) -> None:
        self.resolution_nm = as_vec3(self.resolution_nm)

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
            resolution_nm=as_vec3(s["resolution_nm"]),
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
            trained_classes=read_trained_classes(checkpoint, str(path)),
            trained_groups=trained_groups(checkpoint),
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
        logits (no block-sized copy). The channels of untrained classes are 0 (never a mask)."""
        mode = mode or self.default_mode
        probabilities = adjusted_probabilities(
            logits[None], self.logit_shift, mode, in_place=in_place
        )[0]
        if untrained := self.untrained_channels:
            probabilities[untrained] = 0.0
        return probabilities


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CellsegError(f"device = {name!r} but no CUDA device is available")
    return device


# ------------------------------------------------------------------------------ images in memory


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

    Grid index ``g`` is centred at ``origin_nm + g r`` (``r`` per axis); a box is given in *image* indices,
    ``g = image index + shift``. When the EM level's grid is the prediction grid (same voxel
    size, voxel centres on each other) and ``direct``, the box is read without interpolation;
    otherwise it is interpolated trilinearly (:func:`~cellseg.data.patches.sample_linear`).

    Args:
        array, level: the EM level read.
        origin_nm: ``(z, y, x)`` centre of grid voxel 0, nm.
        resolution_nm: ``r``, nm: one number or ``(z, y, x)``.
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
        resolution_nm: Resolution,
        shift: Sequence[int],
        em_range: tuple[float, float],
        direct: bool = True,
    ) -> None:
        if isinstance(array, StoredArray):  # float EM off the scale of em_range: one line
            check_em_array(array, em_range)
        self.array, self.level = array, level
        self.origin_nm = np.asarray(origin_nm, dtype=float)
        self.r = np.asarray(as_vec3(resolution_nm))
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
            z, y, x = (o + g * r for o, g, r in zip(self.origin_nm, grid, self.r, strict=True))
            yy, xx = np.meshgrid(y, x, indexing="ij")
            raw = sample_linear(self.array, self.level, PatchGrid(z, np.stack([yy, xx], -1)))
        return normalize_em(raw, self.em_range)


# ------------------------------------------------------------------------------ the volume's grid


@dataclass(frozen=True)
class VolumeGrid:
    """The model's voxel grid over a whole EM volume and the one window grid anchored to it.

    Coordinates: *grid* indices over the volume (voxel ``i`` centred at ``origin_nm + i r``, ``r``
    per axis);
    *image* indices over the volume plus ``context`` (``image = grid + context``), the array the
    windows slide over (EM beyond the volume repeats its edge).

    Attributes:
        origin_nm: ``(z, y, x)`` centre of grid voxel 0, nm (the volume's lower corner + r/2).
        shape: grid voxels over the volume.
        resolution_nm: ``r``, the model's ``(z, y, x)`` voxel size, nm.
        context: image voxels before grid voxel 0, per axis (half an output window, at least
            enough for one window; 0 along z for a 2D model).
        windows: the output windows over the image and the input margin each reads.
    """

    origin_nm: tuple[float, float, float]
    shape: tuple[int, int, int]
    resolution_nm: Vec3
    context: tuple[int, int, int]
    windows: WindowGrid

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolution_nm", as_vec3(self.resolution_nm))

    @classmethod
    def over(
        cls, bounds_nm: tuple[Sequence[float], Sequence[float]], predictor: Predictor,
        overlap: float,
    ) -> VolumeGrid:  # fmt: skip
        """The grid of ``predictor`` over a volume spanning ``bounds_nm`` (``(start, stop)``,
        nm), its windows placed with ``overlap``."""
        r = as_vec3(predictor.resolution_nm)
        start, stop = bounds_nm
        shape = tuple(
            max(1, math.ceil((float(b) - float(a)) / r_i - 1e-6))
            for a, b, r_i in zip(start, stop, r, strict=True)
        )
        output = predictor.output_window
        context = tuple(
            0 if w == 1 else context_voxels(w, n) for w, n in zip(output, shape, strict=True)
        )
        image = [n + 2 * c for n, c in zip(shape, context, strict=True)]
        windows = WindowGrid.over(image, output, predictor.output_margin, overlap)
        origin = tuple(float(a) + r_i / 2 for a, r_i in zip(start, r, strict=True))
        return cls(origin, shape, r, context, windows)  # type: ignore[arg-type]

    def region(
        self, bounds_nm: tuple[Sequence[float], Sequence[float]]
    ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """``(lo, hi)``: the grid voxels ``[lo, hi)`` that overlap the box ``bounds_nm``
        (``(start, stop)``, nm), clipped to the volume (empty along an axis it misses)."""
        r = self.resolution_nm
        corner = [o - r_i / 2 for o, r_i in zip(self.origin_nm, r, strict=True)]
        start, stop = bounds_nm
        lo = tuple(
            max(0, math.floor((float(a) - c) / r_i + 1e-6))
            for a, c, r_i in zip(start, corner, r, strict=True)
        )
        hi = tuple(
            min(n, math.ceil((float(b) - c) / r_i - 1e-6))
            for b, c, n, r_i in zip(stop, corner, self.shape, r, strict=True)
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
    centred at ``origin + i * r`` (nm, ``r`` per axis).

    Attributes:
        origin_nm: ``(z, y, x)`` centre of voxel ``(0, 0, 0)``, nm.
        shape: ``(D, H, W)`` voxels.
        resolution_nm: ``r``, ``(z, y, x)`` nm.
        start: the volume-grid index of voxel ``(0, 0, 0)``.
    """

    origin_nm: np.ndarray
    shape: tuple[int, int, int]
    resolution_nm: Vec3
    start: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolution_nm", as_vec3(self.resolution_nm))

    @classmethod
    def for_crop(cls, geometry: CropGeometry, resolution_nm: Resolution) -> PredictionGrid:
        """The voxels of the EM volume's grid at ``r`` nm that overlap the crop's box (union of
        its classes' finest levels); crops land on whole EM voxels, so with EM at ``r`` this is
        the crop's own box on the EM grid."""
        r = np.asarray(as_vec3(resolution_nm))
        start, stop = geometry.em.bounds_nm
        corner = np.asarray(start, dtype=float)
        shape = [
            max(1, math.ceil((b - a) / r_i - 1e-6))
            for a, b, r_i in zip(start, stop, r, strict=True)
        ]
        crop_start, crop_stop = geometry.bounds_nm
        lo = [
            min(n - 1, max(0, math.floor((a - c) / r_i + 1e-6)))
            for a, c, n, r_i in zip(crop_start, corner, shape, r, strict=True)
        ]
        hi = [
            max(low + 1, min(n, math.ceil((b - c) / r_i - 1e-6)))
            for b, c, n, low, r_i in zip(crop_stop, corner, shape, lo, r, strict=True)
        ]
        return cls(
            corner + r / 2 + np.asarray(lo) * r,
            tuple(b - a for a, b in zip(lo, hi, strict=True)),  # type: ignore[arg-type]
            as_vec3(r),
            tuple(lo),  # type: ignore[arg-type]
        )

    def nearest_index(self, axis: int, centres_nm: np.ndarray) -> np.ndarray:
        """Index of the prediction voxel nearest each world coordinate along ``axis`` (clipped)."""
        index = np.floor((centres_nm - self.origin_nm[axis]) / self.resolution_nm[axis] + 0.5)
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


def _open_em(geometry: CropGeometry, resolution_nm: Resolution) -> tuple[StoredArray, ScaleLevel]:
    level = geometry.em.level_for(resolution_nm)
    return geometry.em.open_level(level), level


def _crop_reader(
    predictor: Predictor,
    geometry: CropGeometry,
    overlap: float,
    em: tuple[StoredArray, ScaleLevel] | None = None,
) -> tuple[VolumeGrid, EMReader, Callable[[tuple[int, int]], list[tuple[int, int]]]]:
    """The volume's grid over a crop's EM, its EM reader and the image box of prediction-grid
    slices ``(z0, z1)`` (all of the crop's y and x)."""
    volume = VolumeGrid.over(geometry.em.bounds_nm, predictor, overlap)
    grid = PredictionGrid.for_crop(geometry, predictor.resolution_nm)
    reader = volume.reader(*(em or _open_em(geometry, predictor.resolution_nm)), predictor.em_range)
    lo, hi = grid.start, [a + n for a, n in zip(grid.start, grid.shape, strict=True)]

    def box_of(slab: tuple[int, int]) -> list[tuple[int, int]]:
        z0, z1 = slab
        return volume.image_box((lo[0] + z0, lo[1], lo[2]), (lo[0] + z1, hi[1], hi[2]))

    return volume, reader, box_of


def crop_em(
    predictor: Predictor, geometry: CropGeometry, z_range: tuple[int, int], overlap: float
) -> np.ndarray:
    """``(z1 - z0, H, W)`` float32 EM in [0, 1] of prediction-grid slices ``z_range`` as the
    network reads it (:func:`predict_slab`'s EM), without predicting."""
    _, reader, box_of = _crop_reader(predictor, geometry, overlap)
    return reader.read(box_of((int(z_range[0]), int(z_range[1]))))


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
    volume, reader, box_of = _crop_reader(predictor, geometry, settings.overlap, em)
    blender = Blender(
        predictor, volume.windows, settings.blend_mode, settings.sw_batch_size, device,
        getattr(settings, "tta", "none"),
    )  # fmt: skip
    boxes = {slab: box_of(slab) for slab in slabs}
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
