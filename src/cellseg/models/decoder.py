"""The one UNet-style decoder shared by every 2D timm encoder (ResNet, Swin, ViT).

The decoder is planned from the encoder's ``feature_info`` (channels and reductions): it
upsamples by 2 at each step from the coarsest reduction back to full resolution, and wherever
an encoder feature exists at the new reduction it is concatenated as a skip connection. So a
CNN (reductions 2, 4, ...) gets a classic UNet, a Swin (4, 8, 16, 32) gets skips at four
levels plus two skip-free steps, and a ViT (every feature at 16) gets a progressive-upsampling
decoder (its intermediate features, all at one reduction, are concatenated at the start).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cellseg.errors import CellsegError


def default_decoder_channels(
    channels: Sequence[int], reductions: Sequence[int], min_channels: int = 16
) -> tuple[int, ...]:
    """Decoder widths from ``feature_info``: the skip's width where a skip exists, else half.

    Args:
        channels: encoder feature channels (``feature_info.channels()``).
        reductions: their strides relative to the input (``feature_info.reduction()``).
        min_channels: the narrowest decoder stage.

    Returns:
        One width per upsampling step, ``log2(max(reductions))`` entries, coarse to fine.
    """
    by_reduction = dict(zip(reductions, channels, strict=True))
    steps = _num_steps(reductions)
    widths: list[int] = []
    previous = sum(c for c, r in zip(channels, reductions, strict=True) if r == max(reductions))
    for k in range(1, steps + 1):
        reduction = max(reductions) >> k
        width = by_reduction.get(reduction, max(min_channels, previous // 2))
        widths.append(width)
        previous = width
    return tuple(widths)


class ConvNormAct(nn.Sequential):
    """3x3 convolution, instance norm (affine, like MONAI's nets), ReLU; keeps H, W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.InstanceNorm2d(out_channels, affine=True),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Upsample x2 (bilinear), concatenate the skip if any, then two :class:`ConvNormAct`."""

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels + skip_channels, out_channels)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = ConvNormAct(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C_in, h, w)`` (+ skip ``(B, C_skip, 2h, 2w)``) -> ``(B, C_out, 2h, 2w)``."""
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.dropout(self.conv1(x)))


class UNetDecoder(nn.Module):
    """UNet-style decoder over a list of encoder features; see the module docstring.

    Args:
        encoder_channels: channels of each encoder feature map.
        encoder_reductions: stride of each feature map (powers of 2, >= 2).
        out_channels: number of output logits (classes).
        decoder_channels: width after each x2 step, coarse to fine, ``log2(max reduction)``
            entries; ``None`` derives them from the encoder (:func:`default_decoder_channels`).
        dropout: channel dropout inside each decoder block.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        encoder_reductions: Sequence[int],
        out_channels: int,
        decoder_channels: Sequence[int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        reductions = [int(r) for r in encoder_reductions]
        steps = _num_steps(reductions)
        if decoder_channels is None:
            decoder_channels = default_decoder_channels(encoder_channels, reductions)
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != steps:
            raise CellsegError(
                f"decoder_channels {list(decoder_channels)} must have {steps} entries "
                f"(one per x2 upsampling from reduction {max(reductions)} to 1)"
            )
        self.reductions = reductions
        self.top = max(reductions)
        in_ch = sum(c for c, r in zip(encoder_channels, reductions, strict=True) if r == self.top)
        skip_ch = dict(zip(reductions, encoder_channels, strict=True))
        blocks = []
        for k, width in enumerate(decoder_channels, start=1):
            reduction = self.top >> k
            blocks.append(DecoderBlock(in_ch, skip_ch.get(reduction, 0), width, dropout))
            in_ch = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, out_channels, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Features ``(B, C_i, H/r_i, W/r_i)`` (NCHW) -> logits ``(B, out_channels, H, W)``."""
        top = [f for f, r in zip(features, self.reductions, strict=True) if r == self.top]
        skips = {r: f for f, r in zip(features, self.reductions, strict=True) if r != self.top}
        x = top[0] if len(top) == 1 else torch.cat(top, dim=1)
        reduction = self.top
        for block in self.blocks:
            reduction //= 2
            x = block(x, skips.get(reduction))
        return self.head(x)


class TimmUNet(nn.Module):
    """A timm ``features_only`` encoder under :class:`UNetDecoder`.

    Args:
        encoder: a timm model created with ``features_only=True``; NHWC outputs (Swin) are
            permuted to NCHW using its ``output_fmt``.
        out_channels: number of output logits.
        decoder_channels, dropout: see :class:`UNetDecoder`.

    Shapes: ``(B, in_chans, H, W)`` -> ``(B, out_channels, H, W)``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        out_channels: int,
        decoder_channels: Sequence[int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        info = encoder.feature_info
        self.channels_last = str(getattr(encoder, "output_fmt", "NCHW")).endswith("NHWC")
        self.decoder = UNetDecoder(
            info.channels(), info.reduction(), out_channels, decoder_channels, dropout
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, out_channels, H, W)`` logits."""
        features = self.encoder(x)
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return self.decoder(features)


def _num_steps(reductions: Sequence[int]) -> int:
    top = max(reductions)
    if top < 2 or any(r < 1 or r & (r - 1) for r in reductions):
        raise CellsegError(f"encoder reductions {list(reductions)} must be powers of 2 (max >= 2)")
    return int(math.log2(top))
