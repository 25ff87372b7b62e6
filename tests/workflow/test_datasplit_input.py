"""The user's datasplit CSV is an input of the ``datasplit`` rule, checked there as a whole
(issue 22 §3), through the ``snakemake`` command in a clone's root as the README runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from workflow_runner import run_in_clone as run

from store_builders import annotation, write_multiscale

CONFIG = (
    "--config",
    "data={'demo': {'enabled': False}, 'datasplit_csv': 'my_split.csv', "
    "'allow_missing_classes': True}",
)


def row(split: str, crop: int) -> str:
    store = "mydata/ds/ds.zarr"
    return (
        f'"{split}","{store}","recon-1/em/fibsem-uint8","{store}",'
        f'"recon-1/labels/groundtruth/crop{crop}/[ecs,pm]"\n'
    )


def write_data(clone: Path) -> None:
    """``mydata/ds/ds.zarr``: 8 nm EM and four crops annotating ecs (present) and pm (absent),
    each 32 × 64 × 64 nm, 64 nm apart in y-x (crops that share voxels must share a split); a
    fifth, crop4, on crop3's box shifted by 32 nm along x (half of crop3's box)."""
    root = zarr.open_group(str(clone / "mydata/ds/ds.zarr"), mode="w", zarr_format=2)
    em = np.full((16, 32, 32), 100, dtype=np.uint8)
    write_multiscale(root, "recon-1/em/fibsem-uint8", [em], [(8.0,) * 3], [(4.0,) * 3])
    places = [(20.0, 20.0 + 128 * (crop // 2), 20.0 + 128 * (crop % 2)) for crop in range(4)]
    places.append((20.0, 148.0, 180.0))
    for crop, place in enumerate(places):
        for name, value in (("ecs", 1), ("pm", 0)):
            write_multiscale(
                root,
                f"recon-1/labels/groundtruth/crop{crop}/{name}",
                [np.full((4, 8, 8), value, dtype=np.uint8)],
                [(8.0,) * 3],
                [place],
                annotation(name),
            )


def test_an_edit_of_the_user_datasplit_replans_and_a_bad_one_stops_at_the_datasplit(clone):
    write_data(clone)
    user = clone / "my_split.csv"
    user.write_text(row("train", 0) + row("train", 1) + row("validate", 2) + row("test", 3))
    frequencies = clone / "results/class_frequencies.json"
    run(clone, "--cores", "1", str(frequencies.relative_to(clone)), *CONFIG)
    assert (clone / "results/datasplit.csv").read_text().count('"test"') == 1
    counted = frequencies.read_text()
    # an edit (crops 2 and 3 trade places) re-plans the split and what depends on it
    user.write_text(row("train", 0) + row("train", 1) + row("test", 2) + row("validate", 3))
    dry = run(clone, "-n", "results/class_frequencies.json", *CONFIG)
    assert "reason: Updated input files: my_split.csv" in dry.stdout
    assert "rule class_frequencies:" in dry.stdout
    # a crop listed twice is refused at the datasplit step, the line on the console and in
    # the log; the user's CSV and what was computed before stay
    bad = user.read_text() + row("train", 0)
    user.write_text(bad)
    refused = run(clone, "--cores", "1", "results/class_frequencies.json", *CONFIG, check=False)
    line = (
        "cellseg datasplit: error: my_split.csv:5: crop ds/crop0 is listed again (train; first "
        "at my_split.csv:1); it would be counted twice: delete one row"
    )
    assert refused.returncode != 0 and line in refused.stdout + refused.stderr
    assert (clone / "logs/datasplit.log").read_text().strip().splitlines()[-1] == line
    assert user.read_text() == bad and frequencies.read_text() == counted
    # a crop sharing half its box with a test crop, in train: refused, naming both (issue 32)
    user.write_text(row("train", 0) + row("train", 4) + row("test", 2) + row("validate", 3))
    refused = run(clone, "--cores", "1", "results/class_frequencies.json", *CONFIG, check=False)
    line = (
        "cellseg datasplit: error: my_split.csv:4: ds/crop3 (validate) overlaps ds/crop4 (train) "
        "by 32×64×32 nm (50 % of crop3): put them in one split"
    )
    assert refused.returncode != 0 and line in refused.stdout + refused.stderr
    assert frequencies.read_text() == counted


def test_a_reversed_em_range_is_refused_when_planning(clone):
    result = run(clone, "-n", "--config", "data={'em_range': [194.1, 10.6]}", check=False)
    assert result.returncode != 0
    assert "data.em_range = [194.1, 10.6] must be [low, high] with 0 <= low < high <= 255" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
