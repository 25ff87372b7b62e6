"""Decoder pieces shared by the 3D Swin-UNet and ViT-V-Net builders (MONAI blocks inside).

One step of a UNet-style decoder: upsample by a per-axis factor (trilinear, no weights),
concatenate the encoder's skip if there is one, then MONAI's ``TwoConv`` (two 3x3x3
convolution -> instance norm -> ReLU units). The 2D counterpart for timm encoders is
:class:`cellseg.models.decoder.DecoderBlock`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def norm_spec(norm: str) -> tuple[str, dict[str, bool]]:
    """MONAI norm argument with affine parameters (as every cellseg network uses)."""
    return (norm, {"affine": True})


class UpConcatConv(nn.Module):
    """Upsample ``x`` by ``factor``, concatenate ``skip`` (if any), two conv-norm-ReLU units.

    Args:
        in_channels: channels of ``x``.
        skip_channels: channels of the skip (0: none).
        out_channels: channels of the output.
        factor: upsampling factor per spatial axis, e.g. ``(1, 2, 2)``.
        norm: MONAI norm name (``"instance"``, ``"batch"``).
        dropout: dropout after each convolution unit.

    Shapes: ``x (B, C_in, D, H, W)`` and ``skip (B, C_skip, D*f0, H*f1, W*f2)`` ->
    ``(B, C_out, D*f0, H*f1, W*f2)``.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        factor: Sequence[int] = (2, 2, 2),
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        from monai.networks.nets.basic_unet import TwoConv

        self.factor = tuple(float(f) for f in factor)
        self.convs = TwoConv(
            3,
            in_channels + skip_channels,
            out_channels,
            act=("relu", {"inplace": True}),
            norm=norm_spec(norm),
            bias=False,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """See the class docstring."""
        if any(f != 1.0 for f in self.factor):
            x = F.interpolate(x, scale_factor=self.factor, mode="trilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)
