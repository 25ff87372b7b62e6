"""cosem_3d: the COSEM network (setup04), built by ``cellmap-models``, the CellMap team's package.

The network is ``cellmap_models.pytorch.cosem.load_model.Architecture`` (a CNNectome UNet with
valid convolutions, a 1x1x1-convolved upsampling, a final convolution pass and a 1x1x1 head),
built from the preset's parameters, never through ``load_model`` (which downloads the weights
when given a checkpoint name). Its module tree, hence every state-dict name and shape, is the
published setup04's, so a downloaded COSEM weights file loads with ``init: {checkpoint: PATH}``
(cellseg.training.init); the head is re-initialised, as its 14 channels are COSEM's classes.

Two deliberate differences from setup04 as COSEM trained it:

* ``upsample_factor`` is 1, not 2: setup04 reads 8 nm and writes 4 nm, cellseg's models read
  and write ``data.resolution_nm``. The upsampling layer stays (nearest by 1 = identity, then
  its 1x1x1 convolution), so the weights keep their names and shapes.
* ``compute_minimal_shapes`` is not run: it runs the whole network once at build time (minutes
  on a CPU for setup04's 235 M parameters) and its minimum ignores the final convolution pass
  (too small for small networks). :func:`output_shape` computes the shapes instead.

Valid convolutions: the output is the input less ``output_margin_voxels`` on each side of each
axis (92 for setup04); training crops the target to the output (cellseg.models.margin).
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from cellseg.errors import CellsegError
from cellseg.models._registry import InputRule, format_shape, register_model

CONVS_PER_PASS = 2
"""Convolutions per level and in the final pass (every COSEM setup's)."""


def _factors(config: Mapping[str, Any]) -> list[tuple[int, int, int]]:
    return [tuple(int(f) for f in factor) for factor in config["downsample_factors"]]


def output_size(size: int, axis: int, config: Mapping[str, Any]) -> int | None:
    """The output's size along ``axis`` for an input of ``size`` voxels, or None when that
    size is not valid: not divisible where it is downsampled, a feature map that would vanish,
    or an output whose size differs from the input's by an odd number (it would not be centred
    on the input).

    As ``CNNectomeUNetModule`` computes it: each convolution pass takes
    ``CONVS_PER_PASS * (kernel - 1)`` voxels, max-pooling divides, upsampling multiplies, and
    after each upsampling ``crop_to_factor`` crops the size so that less the next pass it is a
    multiple of the downsampling below that level.
    """
    factors = [f[axis] for f in _factors(config)]
    loss = CONVS_PER_PASS * (int(config["kernel_size"]) - 1)
    s = int(size)
    for factor in factors:  # the left passes and max-pooling
        s -= loss
        if s <= 0 or s % factor:
            return None
        s //= factor
    s -= loss  # the bottom pass
    for level in reversed(range(len(factors))):  # upsampling and the right passes
        s *= factors[level]
        crop_factor = math.prod(factors[level:])
        kept = (s - loss) // crop_factor * crop_factor + loss
        if kept <= loss:
            return None
        s = kept - loss
    s -= loss  # the final pass (upsample_factor 1 keeps the size)
    # the output sits where the full-resolution skip connection, centre-cropped to it, is: an
    # odd difference would put it half a voxel off the input's centre
    return s if s > 0 and (size - s) % 2 == 0 else None


def output_shape(input_shape: Sequence[int], config: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The output's spatial shape for ``input_shape`` (voxels), or None when not valid
    (:func:`output_size`)."""
    sizes = [output_size(s, axis, config) for axis, s in enumerate(input_shape)]
    return None if None in sizes else tuple(int(s) for s in sizes)  # type: ignore[arg-type]


def output_margin(config: Mapping[str, Any]) -> tuple[int, ...]:
    """Voxels lost on each side per axis for the preset's ``input_shape``.

    Raises:
        CellsegError: ``input_shape`` is not valid (one line with the nearest valid shapes).
    """
    shape = tuple(int(s) for s in config["input_shape"])
    out = output_shape(shape, config)
    if out is None:
        raise CellsegError(
            f"model cosem 3d: input shape {format_shape(shape)} is not valid for its valid "
            f"convolutions; nearest valid: {' or '.join(map(format_shape, nearest(shape, config)))}"
        )
    return tuple((s - o) // 2 for s, o in zip(shape, out, strict=True))


def input_step(config: Mapping[str, Any]) -> tuple[int, ...]:
    """Valid inputs per axis are one size plus multiples of this (the total downsampling)."""
    return tuple(math.prod(f[axis] for f in _factors(config)) for axis in range(3))


def nearest(shape: Sequence[int], config: Mapping[str, Any]) -> list[tuple[int, ...]]:
    """The valid shapes nearest below and above ``shape`` (axis by axis)."""
    below, above = [], []
    for axis, size in enumerate(shape):
        valid = [
            s
            for s in range(1, int(size) + 2 * input_step(config)[axis] + 1)
            if output_size(s, axis, config) is not None
        ]
        if not valid:  # no valid size this small: the first one above
            valid = [
                next(
                    (
                        s
                        for s in range(int(size), 100 * int(size) + 1000)
                        if output_size(s, axis, config) is not None
                    ),
                    int(size),
                )
            ]
        lower = [s for s in valid if s <= size]
        higher = [s for s in valid if s >= size]
        below.append(lower[-1] if lower else valid[0])
        above.append(higher[0] if higher else valid[-1])
    return [tuple(below)] if below == above else [tuple(below), tuple(above)]


def _rule(config: Mapping[str, Any]) -> InputRule:
    # one fixed window (the configured input): sliding-window inference takes any image
    output_margin(config)
    shape = tuple(int(s) for s in config["input_shape"])
    return InputRule(default=shape, divisor=input_step(config), fixed=shape)


@functools.cache
def _network_class() -> type[nn.Module]:
    """``cellmap_models``' COSEM ``Architecture`` without its build-time forward pass."""
    from cellmap_models.pytorch.cosem.load_model import Architecture

    class CosemNetwork(Architecture):
        """COSEM's Architecture; shapes come from :func:`output_shape`, not a forward pass."""

        def compute_minimal_shapes(self) -> None:
            return None

    return CosemNetwork


SETUP04 = {
    "feature_widths_down": (12, 12 * 6, 12 * 6**2, 12 * 6**3),
    "feature_widths_up": (12 * 6, 12 * 6, 12 * 6**2, 12 * 6**3),
    "downsample_factors": ((2, 2, 2), (3, 3, 3), (3, 3, 3)),
    "kernel_size": 3,
    "final_feature_width": 12 * 6,
    "constant_upsample": True,
}
"""setup04's network (cellmap_models/pytorch/cosem/setup04/model.py), as preset keys."""


@register_model(
    "cosem",
    "3d",
    presets={
        # 252^3 in, 68^3 out: COSEM's training output size at 8 nm; the smallest valid input
        # is 216^3 (32^3 out), valid ones step by 18
        "seed": {**SETUP04, "input_shape": (252, 252, 252)},
        # the same design, tiny for a CPU: one max-pooling by 2 in y and x, widths 4-8, 11 k
        # parameters; 24x72x72 in, 8x52x52 out (8, 10, 10 voxels lost on each side)
        "demo": {
            "feature_widths_down": (4, 8),
            "feature_widths_up": (8, 8),
            "downsample_factors": ((1, 2, 2),),
            "kernel_size": 3,
            "final_feature_width": 8,
            "constant_upsample": True,
            "input_shape": (24, 72, 72),
        },
    },
    input_rule=_rule,
    library="cellmap_models.pytorch.cosem Architecture (CNNectome UNet, valid convolutions)",
)
def cosem_3d(in_channels: int, out_channels: int, **config: Any) -> nn.Module:
    """3D COSEM setup04: CNNectome UNet with valid convolutions (cellmap-models), 235 M
    parameters at the seed preset; the output is the input less ``output_margin_voxels``."""
    down = [int(w) for w in config["feature_widths_down"]]
    up = [int(w) for w in config["feature_widths_up"]]
    factors = _factors(config)
    if not (len(down) == len(up) == len(factors) + 1):
        raise CellsegError(
            f"model cosem 3d: feature_widths_down {down} and feature_widths_up {up} need one "
            f"entry per level ({len(factors) + 1} for {len(factors)} downsample_factors)"
        )
    margin = output_margin(config)
    kernel = (int(config["kernel_size"]),) * 3
    # the attributes cellmap_models reads from a setup's model.py
    params = types.SimpleNamespace(
        in_channels=in_channels,
        downsample_factors=factors,
        kernel_size_down=[[kernel] * CONVS_PER_PASS] * len(down),
        kernel_size_up=[[kernel] * CONVS_PER_PASS] * (len(up) - 1),
        feature_widths_down=down,
        feature_widths_up=up,
        constant_upsample=bool(config["constant_upsample"]),
        padding="valid",
        upsample_factor=(1, 1, 1),
        final_kernel_size=[kernel] * CONVS_PER_PASS,
        final_feature_width=int(config["final_feature_width"]),
        classes_out=out_channels,
    )
    network = _network_class()(params)
    network.output_margin_voxels = margin
    return network
