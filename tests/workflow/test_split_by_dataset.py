"""``data.split_by`` and ``data.split_margin_nm`` reach the datasplit step through the
``snakemake`` command in a clone's root, with the local profile and the tests' preset, as users
run it (issue 32)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from workflow_runner import run_in_clone as run


def test_split_by_dataset_holds_out_whole_datasets(clone: Path) -> None:
    result = run(
        clone,
        "--profile", "config/profiles/local",
        "--configfile", ".test/config/config.yaml",
        "--cores", "1",
        "results/datasplit.csv",
        "--config", "data={'split_by': 'dataset', 'split_margin_nm': 100}",
    )  # fmt: skip
    shell = result.stdout + result.stderr
    assert "--split-margin-nm 100 --split-by dataset" in shell  # printshellcmds: the real call
    splits: dict[str, set[str]] = defaultdict(set)
    with (clone / "results/datasplit.csv").open(newline="") as handle:
        for split, _, _, label_store, _ in csv.reader(handle):
            splits[Path(label_store).stem].add(split)
    # the small demo's 4 datasets: each in exactly one split, and all three splits used
    assert len(splits) == 4
    assert all(len(used) == 1 for used in splits.values()), dict(splits)
    assert {split for used in splits.values() for split in used} == {"train", "validate", "test"}
