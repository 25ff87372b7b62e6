"""UNet, 2D and 3D: MONAI ``BasicUNet`` (instance norm, dropout 0.2, as in the seed).

The seed preset is the seed's classic UNet (the CellMap challenge toolbox's ``UNet_2D`` /
``UNet_3D`` with ``trilinear=False``): 64-128-256-512-1024 channels, two 3x3 convolutions per
level, max-pool down, transposed-convolution up (MONAI's ``upsample="deconv"``, halving the
channels as the classic layout does), last decoder level 64 wide.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from cellseg.models._registry import InputRule, register_model

# BasicUNet: 4 max-pool downsamplings by 2 on every axis, so each size is a multiple of 16
# (MONAI pads odd sizes in the decoder, but a padded border is not what was trained).
_STRIDE = 16

_SEED = {"features": (64, 128, 256, 512, 1024, 64), "dropout": 0.2, "norm": "instance"}
_DEMO = {"features": (8, 8, 16, 32, 64, 8), "dropout": 0.2, "norm": "instance"}


def _rule(config: Mapping[str, Any]) -> InputRule:
    shape = config["input_shape"]
    return InputRule(default=shape, divisor=(_STRIDE,) * len(shape))


def _basic_unet(dims: int, in_channels: int, out_channels: int, **config: Any) -> nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(
        spatial_dims=dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=tuple(config["features"]),
        norm=(config["norm"], {"affine": True}),
        dropout=float(config["dropout"]),
    )


@register_model(
    "unet",
    "2d",
    presets={
        "seed": {**_SEED, "input_shape": (256, 256)},
        "demo": {**_DEMO, "input_shape": (64, 64)},
    },
    input_rule=_rule,
    library="monai.networks.nets.BasicUNet(spatial_dims=2)",
)
def unet_2d(in_channels: int, out_channels: int, **config: Any) -> nn.Module:
    """2D UNet: MONAI BasicUNet, 5 levels, instance norm, dropout 0.2."""
    config.pop("input_shape")
    return _basic_unet(2, in_channels, out_channels, **config)


@register_model(
    "unet",
    "3d",
    presets={
        "seed": {**_SEED, "input_shape": (32, 256, 256)},
        "demo": {**_DEMO, "features": (4, 8, 16, 32, 64, 4), "input_shape": (16, 64, 64)},
    },
    input_rule=_rule,
    library="monai.networks.nets.BasicUNet(spatial_dims=3)",
)
def unet_3d(in_channels: int, out_channels: int, **config: Any) -> nn.Module:
    """3D UNet: MONAI BasicUNet, 5 levels, instance norm, dropout 0.2."""
    config.pop("input_shape")
    return _basic_unet(3, in_channels, out_channels, **config)
