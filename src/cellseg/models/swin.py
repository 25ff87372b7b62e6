"""Swin, 2D and 3D: Swin-T (embed 96, depths 2-2-6-2, heads 3-6-12-24, dropout 0.1,
stochastic depth 0.1) under a UNet-style decoder.

2D: timm ``SwinTransformer`` (patch 4, window 7) as a ``features_only`` encoder (reductions
4-8-16-32) under the shared UNet decoder; timm needs the image size up front (attention masks
and the relative position tables), so the input shape is fixed to ``input_shape``.
3D (``network: swin_unet``, the seed preset): MONAI's ``SwinTransformer`` (the encoder inside
``SwinUNETR``) with the seed's anisotropic patch 2x4x4 and window 4x7x7, trimmed to Swin-T (no
patch merging after the last stage), under a UNet decoder whose widths are the skips' widths
(:class:`SwinUNet3d`). ``network: swinunetr`` (the demo preset) is MONAI's ``SwinUNETR``, whose
isotropic patch and decoder widths scale with ``feature_size`` (255 M parameters at 96).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cellseg.errors import CellsegError
from cellseg.models._blocks3d import UpConcatConv, norm_spec
from cellseg.models._registry import InputRule, register_model
from cellseg.models._timm import timm_unet_from_config


def _rule_2d(config: Mapping[str, Any]) -> InputRule:
    kwargs = config["encoder_kwargs"]
    stride = int(kwargs.get("patch_size", 4)) * 2 ** (len(kwargs.get("depths", (0,) * 4)) - 1)
    shape = config["input_shape"]
    if any(s % stride for s in shape):
        raise CellsegError(
            f"model swin 2d: input_shape {list(shape)} must be a multiple of {stride} "
            "(patch size x 2 per patch merging)"
        )
    return InputRule(default=shape, divisor=(stride,) * 2, fixed=shape)


@register_model(
    "swin",
    "2d",
    presets={
        "seed": {
            "encoder": "swin_tiny_patch4_window7_224",
            "encoder_kwargs": {
                "patch_size": 4,
                "window_size": 7,
                "embed_dim": 96,
                "depths": (2, 2, 6, 2),
                "num_heads": (3, 6, 12, 24),
                "drop_rate": 0.1,
                "drop_path_rate": 0.1,
            },
            "out_indices": (0, 1, 2, 3),
            "decoder_channels": None,
            "decoder_dropout": 0.0,
            "pretrained": False,
            "input_shape": (256, 256),
        },
        "demo": {
            "encoder": "swin_tiny_patch4_window7_224",
            "encoder_kwargs": {
                "patch_size": 4,
                "window_size": 4,
                "embed_dim": 24,
                "depths": (1, 1, 2, 1),
                "num_heads": (1, 2, 4, 8),
                "drop_rate": 0.1,
                "drop_path_rate": 0.1,
            },
            "out_indices": (0, 1, 2, 3),
            "decoder_channels": None,
            "decoder_dropout": 0.0,
            "pretrained": False,
            "input_shape": (64, 64),
        },
    },
    input_rule=_rule_2d,
    library="timm SwinTransformer (features_only) + cellseg UNetDecoder",
    pretrained_capable=True,
)
def swin_2d(in_channels: int, out_channels: int, **config: Any) -> nn.Module:
    """2D Swin: timm Swin-T encoder (patch 4, window 7) + UNet decoder, fixed input size."""
    return timm_unet_from_config("swin 2d", in_channels, out_channels, config, fixed_size=True)


NETWORKS_3D = ("swin_unet", "swinunetr")
"""Values of the 3D ``network`` key: cellseg's Swin-T UNet (seed) or MONAI's SwinUNETR (demo)."""


def _patch_3d(patch_size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(patch_size, int):
        return (patch_size,) * 3
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3:
        raise CellsegError(f"model swin 3d: patch_size {list(patch)} must have 3 entries")
    return patch  # type: ignore[return-value]


def _rule_3d(config: Mapping[str, Any]) -> InputRule:
    network = config["network"]
    if network not in NETWORKS_3D:
        raise CellsegError(
            f"model swin 3d: unknown network {network!r}; valid: {', '.join(NETWORKS_3D)}"
        )
    if network == "swinunetr":
        # MONAI SwinUNETR: 1 patch embedding + 4 patch mergings -> patch_size ** 5
        if not isinstance(config["patch_size"], int):
            raise CellsegError("model swin 3d: network swinunetr needs an int patch_size")
        stride = int(config["patch_size"]) ** 5
        return InputRule(default=config["input_shape"], divisor=(stride,) * 3)
    # Swin-T: patch embedding + 3 patch mergings by 2
    divisor = tuple(p * 8 for p in _patch_3d(config["patch_size"]))
    return InputRule(default=config["input_shape"], divisor=divisor)


class SwinUNet3d(nn.Module):
    """Swin-T encoder (MONAI ``SwinTransformer``) + a UNet decoder, for anisotropic patches.

    Encoder: patch embedding (conv ``patch_size``, stride ``patch_size``, layer norm), then
    four Swin stages of widths C, 2C, 4C, 8C (C = ``embed_dim``) with a 2x2x2 patch merging
    between stages. MONAI's ``SwinTransformer`` also merges after the last stage (SwinUNETR
    decodes one level deeper); that merging is removed here, as Swin-T has none.
    MONAI returns the patch embedding and each stage's merged output, i.e. features of widths
    C, 2C, 4C at strides p, 2p, 4p (p = patch) and the last stage's output (8C at 8p).

    Decoder: from the last stage, three :class:`UpConcatConv` steps (x2, skip, widths 4C, 2C, C)
    back to stride p, then skip-free steps with halving widths (x2 on every axis whose patch
    size is not yet undone, e.g. (2,2,2) then (1,2,2) for p = 2x4x4), then a 1x1x1 convolution.

    Shapes: ``(B, in_channels, D, H, W)`` -> ``(B, out_channels, D, H, W)``, each size a
    multiple of ``8 * patch_size``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window_size: Sequence[int],
        patch_size: int | Sequence[int],
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm: str = "instance",
        use_v2: bool = False,
    ) -> None:
        super().__init__()
        from monai.networks.nets.swin_unetr import SwinTransformer

        if len(depths) != 4 or len(num_heads) != 4:
            raise CellsegError(
                f"model swin 3d: depths {list(depths)} and num_heads {list(num_heads)} need 4 "
                "stages (MONAI's SwinTransformer has exactly four)"
            )
        patch = _patch_3d(patch_size)
        if any(p < 1 or p & (p - 1) for p in patch):
            raise CellsegError(f"model swin 3d: patch_size {list(patch)} must be powers of 2")
        c = int(embed_dim)
        self.encoder = SwinTransformer(
            in_chans=in_channels,
            embed_dim=c,
            window_size=tuple(int(w) for w in window_size),
            patch_size=patch,
            depths=tuple(int(d) for d in depths),
            num_heads=tuple(int(h) for h in num_heads),
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            patch_norm=True,
            spatial_dims=3,
            use_v2=use_v2,
        )
        self.encoder.layers4[0].downsample = None
        self.up = nn.ModuleList(
            [
                UpConcatConv(8 * c, 4 * c, 4 * c, norm=norm),
                UpConcatConv(4 * c, 2 * c, 2 * c, norm=norm),
                UpConcatConv(2 * c, c, c, norm=norm),
            ]
        )
        width, remaining = c, list(patch)
        tail = []
        for _ in range(int(math.log2(max(patch)))):
            factor = tuple(2 if r > 1 else 1 for r in remaining)
            remaining = [r // f for r, f in zip(remaining, factor, strict=True)]
            tail.append(UpConcatConv(width, 0, max(16, width // 2), factor, norm=norm))
            width = max(16, width // 2)
        self.tail = nn.ModuleList(tail)
        self.head = nn.Conv3d(width, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, D, H, W)`` -> logits ``(B, C_out, D, H, W)``."""
        x0, x1, x2, _, x4 = self.encoder(x)
        y = x4
        for block, skip in zip(self.up, (x2, x1, x0), strict=True):
            y = block(y, skip)
        for block in self.tail:
            y = block(y)
        return self.head(y)


@register_model(
    "swin",
    "3d",
    presets={
        "seed": {
            "network": "swin_unet",
            "feature_size": 96,
            "depths": (2, 2, 6, 2),
            "num_heads": (3, 6, 12, 24),
            "window_size": (4, 7, 7),
            "patch_size": (2, 4, 4),
            "drop_rate": 0.1,
            "attn_drop_rate": 0.0,
            "dropout_path_rate": 0.1,
            "norm": "instance",
            "use_v2": False,
            "input_shape": (32, 256, 256),
        },
        "demo": {
            "network": "swinunetr",
            "feature_size": 12,
            "depths": (1, 1, 1, 1),
            "num_heads": (1, 2, 4, 8),
            "window_size": (2, 4, 4),
            "patch_size": 2,
            "drop_rate": 0.1,
            "attn_drop_rate": 0.0,
            "dropout_path_rate": 0.1,
            "norm": "instance",
            "use_v2": False,
            # 32, not 16: SwinUNETR needs every size to be a multiple of patch_size ** 5
            "input_shape": (32, 64, 64),
        },
    },
    input_rule=_rule_3d,
    library="monai SwinTransformer + cellseg UNet decoder (seed); monai SwinUNETR (demo)",
)
def swin_3d(in_channels: int, out_channels: int, **config: Any) -> nn.Module:
    """3D Swin: Swin-T (MONAI SwinTransformer, patch 2x4x4, window 4x7x7) + UNet decoder."""
    _rule_3d(config)  # validates network and patch_size
    if config["network"] == "swin_unet":
        return SwinUNet3d(
            in_channels,
            out_channels,
            embed_dim=int(config["feature_size"]),
            depths=tuple(config["depths"]),
            num_heads=tuple(config["num_heads"]),
            window_size=tuple(config["window_size"]),
            patch_size=config["patch_size"],
            drop_rate=float(config["drop_rate"]),
            attn_drop_rate=float(config["attn_drop_rate"]),
            drop_path_rate=float(config["dropout_path_rate"]),
            norm=config["norm"],
            use_v2=bool(config["use_v2"]),
        )
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        patch_size=int(config["patch_size"]),
        depths=tuple(config["depths"]),
        num_heads=tuple(config["num_heads"]),
        window_size=tuple(config["window_size"]),
        feature_size=int(config["feature_size"]),
        norm_name=norm_spec(config["norm"]),
        drop_rate=float(config["drop_rate"]),
        attn_drop_rate=float(config["attn_drop_rate"]),
        dropout_path_rate=float(config["dropout_path_rate"]),
        use_v2=bool(config["use_v2"]),
        spatial_dims=3,
    )
