"""Models whose output is smaller than their input (valid convolutions, e.g. ``cosem_3d``).

Such a model carries ``output_margin_voxels``: per spatial axis, the voxels its output loses on
*each* side of its input (absent: zeros, the output is the input's shape). Training crops the
target to the output (:func:`crop_margin`); evaluation and prediction overlap their windows by
the lost border.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def output_margin(model: nn.Module, spatial_dims: int) -> tuple[int, ...]:
    """``model.output_margin_voxels`` (looked up through DDP / ``torch.compile`` wrappers), or
    ``spatial_dims`` zeros when the model does not lose a border."""
    while not hasattr(model, "output_margin_voxels"):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return (0,) * spatial_dims
        model = inner
    margin = tuple(int(m) for m in model.output_margin_voxels)
    if len(margin) != spatial_dims or any(m < 0 for m in margin):
        raise ValueError(f"output_margin_voxels {margin} is not {spatial_dims} voxel counts >= 0")
    return margin


def crop_margin(tensor: torch.Tensor, margin: Sequence[int]) -> torch.Tensor:
    """``tensor`` ``(B, C, *S)`` without ``margin[i]`` voxels on each side of spatial axis ``i``
    (a view; ``(B, C, *(S - 2 margin))``): a target cropped to a valid-convolution output."""
    if not any(margin):
        return tensor
    spatial = tensor.shape[-len(margin) :]
    if any(2 * m >= s for m, s in zip(margin, spatial, strict=True)):
        raise ValueError(f"a margin of {tuple(margin)} leaves nothing of {tuple(spatial)}")
    box = tuple(slice(m, s - m) for m, s in zip(margin, spatial, strict=True))
    return tensor[(..., *box)]
