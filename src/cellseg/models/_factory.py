"""``build_model``: the one way the trainer, evaluator and planner get a network."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cellseg.classes import NUM_CLASSES
from cellseg.errors import CellsegError
from cellseg.models._registry import InputRule, get_entry, model_config, shape_error


class SegmentationModel(nn.Module):
    """A registered network plus its identity and input rule; checks shapes before running.

    The wrapped library network sits in ``self.net`` (state-dict keys start with ``net.``).

    Attributes:
        name, dim, preset: the registry key and preset it was built from.
        config: the resolved architecture options (preset + overrides).
        input_rule: the accepted spatial shapes (:class:`InputRule`).
        out_channels: the logits' channels (``None``: not known, any output layer width).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        name: str,
        dim: str,
        preset: str,
        config: Mapping[str, Any],
        input_rule: InputRule,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.out_channels = out_channels
        self.name = name
        self.dim = dim
        self.preset = preset
        self.config = dict(config)
        self.input_rule = input_rule
        # voxels the output loses on each side of each spatial axis (valid convolutions; see
        # cellseg.models.margin): the library network's own, else none
        self.output_margin_voxels: tuple[int, ...] = tuple(
            int(m) for m in getattr(net, "output_margin_voxels", (0,) * int(dim[0]))
        )
        self._checked: tuple[int, ...] | None = None

    def output_layer(self) -> nn.Module:
        """The layer that produces the logits: the last convolution (or linear layer) of the
        network, in registration order, whose output width is the logits' and that has a bias.

        Raises:
            CellsegError: no such layer (a network whose logits come out of something else).
        """
        width = self.out_channels
        layers = (
            nn.Conv2d,
            nn.Conv3d,
            nn.ConvTranspose2d,
            nn.ConvTranspose3d,
            nn.Linear,
        )
        candidates = [
            m
            for m in self.net.modules()
            if isinstance(m, layers)
            and m.bias is not None
            and (width is None or m.bias.numel() == width)
        ]
        if not candidates:
            raise CellsegError(
                f"{self.name}_{self.dim}: no output layer with a bias found; "
                "set training output_bias_init: zero for this model"
            )
        return candidates[-1]

    @torch.no_grad()
    def init_output_bias(self, bias: torch.Tensor) -> None:
        """Set the output layer's bias, ``(C_out,)`` logits (e.g. so that the untrained model
        predicts each class's prior; see the trainer's ``output_bias_init``)."""
        layer = self.output_layer()
        if layer.bias.shape != bias.shape:
            raise CellsegError(
                f"{self.name}_{self.dim}: output bias of shape {tuple(bias.shape)} for a layer "
                f"of {tuple(layer.bias.shape)}"
            )
        layer.bias.copy_(bias.to(layer.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` or ``(B, C_in, D, H, W)`` -> logits ``(B, C_out, *spatial)``, the
        input's spatial shape less ``2 * output_margin_voxels`` (the same for all but cosem_3d).

        Raises:
            CellsegError: the spatial shape is not accepted (one line with the nearest valid).
        """
        shape = tuple(x.shape)
        if shape[2:] != self._checked:
            shape_error(self.name, self.dim, self.input_rule, shape)
            self._checked = shape[2:]
        return self.net(x)


def build_model(
    name: str,
    dim: str,
    in_channels: int = 1,
    out_channels: int = NUM_CLASSES,
    preset: str = "seed",
    **overrides: Any,
) -> SegmentationModel:
    """Build a registered model from a preset plus the user's architecture overrides.

    Construction happens on the current default device; wrap the call in
    ``with torch.device("meta"):`` to count parameters of big presets without memory.

    Args:
        name: ``unet``, ``resnet``, ``swin``, ``vit`` (see :func:`list_models`).
        dim: ``"2d"`` or ``"3d"``.
        in_channels: image channels (1 for FIB-SEM).
        out_channels: logits channels (the 14 classes).
        preset: ``"seed"`` (SPEC §5 sizes) or ``"demo"`` (tiny, CPU).
        **overrides: any key of the preset (see :func:`model_config`), e.g. ``dropout=0.1``
            or ``input_shape=(128, 128)``; ``pretrained=True`` for the 2D timm encoders.

    Returns:
        A :class:`SegmentationModel` mapping ``(B, in, *S)`` to ``(B, out, *S)`` float logits.

    Raises:
        CellsegError: unknown name, dim, preset or option; an invalid ``input_shape``;
            pretrained weights not available offline.
    """
    entry = get_entry(name, dim)
    config = model_config(name, dim, preset, **overrides)
    rule = entry.input_rule(config)
    net = entry.builder(int(in_channels), int(out_channels), **dict(config))
    return SegmentationModel(
        net,
        name=name,
        dim=dim,
        preset=preset,
        config=config,
        input_rule=rule,
        out_channels=int(out_channels),
    )


create_model = build_model
"""Alias with timm's name."""


def count_parameters(name: str, dim: str, preset: str = "seed", **overrides: Any) -> int:
    """Number of parameters of a configured model, built on the ``meta`` device when possible.

    MONAI's Swin encoder calls ``.item()`` while building (stochastic-depth rates), which the
    meta device cannot do; the 3D Swin is then built on the CPU (about 0.2 GB for the seed
    preset's 50 M parameters).
    """
    try:
        with torch.device("meta"):
            model = build_model(name, dim, preset=preset, **overrides)
    except (RuntimeError, NotImplementedError):
        model = build_model(name, dim, preset=preset, **overrides)
    return sum(p.numel() for p in model.parameters())
