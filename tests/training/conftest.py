"""A tiny CellMap store, datasplit and class-frequency file for trainer tests (plain zarr)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from scipy import ndimage

from cellseg.classes import CLASSES
from cellseg.data.datasplit import write_datasplit
from cellseg.data.store import Crop
from store_builders import annotation, write_multiscale

REPO = Path(__file__).resolve().parents[2]


def write_level(group: zarr.Group, path: str, data: np.ndarray, attributes: dict | None = None):
    """One 8 nm level whose first voxel's centre is at 4 nm (the store's grid)."""
    write_multiscale(
        group, path, [data], [(8.0,) * 3], [(4.0,) * 3], attributes, chunks=(8, 32, 32)
    )


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """One store, three crops covering the whole EM (two train, one validate); blobs per class."""
    root = tmp_path_factory.mktemp("tiny")
    store = root / "data" / "tiny" / "tiny.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=2)
    rng = np.random.default_rng(0)
    shape = (16, 64, 64)
    field = ndimage.gaussian_filter(rng.normal(size=(len(CLASSES), *shape)), sigma=(0, 2, 4, 4))
    winner = field.argmax(axis=0)
    em = (30 + 10 * winner + rng.normal(0, 3, shape)).clip(0, 255).astype(np.uint8)
    write_level(group, "recon-1/em/fibsem-uint8", em)
    crops = []
    for index, (split, classes) in enumerate(
        [("train", CLASSES), ("train", CLASSES[:7]), ("validate", CLASSES)], start=1
    ):
        crop_group = f"recon-1/labels/groundtruth/crop{index}"
        for name in classes:
            labels = (winner == CLASSES.index(name)).astype(np.uint8)
            write_level(group, f"{crop_group}/{name}", labels, annotation(name))
        crops.append(
            Crop(store, "recon-1/em/fibsem-uint8", store, crop_group, tuple(classes), split)
        )
    datasplit = root / "datasplit.csv"
    write_datasplit(crops, datasplit)
    frequencies = root / "class_frequencies.json"
    priors = np.bincount(winner.ravel(), minlength=len(CLASSES)) / winner.size
    frequencies.write_text(
        json.dumps(
            {
                "classes": list(CLASSES),
                "resolution_nm": 8.0,
                "counted_at": "test",
                "per_class": {
                    n: {
                        "annotated_voxels": winner.size,
                        "positive_voxels": int(p * winner.size),
                        "crops": 2,
                        "prior": float(p),
                    }
                    for n, p in zip(CLASSES, priors, strict=True)
                },
            }
        )
    )
    return {"datasplit": datasplit, "class_frequencies": frequencies}


@pytest.fixture
def tiny_config() -> dict:
    """The repository's default config, shrunk to seconds per run."""
    config = copy.deepcopy(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    defaults = config["training"]["defaults"]
    defaults.update(
        max_epochs=2,
        checkpoint_every_steps=1,
        validation_patches_per_crop=2,
        log_every_steps=1,
        periodic_checkpoint_every_epochs=1,
        keep_periodic_checkpoints=1,
        tensorboard_images=1,
    )
    config["training"]["2d"].update(patch_shape=[32, 32], batch_per_gpu=2, iterations_per_epoch=4)
    config["training"]["3d"].update(
        patch_shape=[16, 32, 32], batch_per_gpu=1, iterations_per_epoch=3
    )
    config["loss"]["online_frequency_every"] = 2
    config["models"] = {"unet_2d": {}, "unet_3d": {}}
    return config
