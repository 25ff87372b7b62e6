"""ResEnc UNet, 3D: nnU-Net's residual-encoder UNet (``dynamic_network_architectures``'s
``ResidualEncoderUNet``, the network nnU-Net itself builds), the "nnU-Net Revisited" baseline.

The seed preset is what nnU-Net's ``nnUNetPlannerResEncL`` (the 24 GB preset) plans for the
seed's 32x256x256 patch at 8 nm isotropic voxels (docs/models.md, "ResEnc L"): pooling on
every axis whose feature map is at least 8 voxels and whose spacing is within 2x of the finest
(``get_pool_and_conv_props``), so three 2x2x2 poolings then three 1x2x2 ones down to a 4x4x4
bottleneck (7 stages, total stride 8x64x64); widths 32 x 2**stage capped at 320; residual
blocks per encoder stage 1, 3, 4, 6, 6, 6, 6 (ResNet-D ``BasicBlockD``), one convolution per
decoder stage; 3x3x3 kernels; instance norm, LeakyReLU, biased convolutions, no dropout.

Differences from nnU-Net's training: no deep supervision (cellseg's trainer has one output, as
for the other models), so the decoder's unused per-stage segmentation heads, which nnU-Net
builds only to load deep-supervised checkpoints, are dropped: every parameter gets a gradient,
as DDP without ``find_unused_parameters`` needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from cellseg.errors import CellsegError
from cellseg.models._registry import InputRule, register_model

_SEED = {
    "features_per_stage": (32, 64, 128, 256, 320, 320, 320),
    "strides": (
        (1, 1, 1),
        (2, 2, 2),
        (2, 2, 2),
        (2, 2, 2),
        (1, 2, 2),
        (1, 2, 2),
        (1, 2, 2),
    ),
    "n_blocks_per_stage": (1, 3, 4, 6, 6, 6, 6),
    "n_conv_per_stage_decoder": (1, 1, 1, 1, 1, 1),
    "kernel_size": 3,
    "input_shape": (32, 256, 256),
}
# The same planner rule on the demo's 16x64x64 patch (5 stages, bottleneck 4x4x4), narrow and
# with fewer blocks so that an epoch costs what the other demo 3D models' do on a CPU.
_DEMO = {
    "features_per_stage": (4, 8, 16, 32, 32),
    "strides": ((1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2)),
    "n_blocks_per_stage": (1, 1, 2, 2, 2),
    "n_conv_per_stage_decoder": (1, 1, 1, 1),
    "kernel_size": 3,
    "input_shape": (16, 64, 64),
}


def total_stride(strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Per-axis product of the stage strides: what every input size must be a multiple of."""
    return tuple(math.prod(axis) for axis in zip(*strides, strict=True))


def _check(config: Mapping[str, Any]) -> None:
    stages = len(config["features_per_stage"])
    lengths = {
        "strides": (len(config["strides"]), stages),
        "n_blocks_per_stage": (len(config["n_blocks_per_stage"]), stages),
        "n_conv_per_stage_decoder": (len(config["n_conv_per_stage_decoder"]), stages - 1),
    }
    for key, (got, want) in lengths.items():
        if got != want:
            raise CellsegError(
                f"model resenc 3d: {key} has {got} entries for {stages} stages "
                f"(features_per_stage); give {want}"
            )
    if any(len(s) != 3 for s in config["strides"]):
        raise CellsegError("model resenc 3d: each of strides must be 3 ints (z, y, x)")


def _rule(config: Mapping[str, Any]) -> InputRule:
    _check(config)
    return InputRule(default=config["input_shape"], divisor=total_stride(config["strides"]))


def _drop_unused_heads(net: nn.Module) -> None:
    # Without deep supervision the decoder only runs seg_layers[-1]; the others would be
    # parameters without a gradient (DDP waits for them). Identity keeps the indices.
    heads = net.decoder.seg_layers
    net.decoder.seg_layers = nn.ModuleList([nn.Identity() for _ in heads[:-1]] + [heads[-1]])


@register_model(
    "resenc",
    "3d",
    presets={"seed": _SEED, "demo": _DEMO},
    input_rule=_rule,
    library="dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
)
def resenc_3d(in_channels: int, out_channels: int, **config: Any) -> nn.Module:
    """3D ResEnc UNet (nnU-Net ResEnc L topology): residual encoder, instance norm, LeakyReLU."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    _check(config)
    stages = len(config["features_per_stage"])
    net = ResidualEncoderUNet(
        input_channels=in_channels,
        n_stages=stages,
        features_per_stage=[int(f) for f in config["features_per_stage"]],
        conv_op=nn.Conv3d,
        kernel_sizes=[[int(config["kernel_size"])] * 3] * stages,
        strides=[[int(s) for s in stride] for stride in config["strides"]],
        n_blocks_per_stage=[int(n) for n in config["n_blocks_per_stage"]],
        num_classes=out_channels,
        n_conv_per_stage_decoder=[int(n) for n in config["n_conv_per_stage_decoder"]],
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )
    # nnU-Net's initialisation (get_network_from_plans): He-normal convolutions, zero biases,
    # and each residual block's last norm at zero, so every block starts as the identity
    net.apply(net.initialize)
    _drop_unused_heads(net)
    return net
