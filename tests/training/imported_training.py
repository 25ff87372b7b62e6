"""Training on a data root written by ``cellseg import``, as the workflow chains it: the
datasplit, the class frequencies (classes the import does not map get an imputed prior) and a
tiny training run. Shared by the tests of imported real EM and of group labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cellseg.cli import main
from cellseg.training import Trainer, resolve_settings


def train_on_imported(
    data: Path, config: dict[str, Any], tmp_path: Path
) -> tuple[Trainer, pd.DataFrame, Path]:
    """Split ``data``, count its class frequencies and train ``unet_2d`` with ``config`` (the
    tests' tiny config, ``allow_missing_classes`` turned on); returns the finished trainer, its
    ``history.csv`` and the datasplit CSV. Each command must succeed."""
    split, frequencies = tmp_path / "datasplit.csv", tmp_path / "class_frequencies.json"
    assert main(["datasplit", "--root", str(data), "--out", str(split)]) == 0
    command = ["class-frequencies", "--datasplit", str(split), "--out", str(frequencies)]
    assert main([*command, "--allow-missing-classes"]) == 0
    config["data"]["allow_missing_classes"] = True
    run = tmp_path / "run"
    trainer = Trainer(resolve_settings(config, "unet_2d"), run, split, frequencies)
    assert trainer.run() == 0
    return trainer, pd.read_csv(run / "history.csv"), split
