"""MedNeXt, 3D: MONAI's ``MedNeXt`` (Roy et al. 2023, arXiv 2303.09975), a ConvNeXt-style
UNet whose blocks are depthwise k x k x k convolution -> group norm (one group per channel) ->
1x1x1 expansion -> GELU -> 1x1x1 compression, residual; down- and up-sampling blocks of the same
form with stride 2; four 2x2x2 downsamplings (each input size a multiple of 16).

The seed preset is MedNeXt-L with kernel 3 (docs/models.md, "MedNeXt": the size that fits
the seed's 32x256x256 patch on a 48 GB L40S, and why kernel 3). The widths and expansion
ratios are the paper's table (MONAI's ``create_mednext``), written out so the config can
override any of them; no deep supervision (cellseg's trainer has one output).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from cellseg.errors import CellsegError
from cellseg.models._registry import InputRule, register_model

# MedNeXt-L: 2 samples of 32x256x256 per 45 GB under bf16 (cellseg plan-batch), the paper's
# batch of 2 at its 128^3 patch (the same 2**21 voxels)
_SEED = {
    "init_filters": 32,
    "encoder_expansion_ratio": (3, 4, 8, 8),
    "decoder_expansion_ratio": (8, 8, 4, 3),
    "bottleneck_expansion_ratio": 8,
    "blocks_down": (3, 4, 8, 8),
    "blocks_bottleneck": 8,
    "blocks_up": (8, 8, 4, 3),
    "kernel_size": 3,
    "input_shape": (32, 256, 256),
}
# MedNeXt-S's layout, narrower (init 8), one block per stage: the demo's CPU budget.
_DEMO = {
    "init_filters": 8,
    "encoder_expansion_ratio": (2, 2, 2, 2),
    "decoder_expansion_ratio": (2, 2, 2, 2),
    "bottleneck_expansion_ratio": 2,
    "blocks_down": (1, 1, 1, 1),
    "blocks_bottleneck": 1,
    "blocks_up": (1, 1, 1, 1),
    "kernel_size": 3,
    "input_shape": (16, 64, 64),
}


def _levels(config: Mapping[str, Any]) -> int:
    levels = len(config["blocks_down"])
    for key in ("blocks_up", "encoder_expansion_ratio", "decoder_expansion_ratio"):
        value = config[key]
        if not isinstance(value, int) and len(value) != levels:
            raise CellsegError(
                f"model mednext 3d: {key} has {len(value)} entries for {levels} levels "
                f"(blocks_down); give {levels}"
            )
    if int(config["kernel_size"]) % 2 != 1:
        raise CellsegError(
            f"model mednext 3d: kernel_size {config['kernel_size']} must be odd (3, 5 or 7)"
        )
    return levels


def _rule(config: Mapping[str, Any]) -> InputRule:
    stride = 2 ** _levels(config)
    return InputRule(default=config["input_shape"], divisor=(stride,) * 3)


def _ints(value: int | tuple[int, ...]) -> int | list[int]:
    return int(value) if isinstance(value, int) else [int(v) for v in value]


@register_model(
    "mednext",
    "3d",
    presets={"seed": _SEED, "demo": _DEMO},
    input_rule=_rule,
    library="monai.networks.nets.MedNeXt(spatial_dims=3)",
)
def mednext_3d(in_channels: int, out_channels: int, **config: Any) -> nn.Module:
    """3D MedNeXt: depthwise-separable ConvNeXt blocks, group norm, GELU, residual resampling."""
    from monai.networks.nets import MedNeXt

    _levels(config)
    return MedNeXt(
        spatial_dims=3,
        init_filters=int(config["init_filters"]),
        in_channels=in_channels,
        out_channels=out_channels,
        encoder_expansion_ratio=_ints(config["encoder_expansion_ratio"]),
        decoder_expansion_ratio=_ints(config["decoder_expansion_ratio"]),
        bottleneck_expansion_ratio=int(config["bottleneck_expansion_ratio"]),
        kernel_size=int(config["kernel_size"]),
        deep_supervision=False,
        # the paper's variants (create_mednext) all use residual blocks and group norm
        use_residual_connection=True,
        blocks_down=_ints(config["blocks_down"]),
        blocks_bottleneck=int(config["blocks_bottleneck"]),
        blocks_up=_ints(config["blocks_up"]),
        norm_type="group",
        global_resp_norm=False,
    )
