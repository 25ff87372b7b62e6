"""Test-time augmentation: each window is predicted under a few mirror / rotation transforms and
the logits, mapped back, are averaged (``inference.tta``).

* ``none``: one forward pass.
* ``mirror``: every combination of flips along the axes the model sees (nnU-Net's default
  mirroring): a 2D model (windows of one z slice) y and x, 4 passes; a 3D model z, y and x,
  8 passes.
* ``mirror_rot90``: those flips and the 90° rotations in the image (y–x) plane: a 2D model the
  8 symmetries of the square, a 3D model those 8 times the z flip, 16 passes. Needs a window
  (and output margin) square in y–x.

Why logits, not probabilities: the window blending (:class:`cellseg.inference.Blender`) averages
logits, so a TTA window is one more average of the same kind and the blending is unchanged; the
logit adjustment (``train``: ``z + logit_shift``) commutes with the mean, so one pass serves every
adjustment mode; nnU-Net v2 averages its mirrored predictions before the softmax in the same way.
The transforms are fixed, applied in one order (identity first), so a voxel's value does not
depend on how the volume was cut into windows, slabs or blocks.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import torch

from cellseg.errors import CellsegError

__all__ = ["TTA", "TTA_MODES", "Transform", "tta_forward", "tta_transforms"]


class TTA(StrEnum):
    """Test-time augmentation modes (``inference.tta``)."""

    NONE = "none"
    MIRROR = "mirror"
    MIRROR_ROT90 = "mirror_rot90"

    @classmethod
    def parse(cls, value: object, source: str = "inference.tta") -> TTA:
        """A mode from its name (``None``, ``False`` and ``off``: ``none``, as YAML reads an
        unquoted ``off``).

        Raises:
            CellsegError: an unknown name (one line listing the modes).
        """
        if value is None or value is False or value == "off":
            return cls.NONE
        try:
            return cls(str(value))
        except ValueError:
            raise CellsegError(
                f"{source} = {value!r}: use one of {', '.join(m.value for m in cls)}"
            ) from None


TTA_MODES: tuple[str, ...] = tuple(m.value for m in TTA)


@dataclass(frozen=True)
class Transform:
    """Flip ``flips`` (spatial axes of ``(z, y, x)``: 0, 1, 2), then rotate ``k`` × 90° in the
    y–x plane (``torch.rot90`` from y towards x)."""

    flips: tuple[int, ...] = ()
    k: int = 0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, c, D, H, W)`` → the transformed tensor (same shape when ``H == W`` or ``k``
        even)."""
        if self.flips:
            x = torch.flip(x, [2 + a for a in self.flips])
        return torch.rot90(x, self.k, dims=(3, 4)) if self.k % 4 else x

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`apply` on an output ``(n, c, D, H, W)``."""
        if self.k % 4:
            y = torch.rot90(y, -self.k, dims=(3, 4))
        return torch.flip(y, [2 + a for a in self.flips]) if self.flips else y


def tta_transforms(
    mode: TTA | str,
    dim: str,
    window: Sequence[int] = (1, 1, 1),
    margin: Sequence[int] = (0, 0, 0),
) -> tuple[Transform, ...]:
    """The transforms of ``mode`` for a ``"2d"`` / ``"3d"`` model, identity first.

    Args:
        mode: a :class:`TTA` mode.
        dim: the model's dim; a 2D model is never flipped along z (it sees one slice).
        window: the window read ``(wz, wy, wx)``; rotations need ``wy == wx``.
        margin: the output margin ``(mz, my, mx)``; rotations need ``my == mx``.

    Raises:
        CellsegError: rotations asked for a window or margin not square in y–x.
    """
    mode = TTA.parse(mode)
    axes = (1, 2) if dim == "2d" else (0, 1, 2)
    if mode is TTA.NONE:
        return (Transform(),)
    flips = [c for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]
    if mode is TTA.MIRROR:
        return tuple(Transform(f) for f in flips)
    if window[1] != window[2] or margin[1] != margin[2]:
        raise CellsegError(
            f"inference.tta = mirror_rot90 needs a window square in y, x (reads "
            f"{list(window)}, output margin {list(margin)}); use mirror for this model"
        )
    # the square's symmetries are the 4 rotations of the image and of its x mirror; a 3D model
    # adds the z flip of each
    plane = [Transform((), k) for k in range(4)] + [Transform((2,), k) for k in range(4)]
    z_flips = [()] if dim == "2d" else [(), (0,)]
    return tuple(
        Transform(tuple(sorted(set(z) | set(t.flips))), t.k) for z in z_flips for t in plane
    )


def tta_forward(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    transforms: Sequence[Transform],
) -> torch.Tensor:
    """The mean over ``transforms`` of ``invert(forward(apply(batch)))``.

    Args:
        forward: ``(n, 1, *input window) -> (n, C, *output window)`` float32 logits.
        batch: ``(n, 1, D, H, W)`` windows.
        transforms: from :func:`tta_transforms` (one: a plain forward pass).

    Returns:
        ``(n, C, *output window)`` float32: the mean logits, summed in the order given.
    """
    if len(transforms) == 1 and transforms[0] == Transform():
        return forward(batch)
    total = None
    for transform in transforms:
        logits = transform.invert(forward(transform.apply(batch)))
        total = logits.clone() if total is None else total.add_(logits)
    assert total is not None
    return total.div_(len(transforms))
