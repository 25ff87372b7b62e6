"""The summary of runs with untrained classes (issue 33): their ``dice_<class>`` stays empty
(never a 0), summary.md names them per run, the heatmap says grey may mean "not trained"; a run
that trained all 14 gets none of it (the demo's summary unchanged)."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cellseg.reporting.figures import heatmap_figure
from cellseg.reporting.markdown import summary_markdown
from cellseg.reporting.summary import summarize


def test_untrained_classes_are_named_and_never_scored(tmp_path):
    rows = [
        {"model": "unet", "dim": "3d", "adjustment": "train", "crop": f"d/crop{i}",
         "class": "pm", "tp": 10 + i, "fp": 3, "fn": 4, "tn": 100, "inference_seconds": 1.0}
        for i in range(4)
    ]  # fmt: skip
    metrics = tmp_path / "unet_3d.csv"
    pd.DataFrame(rows).to_csv(metrics, index=False)
    base = {"model": "unet", "dim": "3d", "preset": "demo", "parameters": 10, "epochs_run": 2,
            "best_epoch": 1, "best_val_mean_dice": 0.5, "stop_reason": "max_epochs",
            "train_seconds": 60.0, "gpus": 0, "cpu_hours": 0.1, "gpu_hours": 0.0}  # fmt: skip
    results = {}
    for run, extra in (("all", {}), ("pm_only", {"untrained_classes": ["ecs", "nuc"]})):
        train = tmp_path / f"{run}.json"
        train.write_text(json.dumps({**base, **extra}))
        results[run] = summarize({"unet_3d": metrics}, {"unet_3d": train}, expected=["unet_3d"])
    plain, marked = results["all"].table, results["pm_only"].table
    assert "untrained_classes" not in plain
    assert marked["untrained_classes"].iloc[0] == "ecs nuc"
    assert np.isnan(marked["dice_nuc"].iloc[0]) and np.isnan(marked["dice_ecs"].iloc[0])
    pd.testing.assert_frame_equal(marked.drop(columns="untrained_classes"), plain)
    assert "Classes not trained" not in summary_markdown(results["all"])
    section = summary_markdown(results["pm_only"]).split("## Classes not trained")[1]
    assert "- `unet_3d`: ecs, nuc" in section.split("\n## ")[0]
    for table, grey in ((plain, "it)"), (marked, "or not trained)")):
        figure = heatmap_figure(table)
        try:
            assert figure.axes[0].get_title().endswith(grey)
        finally:
            plt.close(figure)
