"""Tiny networks and their predictors, shared by the inference, prediction, TTA, window-grid,
evaluation and figure tests.

A module of its own (not conftest) so tests of every folder import it by a unique name
(``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import zarr
from torch import nn

from cellseg.classes import CLASS_INDEX, NUM_CLASSES
from cellseg.data.store import EM_GROUP
from cellseg.inference import Predictor
from store_builders import write_multiscale


class SeededConvNet(nn.Module):
    """Two seeded 3x3(x3) same-padded convolutions (1 -> ``width`` -> 14 channels, a tanh
    between) times ``scale``: a receptive field wider than one voxel, so window borders see zero
    padding and blending matters (a window's border voxels differ from the same voxels inside
    another window). ``dims`` 2 or 3; ``seed`` is set just before the weights are drawn."""

    def __init__(self, dims: int, width: int, seed: int, scale: float) -> None:
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            conv(1, width, 3, padding=1), nn.Tanh(), conv(width, NUM_CLASSES, 3, padding=1)
        )
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.net(x)


class MemberNet(nn.Module):
    """``mito_mem`` where the EM is 255, ``mito_lum`` where it is 170, ``pm`` where it is 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0]
        logits = torch.full((x.shape[0], NUM_CLASSES, *x.shape[2:]), -10.0)
        logits[:, CLASS_INDEX["mito_mem"]] = torch.where(v > 0.9, 10.0, -10.0)
        logits[:, CLASS_INDEX["mito_lum"]] = torch.where((v > 0.5) & (v < 0.9), 10.0, -10.0)
        logits[:, CLASS_INDEX["pm"]] = torch.where(v < 0.1, 10.0, -10.0)
        return logits


def tiny_predictor(
    network: nn.Module,
    dim: str,
    patch_shape: tuple[int, ...],
    model: str = "conv",
    logit_shift: torch.Tensor | None = None,
) -> Predictor:
    """A :class:`Predictor` at 8 nm over uint8 EM (0..255), no logit shift unless given."""
    shift = torch.zeros(NUM_CLASSES) if logit_shift is None else logit_shift
    return Predictor(
        network, model, dim, patch_shape, 8.0, em_range=(0.0, 255.0), logit_shift=shift
    )


def write_level(root: zarr.Group, group: str, data: np.ndarray, start: float) -> None:
    """One 8 nm level of ``data`` whose first voxel starts at ``start`` nm, one chunk."""
    write_multiscale(root, group, [data], [(8.0,) * 3], [(start + 4.0,) * 3], chunks=data.shape)


def member_em_store(tmp_path: Path) -> tuple[Path, zarr.Group]:
    """``toy/toy.zarr`` whose EM (8 nm, 4 x 8 x 8) is 255 at x index 0-1, 170 at 2-3 and 0 at
    4-7: :class:`MemberNet` sees mito_mem, mito_lum and pm there. Returns the path and root."""
    path = tmp_path / "toy" / "toy.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    em = np.zeros((4, 8, 8), dtype=np.uint8)
    em[..., :2], em[..., 2:4] = 255, 170
    write_level(root, EM_GROUP, em, 0.0)
    return path, root
