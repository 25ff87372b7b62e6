"""ResNet, 2D and 3D: the seed's image-to-image ResNet generator (64 base filters, two
downsamplings by 2, six residual blocks at 256 channels) rebuilt from library blocks.

2D: a timm ``ResNet`` trimmed to that shape (7x7 stem conv stride 2 with 64 filters, the
max-pool replaced by a stride-2 conv, then one stage of six ``BasicBlock`` at 256 channels)
under the shared UNet decoder with the widths of the generator's up path (128, 64), which
adds skip connections the generator did not have.
3D: MONAI ``DynUNet`` with residual blocks (``res_block=True``), 64-128-256 filters at
strides 1-2-2 and two more residual levels at 256 channels and stride 1 (five residual blocks
at 256 channels and 1/4 resolution, three in the encoder and two in the decoder).
Both stay within 10 % of the generator's parameter count (``tests/models/test_seed_sizes.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from cellseg.errors import CellsegError
from cellseg.models._registry import InputRule, register_model
from cellseg.models._timm import timm_unet_from_config


def _rule_2d(config: Mapping[str, Any]) -> InputRule:
    # timm ResNet feature i (stem = 0) has reduction 2 ** (i + 1); the decoder needs the
    # input to be a multiple of the deepest one
    stride = 2 ** (max(config["out_indices"]) + 1)
    shape = config["input_shape"]
    return InputRule(default=shape, divisor=(stride,) * len(shape))


@register_model(
    "resnet",
    "2d",
    presets={
        "seed": {
            "encoder": "resnet18",
            "encoder_kwargs": {
                "layers": (6,),
                "channels": (256,),
                "replace_stem_pool": True,
                "drop_path_rate": 0.0,
            },
            "out_indices": (0, 1),
            # the generator's two transposed convolutions go 256 -> 128 -> 64
            "decoder_channels": (128, 64),
            "decoder_dropout": 0.0,
            "pretrained": False,
            "input_shape": (256, 256),
        },
        "demo": {
            "encoder": "resnet18",
            "encoder_kwargs": {
                "layers": (2,),
                "channels": (32,),
                "stem_type": "deep",
                "stem_width": 8,
                "replace_stem_pool": True,
                "drop_path_rate": 0.0,
            },
            "out_indices": (0, 1),
            "decoder_channels": None,
            "decoder_dropout": 0.0,
            "pretrained": False,
            "input_shape": (64, 64),
        },
    },
    input_rule=_rule_2d,
    library="timm ResNet (BasicBlock, features_only) + cellseg UNetDecoder",
    pretrained_capable=True,
)
def resnet_2d(in_channels: int, out_channels: int, **config: Any) -> nn.Module:
    """2D ResNet: timm ResNet (64-filter stem, 2 stride-2 steps, 6 BasicBlocks) + UNet decoder."""
    return timm_unet_from_config("resnet 2d", in_channels, out_channels, config, fixed_size=False)


def _rule_3d(config: Mapping[str, Any]) -> InputRule:
    strides = [(s,) * 3 if isinstance(s, int) else tuple(s) for s in config["strides"]]
    divisor = tuple(math.prod(axis) for axis in zip(*strides, strict=True))
    return InputRule(default=config["input_shape"], divisor=divisor)


@register_model(
    "resnet",
    "3d",
    presets={
        "seed": {
            "filters": (64, 128, 256, 256, 256),
            "strides": (1, 2, 2, 1, 1),
            "kernel_size": 3,
            "norm": "instance",
            "dropout": 0.0,
            "input_shape": (32, 256, 256),
        },
        "demo": {
            "filters": (8, 16, 32, 32),
            "strides": (1, 2, 2, 1),
            "kernel_size": 3,
            "norm": "instance",
            "dropout": 0.0,
            "input_shape": (16, 64, 64),
        },
    },
    input_rule=_rule_3d,
    library="monai.networks.nets.DynUNet(res_block=True)",
)
def resnet_3d(in_channels: int, out_channels: int, **config: Any) -> nn.Module:
    """3D ResNet: MONAI residual DynUNet, 64-128-256-256-256 filters, 2 downsamplings."""
    from monai.networks.nets import DynUNet

    filters = tuple(config["filters"])
    strides = tuple(config["strides"])
    if len(filters) != len(strides) or len(strides) < 2:
        raise CellsegError(
            f"model resnet 3d: filters {list(filters)} and strides {list(strides)} must have "
            "the same length (>= 2)"
        )
    kernel = config["kernel_size"]
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[kernel] * len(strides),
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=filters,
        dropout=float(config["dropout"]) or None,
        norm_name=(config["norm"], {"affine": True}),
        res_block=True,
    )
