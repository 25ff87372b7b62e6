"""Swin, 2D and 3D: Swin-T (embed 96, depths 2-2-6-2, heads 3-6-12-24, dropout 0.1,
stochastic depth 0.1).

2D: timm ``SwinTransformer`` (patch 4, window 7) as a ``features_only`` encoder (reductions
4-8-16-32) under the shared UNet decoder; timm needs the image size up front (attention masks
and the relative position tables), so the input shape is fixed to ``input_shape``.
3D: MONAI ``SwinUNETR`` with ``feature_size`` = embed dim = 96 and window 4x7x7; MONAI's patch
is isotropic (``patch_size`` is one int and its decoder upsamples by 2 each level), so the
seed's 2x4x4 patch becomes 2x2x2 (4x more tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from cellseg.errors import CellsegError
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


def _rule_3d(config: Mapping[str, Any]) -> InputRule:
    # MONAI SwinUNETR: 1 patch embedding + 4 patch mergings -> patch_size ** 5
    stride = int(config["patch_size"]) ** 5
    return InputRule(default=config["input_shape"], divisor=(stride,) * 3)


@register_model(
    "swin",
    "3d",
    presets={
        "seed": {
            "feature_size": 96,
            "depths": (2, 2, 6, 2),
            "num_heads": (3, 6, 12, 24),
            "window_size": (4, 7, 7),
            "patch_size": 2,
            "drop_rate": 0.1,
            "attn_drop_rate": 0.0,
            "dropout_path_rate": 0.1,
            "norm": "instance",
            "use_v2": False,
            "input_shape": (32, 256, 256),
        },
        "demo": {
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
    library="monai.networks.nets.SwinUNETR",
)
def swin_3d(in_channels: int, out_channels: int, **config: Any) -> nn.Module:
    """3D Swin: MONAI SwinUNETR, Swin-T depths/heads, embed 96, window 4x7x7, patch 2."""
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        patch_size=int(config["patch_size"]),
        depths=tuple(config["depths"]),
        num_heads=tuple(config["num_heads"]),
        window_size=tuple(config["window_size"]),
        feature_size=int(config["feature_size"]),
        norm_name=(config["norm"], {"affine": True}),
        drop_rate=float(config["drop_rate"]),
        attn_drop_rate=float(config["attn_drop_rate"]),
        dropout_path_rate=float(config["dropout_path_rate"]),
        use_v2=bool(config["use_v2"]),
        spatial_dims=3,
    )
