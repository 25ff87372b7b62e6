"""ViT, 2D and 3D: ViT-B/16 (hidden 768, 12 layers, 12 heads, MLP 3072).

2D: timm ``VisionTransformer`` as a ``features_only`` encoder (last block, reduction 16) under
the shared decoder with the seed's widths 256-128-64-16 (a progressive-upsampling decoder,
since every ViT feature has the same reduction). The learned position embedding is built for
``input_shape``, which is therefore the only accepted shape.
3D: MONAI ``UNETR`` (ViT-B/16 encoder, patch 16, skips from blocks 3, 6, 9, 12) stands in for
the seed's ViT-V-Net (no ViT-V-Net in MONAI/timm); also fixed to ``input_shape``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from cellseg.errors import CellsegError
from cellseg.models._registry import InputRule, register_model
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


@register_model(
    "vit",
    "3d",
    presets={
        "seed": {
            "hidden_size": 768,
            "mlp_dim": 3072,
            "num_heads": 12,
            "feature_size": 16,
            "dropout_rate": 0.0,
            "norm": "instance",
            "input_shape": (32, 256, 256),
        },
        "demo": {
            "hidden_size": 64,
            "mlp_dim": 256,
            "num_heads": 4,
            "feature_size": 4,
            "dropout_rate": 0.0,
            "norm": "instance",
            "input_shape": (16, 64, 64),
        },
    },
    input_rule=lambda config: _fixed_rule("vit 3d", 16, config),
    library="monai.networks.nets.UNETR",
)
def vit_3d(in_channels: int, out_channels: int, **config: Any) -> nn.Module:
    """3D ViT: MONAI UNETR (ViT-B/16, 12 layers fixed by MONAI), fixed input size."""
    from monai.networks.nets import UNETR

    return UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=tuple(config["input_shape"]),
        feature_size=int(config["feature_size"]),
        hidden_size=int(config["hidden_size"]),
        mlp_dim=int(config["mlp_dim"]),
        num_heads=int(config["num_heads"]),
        norm_name=(config["norm"], {"affine": True}),
        dropout_rate=float(config["dropout_rate"]),
        spatial_dims=3,
    )
