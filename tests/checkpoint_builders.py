"""Checkpoints as the trainer writes them, for the tests that read them (evaluation, prediction)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from cellseg.classes import NUM_CLASSES


def demo_unet_checkpoint(train: Sequence[str] = (), validate: Sequence[str] = ()) -> dict:
    """A ``best.pt`` of an untrained demo 2D UNet (32×32 patches at 8 nm, EM range 0-255),
    recording ``train`` and ``validate`` as the crops it was trained and validated on."""
    from cellseg.models import build_model

    return {
        "format": "cellseg-model-1",
        "model": build_model("unet", "2d", preset="demo").state_dict(),
        "settings": {
            "model": "unet",
            "dim": "2d",
            "preset": "demo",
            "patch_shape": (32, 32),
            "resolution_nm": 8.0,
            "em_range": (0.0, 255.0),
            "loss": {"inference_logit_adjustment": "train"},
        },
        "architecture": {},
        "logit_shift": torch.zeros(NUM_CLASSES),
        "data_identity": {
            "train": list(train),
            "validate": list(validate),
            "prior": [0.1] * NUM_CLASSES,
        },
    }


def cosem_weights_file(path: Path, network: torch.nn.Module) -> Path:
    """``network``'s weights (a cellmap-models COSEM ``Architecture``) as a COSEM weights file:
    ``{"model": ...}`` with the names that cellmap-models' ``load_model`` renames (an
    ``architecture.`` prefix, and ``chain.*`` duplicates of every tensor)."""
    model = {}
    for name, tensor in network.state_dict().items():
        if name.startswith("prediction_head."):
            model[name] = tensor
            model[name.replace("prediction_head.", "chain.1.")] = tensor
        else:
            model[f"architecture.{name}"] = tensor
            model[f"chain.0.{name}"] = tensor
    torch.save({"model": model}, path)
    return path
