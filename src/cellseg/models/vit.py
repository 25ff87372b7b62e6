"""ViT, 2D and 3D: ViT-B/16 (hidden 768, 12 layers, 12 heads, MLP 3072).

2D: timm ``VisionTransformer`` as a ``features_only`` encoder (last block, reduction 16) under
the shared decoder with the seed's widths 256-128-64-16 (a progressive-upsampling decoder,
since every ViT feature has the same reduction). The learned position embedding is built for
``input_shape``, which is therefore the only accepted shape.
3D (``network: vitvnet``, the seed preset): the seed's ViT-V-Net (Chen et al. 2021, as in the
CellMap challenge toolbox) rebuilt from MONAI blocks (:class:`ViTVNet3d`): a small CNN encoder,
MONAI's ``ViT`` on its 1/4-resolution features, a UNet decoder with trilinear upsampling.
``network: unetr`` (the demo preset) is MONAI's ``UNETR`` (ViT-B/16 on 16x16x16 patches).
Both have a learned position embedding for ``input_shape``, the only accepted shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cellseg.errors import CellsegError
from cellseg.models._blocks3d import UpConcatConv, norm_spec
from cellseg.models._registry import InputRule, format_shape, register_model
from cellseg.models._timm import timm_unet_from_config


def _fixed_rule(label: str, patch: int, config: Mapping[str, Any]) -> InputRule:
    shape = config["input_shape"]
    if any(s % patch for s in shape):
        raise CellsegError(
            f"model {label}: input_shape {list(shape)} must be a multiple of the patch size {patch}"
        )
    return InputRule(default=shape, divisor=(patch,) * len(shape), fixed=shape)


def _rule_2d(config: Mapping[str, Any]) -> InputRule:
    return _fixed_rule("vit 2d", int(config["encoder_kwargs"].get("patch_size", 16)), config)


@register_model(
    "vit",
    "2d",
    presets={
        "seed": {
            "encoder": "vit_base_patch16_224",
            "encoder_kwargs": {
                "patch_size": 16,
                "embed_dim": 768,
                "depth": 12,
                "num_heads": 12,
                "mlp_ratio": 4.0,
                "drop_rate": 0.0,
                "drop_path_rate": 0.0,
            },
            "out_indices": (-1,),
            "decoder_channels": (256, 128, 64, 16),
            "decoder_dropout": 0.0,
            "pretrained": False,
            "input_shape": (256, 256),
        },
        "demo": {
            "encoder": "vit_base_patch16_224",
            "encoder_kwargs": {
                "patch_size": 16,
                "embed_dim": 64,
                "depth": 2,
                "num_heads": 4,
                "mlp_ratio": 4.0,
                "drop_rate": 0.0,
                "drop_path_rate": 0.0,
            },
            "out_indices": (-1,),
            "decoder_channels": (32, 16, 16, 8),
            "decoder_dropout": 0.0,
            "pretrained": False,
            "input_shape": (64, 64),
        },
    },
    input_rule=_rule_2d,
    library="timm VisionTransformer (features_only) + cellseg UNetDecoder",
    pretrained_capable=True,
)
def vit_2d(in_channels: int, out_channels: int, **config: Any) -> nn.Module:
    """2D ViT: timm ViT-B/16 encoder + decoder 256-128-64-16, fixed input size."""
    return timm_unet_from_config("vit 2d", in_channels, out_channels, config, fixed_size=True)


NETWORKS_3D = ("vitvnet", "unetr")
"""Values of the 3D ``network`` key: ViT-V-Net (seed) or MONAI's UNETR (demo)."""

VITVNET_DOWNSAMPLINGS = 2
"""ViT-V-Net's CNN encoder halves the input twice before the patch embedding."""
VITVNET_PATCH = 8
"""ViT-V-Net's patch size on the 1/4-resolution CNN features: one token per 32^3 voxels."""
VITVNET_LAYERS = 12


def _rule_3d(config: Mapping[str, Any]) -> InputRule:
    network = config["network"]
    if network not in NETWORKS_3D:
        raise CellsegError(
            f"model vit 3d: unknown network {network!r}; valid: {', '.join(NETWORKS_3D)}"
        )
    patch = 16 if network == "unetr" else VITVNET_PATCH * 2**VITVNET_DOWNSAMPLINGS
    rule = _fixed_rule("vit 3d", patch, config)
    if network == "vitvnet" and math.prod(s // patch for s in rule.default) < 2:
        # the token grid is instance-normalised (conv_more): one token cannot be
        raise CellsegError(
            f"model vit 3d: input_shape {format_shape(rule.default)} is a single ViT-V-Net token "
            f"({patch}^3 voxels each); use at least two, e.g. 32x32x64"
        )
    return rule


class ViTVNet3d(nn.Module):
    """ViT-V-Net (Chen et al. 2021) for segmentation, from MONAI blocks.

    With ``f = feature_size`` (16 in ViT-V-Net, whose widths are all multiples of it):

    * CNN encoder: MONAI ``TwoConv`` to ``f`` channels at full resolution, then two MONAI
      ``Down`` (max-pool + ``TwoConv``) to ``2f`` at 1/2 and ``2f`` at 1/4;
    * MONAI ``ViT`` (``hidden_size``, 12 layers, ``num_heads``, ``mlp_dim``, q/k/v biases) on
      the 1/4 features with 8x8x8 patches: one token per 32^3 input voxels, learned position
      embedding for the fixed ``img_size``;
    * decoder: a 3x3x3 convolution from ``hidden_size`` to ``32f`` channels, then five
      :class:`UpConcatConv` steps (x2 trilinear, skip, two conv-norm-ReLU) of widths
      6f, 3f, 2f, 2f, f with skips: the 1/4 features max-pooled to 1/16 and 1/8, the 1/4, 1/2
      and full-resolution encoder features; a 3x3x3 convolution to the logits.

    Shapes: ``(B, in_channels, *img_size)`` -> ``(B, out_channels, *img_size)``; every size of
    ``img_size`` a multiple of 32.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        img_size: tuple[int, int, int],
        hidden_size: int,
        mlp_dim: int,
        num_heads: int,
        feature_size: int = 16,
        dropout_rate: float = 0.0,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        from monai.networks.blocks import Convolution
        from monai.networks.nets import ViT
        from monai.networks.nets.basic_unet import Down, TwoConv

        f = int(feature_size)
        act = ("relu", {"inplace": True})
        norm_arg = norm_spec(norm)
        down = 2**VITVNET_DOWNSAMPLINGS
        self.grid = tuple(s // (down * VITVNET_PATCH) for s in img_size)
        self.inc = TwoConv(3, in_channels, f, act, norm_arg, bias=False)
        self.down1 = Down(3, f, 2 * f, act, norm_arg, bias=False)
        self.down2 = Down(3, 2 * f, 2 * f, act, norm_arg, bias=False)
        self.vit = ViT(
            in_channels=2 * f,
            img_size=tuple(s // down for s in img_size),
            patch_size=VITVNET_PATCH,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=VITVNET_LAYERS,
            num_heads=num_heads,
            dropout_rate=dropout_rate,
            spatial_dims=3,
            qkv_bias=True,
        )
        for block in self.vit.blocks:
            # MONAI builds a cross-attention norm even without cross-attention: unused
            # parameters (no gradient) would stop DDP, which expects every parameter to get one
            if not block.with_cross_attention:
                block.norm_cross_attn = nn.Identity()
        self.conv_more = Convolution(
            3, hidden_size, 32 * f, kernel_size=3, act=act, norm=norm_arg, bias=False
        )
        widths = (6 * f, 3 * f, 2 * f, 2 * f, f)
        skips = (2 * f, 2 * f, 2 * f, 2 * f, f)
        inputs = (32 * f, *widths[:-1])
        self.up = nn.ModuleList(
            [
                UpConcatConv(i, s, w, norm=norm)
                for i, s, w in zip(inputs, skips, widths, strict=True)
            ]
        )
        self.head = nn.Conv3d(f, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, D, H, W)`` -> logits ``(B, C_out, D, H, W)``."""
        f1 = self.inc(x)
        f2 = self.down1(f1)
        f3 = self.down2(f2)
        tokens, _ = self.vit(f3)  # (B, tokens, hidden)
        y = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)
        y = self.conv_more(y)
        f8 = F.max_pool3d(f3, 2)
        skips = (F.max_pool3d(f8, 2), f8, f3, f2, f1)
        for block, skip in zip(self.up, skips, strict=True):
            y = block(y, skip)
        return self.head(y)


@register_model(
    "vit",
    "3d",
    presets={
        "seed": {
            "network": "vitvnet",
            "hidden_size": 252,
            "mlp_dim": 3072,
            "num_heads": 12,
            "feature_size": 16,
            "dropout_rate": 0.1,
            "norm": "instance",
            "input_shape": (32, 256, 256),
        },
        "demo": {
            "network": "unetr",
            "hidden_size": 64,
            "mlp_dim": 256,
            "num_heads": 4,
            "feature_size": 4,
            "dropout_rate": 0.0,
            "norm": "instance",
            "input_shape": (16, 64, 64),
        },
    },
    input_rule=_rule_3d,
    library="ViT-V-Net from monai ViT + TwoConv/Down blocks (seed); monai UNETR (demo)",
)
def vit_3d(in_channels: int, out_channels: int, **config: Any) -> nn.Module:
    """3D ViT: ViT-V-Net (CNN encoder, MONAI ViT on 1/4 features, UNet decoder), fixed size."""
    _rule_3d(config)  # validates network and input_shape
    if config["network"] == "vitvnet":
        return ViTVNet3d(
            in_channels,
            out_channels,
            img_size=tuple(config["input_shape"]),
            hidden_size=int(config["hidden_size"]),
            mlp_dim=int(config["mlp_dim"]),
            num_heads=int(config["num_heads"]),
            feature_size=int(config["feature_size"]),
            dropout_rate=float(config["dropout_rate"]),
            norm=config["norm"],
        )
    from monai.networks.nets import UNETR

    net = UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=tuple(config["input_shape"]),
        feature_size=int(config["feature_size"]),
        hidden_size=int(config["hidden_size"]),
        mlp_dim=int(config["mlp_dim"]),
        num_heads=int(config["num_heads"]),
        norm_name=norm_spec(config["norm"]),
        dropout_rate=float(config["dropout_rate"]),
        spatial_dims=3,
    )
    # MONAI's blocks hold a cross-attention norm they never use: frozen, so that DDP (which
    # waits for a gradient of every trainable parameter) works; kept, so the model and its
    # parameter count stay what they were
    _freeze_unused_cross_attention_norms(net.vit)
    return net


def _freeze_unused_cross_attention_norms(vit: nn.Module) -> None:
    for block in vit.blocks:
        if not block.with_cross_attention:
            block.norm_cross_attn.requires_grad_(False)
