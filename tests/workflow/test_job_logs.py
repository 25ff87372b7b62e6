"""Every failed job's log ends with its error (issue 22, section 2).

Snakemake points the user to ``logs/<rule>/…log``; before cellseg.joblog a script rule closed
that file before its exception was written, so the log was empty. Here each script rule is
made to fail on bad input, through ``snakemake`` from a clone's root, and its log is read:
the data steps run for real, then the trained models are replaced by files that are not
checkpoints and the metrics (and figure slices) by files that are not (no training runs at all,
except one train job that fails on an unknown architecture option).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from pathlib import Path

import pytest
from workflow_runner import TEST_CONFIG
from workflow_runner import run_in_clone as run

pytestmark = pytest.mark.minutes(1)  # order: tests/conftest.py

LAST_LINE = re.compile(r"^cellseg( [a-z-]+)?: error: \S")


def plant(clone: Path, run_name: str, metrics: bool) -> None:
    """A run's train outputs (and its evaluation's: metrics and figure slices) as files of the
    right names and the wrong content."""
    models = clone / "results" / "models" / run_name
    models.mkdir(parents=True, exist_ok=True)
    (models / "best.pt").write_bytes(b"this is not a checkpoint")
    (models / "history.csv").write_text("not,a\nhistory,table\n")
    (models / "train_summary.json").write_text("{}\n")
    if metrics:
        (clone / "results" / "metrics").mkdir(parents=True, exist_ok=True)
        (clone / "results" / "metrics" / f"{run_name}.csv").write_text("not,a\nmetrics,table\n")
        # what the visualize job draws (cellseg.figure_slices)
        (clone / "results" / "metrics" / f"{run_name}.figure_slices.npz").write_bytes(b"not npz")


def last_line(clone: Path, log: str) -> str:
    lines = (clone / log).read_text().strip().splitlines()
    assert lines, f"{log} is empty"
    return lines[-1]


def test_every_failed_job_s_log_ends_with_its_error(clone):
    preset = clone / "config" / "experiments" / "bad_architecture.yaml"
    preset.write_text("models:\n  unet_2d: {architecture: {bogus: 1}}\n  unet_3d: {}\n")
    config = ("--configfile", str(TEST_CONFIG), str(preset))
    run(clone, "--cores", "2", "results/class_frequencies.json", *config)
    for name in ("unet_2d", "unet_3d"):
        plant(clone, name, metrics=True)
    plant(clone, "unet_2d~r5", metrics=False)  # evaluated below, outside the summary's inputs
    targets = {
        "logs/evaluate/unet_2d~r5.log": "results/metrics/unet_2d~r5.csv",
        "logs/visualize/unet_2d.log": "results/figures/unet_2d/samples.png",
        "logs/summary.log": "results/summary.csv",
        "logs/study.log": "results/study.csv",
        "logs/predict/unet_2d/jrc_demo-1.init.log": (
            "results/predictions/unet_2d/.work/jrc_demo-1.zarr/.cellseg/init.json"
        ),
        "logs/train/unet_2d~r7.log": "results/models/unet_2d~r7/best.pt",
    }
    result = run(clone, "--cores", "2", "--keep-going", *targets.values(), *config, check=False)
    assert result.returncode != 0
    for log in targets:
        assert log in result.stderr, f"snakemake does not point to {log}"
        line = last_line(clone, log)
        assert LAST_LINE.match(line), f"{log} ends with {line!r}"
        assert "lost sys.stderr" not in (clone / log).read_text()
    assert "unknown option(s) 'bogus'" in last_line(clone, "logs/train/unet_2d~r7.log")
    # bad input to the evaluation: the checkpoint is named, with no traceback before it
    evaluate = (clone / "logs/evaluate/unet_2d~r5.log").read_text()
    assert "Traceback" not in evaluate and "best.pt" in evaluate.splitlines()[-1], evaluate
    # the resolved-config record on a full disk (a 64 KiB tmpfs over results/, when allowed)
    with full_results(clone) as full:
        if full:
            record = run(
                clone, "--cores", "1", "results/config.resolved.yaml", *config, check=False
            )
            assert record.returncode != 0
            line = last_line(clone, "logs/resolved_config.log")
            assert LAST_LINE.match(line) and "no space left on the device" in line, line


@contextlib.contextmanager
def full_results(clone: Path):
    """``results/`` as a full 64 KiB tmpfs, yielding whether it could be mounted (root only)."""
    results = clone / "results"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(results)], capture_output=True
    )
    if mounted.returncode != 0:
        yield False
        return
    try:
        with contextlib.suppress(OSError), open(results / "filler", "wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
        yield True
    finally:
        subprocess.run(["umount", str(results)], check=True)
