"""A few training steps on crops labelled ``pm`` (fine) and ``mito`` (a group, issue 33 item 2):
the datasplit, the class frequencies and the trainer take group labels, and the loss's group
term trains the members through their union."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from cellseg.cli import main
from cellseg.data.store import EM_GROUP, LABELS_ROOT
from cellseg.training import Trainer, resolve_settings
from store_builders import annotation, write_multiscale


def write_store(data: Path) -> None:
    """4 crops of (4, 40, 40) voxels at 8 nm, 10 slices apart, on 8-bit EM whose bright discs are
    mitochondria (group ``mito``) and whose dark lines are membranes (``pm``)."""
    rng = np.random.default_rng(0)
    store = data / "grp" / "grp.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    yy, xx = np.mgrid[:48, :48]
    em = np.full((40, 48, 48), 120, dtype=np.uint8)
    mito = np.zeros(em.shape, dtype=np.uint8)
    pm = np.zeros(em.shape, dtype=np.uint8)
    for z in range(40):
        cy, cx = rng.integers(10, 38, size=2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
        mito[z][disc], em[z][disc] = 1, 200
        pm[z, :, z % 48], em[z, :, z % 48] = 1, 20
    write_multiscale(root, EM_GROUP, [em], [(8.0,) * 3], [(4.0,) * 3])
    for k in range(4):
        box = (slice(10 * k, 10 * k + 4), slice(4, 44), slice(4, 44))
        for name, labels in (("pm", pm), ("mito", mito)):
            values = labels[box].copy()
            values[:, :, :3] = 255  # an unknown strip
            write_multiscale(
                root,
                f"{LABELS_ROOT}/crop{k}/{name}",
                [values],
                [(8.0,) * 3],
                [(4.0 + 80.0 * k, 36.0, 36.0)],
                annotation(name),
            )


def test_a_model_trains_on_pm_and_the_mito_group(tiny_config, tmp_path):
    data = tmp_path / "data"
    write_store(data)
    split, frequencies = tmp_path / "datasplit.csv", tmp_path / "class_frequencies.json"
    assert main(["datasplit", "--root", str(data), "--out", str(split)]) == 0
    assert "[pm,mito]" in split.read_text()
    # mito's members have no fine label anywhere: imputed priors
    command = ["class-frequencies", "--datasplit", str(split), "--out", str(frequencies)]
    assert main([*command, "--allow-missing-classes"]) == 0
    tiny_config["data"]["allow_missing_classes"] = True
    run = tmp_path / "run"
    trainer = Trainer(resolve_settings(tiny_config, "unet_2d"), run, split, frequencies)
    assert trainer.run() == 0
    assert trainer.train_data.groups and trainer.validation_data.groups
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [0, 1]
    assert np.isfinite(history["train_loss"]).all()
