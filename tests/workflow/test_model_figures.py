"""The visualize rule through ``snakemake`` from a clone's root (issue 34 item 4): besides the
sample panels and training curves, each model gets ``classes.png``, the EM, truth and prediction
of every class a test crop annotates, each class framed in its palette colour. The model is an
untrained checkpoint planted where training writes it: the drawing is what runs, not training."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from workflow_runner import TEST_CONFIG
from workflow_runner import run_in_clone as run

from cellseg.classes import CLASSES
from cellseg.data.datasplit import read_datasplit
from cellseg.palette import rgb255
from checkpoint_builders import demo_unet_checkpoint

pytestmark = pytest.mark.minutes(1.5)  # order: tests/conftest.py


@pytest.mark.slow
def test_visualize_draws_every_class_of_a_test_crop_in_its_colour(clone):
    config = ("--configfile", str(TEST_CONFIG))
    run(clone, "--cores", "2", "results/class_frequencies.json", *config)
    models = clone / "results" / "models" / "unet_2d"
    models.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(demo_unet_checkpoint(), models / "best.pt")
    (models / "history.csv").write_text(
        "epoch,train_loss,val_loss,lr,val_mean_dice\n0,0.9,0.95,0.001,0.1\n1,0.8,0.9,0.0005,0.2\n"
    )
    (models / "train_summary.json").write_text(json.dumps({}))
    figures = clone / "results" / "figures" / "unet_2d"
    run(clone, "--cores", "2", "results/figures/unet_2d/classes.png", *config)
    assert (figures / "samples.png").is_file() and (figures / "training_curves.png").is_file()
    pixels = np.asarray(
        Image.open(io.BytesIO((figures / "classes.png").read_bytes())).convert("RGB")
    )
    # the classes some test crop annotates, each framed in its exact colour (panel borders)
    annotated = {n for crop in read_datasplit(clone / "results" / "datasplit.csv", ["test"])
                 for n in crop.classes if n in CLASSES}  # fmt: skip
    assert annotated
    for name in CLASSES:
        count = int((pixels == rgb255(name)).all(axis=-1).sum())
        if name in annotated:
            assert count > 200, f"{name}'s panels are not in its colour ({count} pixels)"
