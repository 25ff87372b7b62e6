"""``cellseg evaluate`` on a datasplit CSV that never went through ``cellseg datasplit`` runs the
datasplit step's label checks before scoring (issue 35): a lost label chunk would score an empty
class's Dice 1.0 instead of 0."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cellseg.cli import main
from checkpoint_builders import demo_unet_checkpoint
from store_builders import SEMANTIC

LABELS = "recon-1/labels/groundtruth"


def test_evaluate_refuses_a_lost_label_chunk_of_a_hand_written_csv(make_store, tmp_path, capsys):
    s0 = np.zeros((8, 16, 16), dtype=np.uint8)
    s0[:, 8:, 8:] = 1  # the object fills chunk 0.1.1 of s0 (8-voxel chunks); the others are absent
    ecs = ([s0, s0[::2, ::2, ::2].copy()], [(4.0,) * 3, (8.0,) * 3], [(18.0,) * 3, (20.0,) * 3])
    store = make_store(
        "ds", np.full((16, 32, 32), 100, dtype=np.uint8), {"crop1": {"ecs": (*ecs, SEMANTIC)}}
    )
    # written by hand, as a user would, never through `cellseg datasplit`
    csv = tmp_path / "my_split.csv"
    em = "recon-1/em/fibsem-uint8"
    csv.write_text(f'"test","{store}","{em}","{store}","{LABELS}/crop1/[ecs]"\n')
    checkpoint = tmp_path / "best.pt"
    torch.save(demo_unet_checkpoint(["other/crop9"], ["other/crop8"]), checkpoint)
    out = tmp_path / "metrics.csv"
    command = [
        "evaluate", "--checkpoint", str(checkpoint), "--datasplit", str(csv), "--out", str(out),
        "--device", "cpu",
    ]  # fmt: skip
    assert main(command) == 0, capsys.readouterr().err  # intact, it is scored
    assert set(pd.read_csv(out)["class"]) == {"ecs"}
    out.unlink()
    array = store / LABELS / "crop1" / "ecs" / "s0"
    files = sorted(p.name for p in array.iterdir())
    (array / "0.1.1").unlink()  # lost in a copy: crop1's ecs now reads as absent everywhere
    capsys.readouterr()
    assert main(command) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"cellseg evaluate: error: {csv}:1: {array}: chunk [0, 1, 1] (file {array}/0.1.1) is "
        "not stored, so it reads as 0 (absent), but the coarser level s1 holds 64 present"
    ), lines[0]
    assert "copy the array again" in lines[0]
    # nothing scored, nothing written, nothing else of the store touched
    assert not out.exists()
    assert sorted(p.name for p in array.iterdir()) == [f for f in files if f != "0.1.1"]
