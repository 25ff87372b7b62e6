"""A few training steps on crops imported by ``cellseg import`` with a ``pm`` mask (fine) and a
``mito`` mask (a group, issue 33 item 2): the import, the datasplit, the class frequencies and
the trainer take group labels, and the loss's group term trains the members through their
union."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from imported_training import train_on_imported

from cellseg.classes import CLASSES, GROUP_NAMES, GROUPS
from cellseg.data.importer import import_mapping
from cellseg.inference import Predictor
from import_builders import dataset_entry, write_mapping


def write_sources(folder: Path) -> Path:
    """A lab's own volume as ``cellseg import`` takes it: 8-bit EM (40, 48, 48) at 8 nm whose
    bright discs are mitochondria (mask ``mito``, a group) and dark lines membranes (mask ``pm``),
    4 crops of (4, 40, 40) voxels 10 slices apart; returns the mapping file."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    em = np.full((40, 48, 48), 120, dtype=np.uint8)
    mito = np.zeros(em.shape, dtype=np.uint8)
    pm = np.zeros(em.shape, dtype=np.uint8)
    for z in range(40):
        cy, cx = rng.integers(10, 38, size=2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
        mito[z][disc], em[z][disc] = 1, 200
        pm[z, :, z % 48], em[z, :, z % 48] = 1, 20
    for name, array in (("em", em), ("mito", mito), ("pm", pm)):
        np.save(folder / f"{name}.npy", array)
    labels = {
        "kind": "masks",
        "overlap": "unknown",  # a membrane line crossing a disc: both claim those voxels
        "masks": {"pm": {"path": "pm.npy"}, "mito": {"path": "mito.npy"}},
    }
    crops = [
        {"name": f"crop{k}", "start": [10 * k, 4, 4], "size": [4, 40, 40], "unit": "voxels"}
        for k in range(4)
    ]
    return write_mapping(folder, dataset_entry("grp", "em.npy", labels, crops=crops))


def test_a_model_trains_on_pm_and_the_mito_group(tiny_config, tmp_path):
    data = tmp_path / "data"
    import_mapping(write_sources(tmp_path), data)
    # mito's members have no fine label anywhere: imputed priors
    trainer, history, split = train_on_imported(data, tiny_config, tmp_path)
    assert "[pm,mito]" in split.read_text()
    assert trainer.train_data.groups and trainer.validation_data.groups
    assert list(history["epoch"]) == [0, 1]
    assert np.isfinite(history["train_loss"]).all()
    # trained: pm, and mito's members through the group; the run's outputs say so (issue 33)
    trained = ["pm", *GROUPS["mito"]]
    best = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=False)
    assert best["trained_classes"] == trained
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["untrained_classes"] == [c for c in CLASSES if c not in trained]
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("untrained classes: ecs, golgi_mem") == 1
    assert Predictor.from_checkpoint(tmp_path / "run" / "best.pt").trained_classes == tuple(trained)
    # the validation crop's mito label is scored (issue 33): its Dice has a column of its own,
    # and the mean that selects best.pt is over pm and mito
    assert {f"val_dice_{g}" for g in GROUP_NAMES} <= set(history.columns)
    assert history["val_dice_mito"].between(0, 1).all()
    labels = history[[f"val_dice_{name}" for name in (*CLASSES, *GROUP_NAMES)]]
    np.testing.assert_allclose(history["val_mean_dice"], labels.mean(axis=1, skipna=True))
    assert labels.notna().sum(axis=1).eq(2).all(), "pm and mito, nothing else"
    # best.pt records the group it learnt from labels of (cellseg predict's groups: auto)
    assert best["trained_groups"] == ["mito"]
    assert Predictor.from_checkpoint(tmp_path / "run" / "best.pt").trained_groups == ("mito",)
