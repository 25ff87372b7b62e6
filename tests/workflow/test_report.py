"""The HTML report of a finished tiny run holds the summary, the per-model figures and tables."""

from __future__ import annotations

import base64
import shutil

import pandas as pd
import pytest
from workflow_runner import TEST_CONFIG, snakemake

from cellseg.reporting import BASELINE
from cellseg.reporting.figures import SUMMARY_FIGURES

pytestmark = pytest.mark.minutes(0.5)  # order: tests/conftest.py


@pytest.mark.slow
def test_report_embeds_summary_figures_and_tables(finished_run, tmp_path):
    # the session's run is shared: the report goes into a copy
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir, symlinks=True)
    summary = pd.read_csv(workdir / "results" / "summary.csv")
    assert set(summary["model"]) == {"unet_2d", "unet_3d", BASELINE}
    assert summary["mean_dice"].between(0, 1).all()
    markdown = (workdir / "results" / "summary.md").read_text()
    assert "scores 1" in markdown and "Missing from this comparison" in markdown

    snakemake(workdir, "--configfile", str(TEST_CONFIG), "--report", "results/report.html")
    html = (workdir / "results" / "report.html").read_text()
    embedded = [
        workdir / "results" / "summary.csv",
        workdir / "results" / "summary.md",
        *(workdir / "results" / "figures" / "summary" / name for name in SUMMARY_FIGURES),
        *(
            workdir / "results" / "figures" / key / name
            for key in ("unet_2d", "unet_3d")
            for name in ("samples.png", "classes.png", "training_curves.png")  # visualize's
        ),
        workdir / "results" / "metrics" / "unet_3d.csv",
    ]
    for path in embedded:
        # the report is self-contained: each file's bytes are inside it (base64)
        assert base64.b64encode(path.read_bytes()).decode() in html, path
