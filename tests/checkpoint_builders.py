"""Checkpoints as the trainer writes them, for the tests that read them (evaluation, prediction)."""

from __future__ import annotations

from collections.abc import Sequence

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
