"""``cellseg predict`` as a user runs it, for the tests of the prediction store through the
command line: a fresh Python process on this checkout's sources (:func:`predict_cli`), or the
same command line run by the command's entry point in the test's process
(:func:`predict_in_process`)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import zarr

from checkpoint_builders import demo_unet_checkpoint

REPO = Path(__file__).resolve().parents[1]


def predict_cli(*arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m cellseg predict ARGUMENTS`` (``env`` added to this process's environment),
    its output captured as text; 300 s at most."""
    return subprocess.run(
        [sys.executable, "-m", "cellseg", "predict", *arguments],
        env=os.environ | {"PYTHONPATH": str(REPO / "src")} | (env or {}),
        capture_output=True,
        text=True,
        timeout=300,
    )


def predict_in_process(*arguments: str) -> subprocess.CompletedProcess:
    """``cellseg predict ARGUMENTS`` through the command's entry point (``cellseg.cli.main``:
    its parser, its one-line errors, its exit status) in this process, its output captured as
    text as :func:`predict_cli` returns it.

    For a run that needs no process of its own (never one that is killed: the kill would end
    the tests): a fresh process pays about 9 s of CPU importing torch and MONAI before it
    predicts a test's few blocks in about 1. Torch's thread count (``--threads``) is restored.
    """
    from cellseg.cli import main

    stdout, stderr, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = main(["predict", *arguments])
    finally:
        torch.set_num_threads(threads)
    command = ["cellseg", "predict", *arguments]
    return subprocess.CompletedProcess(command, status, stdout.getvalue(), stderr.getvalue())


def demo_options(folder: Path, em_path: Path, chunk: int, block: tuple[int, int, int]) -> list[str]:
    """The options of predicting ``em_path`` with a seeded untrained demo 2D UNet, whose
    ``best.pt`` is written to ``folder``: on the CPU, one thread, float32 probabilities, two
    pyramid levels, chunks of ``chunk`` voxels and blocks of ``block``."""
    checkpoint = folder / "best.pt"
    torch.manual_seed(0)
    torch.save(demo_unet_checkpoint(), checkpoint)
    options = ["--checkpoint", str(checkpoint), "--em", str(em_path), "--device", "cpu"]
    options += ["--chunk-voxels", str(chunk), "--block-voxels", *map(str, block)]
    return [*options, "--threads", "1", "--dtype", "float32", "--pyramid-levels", "2"]


def stored(out: Path, array: str) -> np.ndarray:
    """Array ``array`` of the store ``out`` (e.g. ``probabilities/mito/s0``), read whole."""
    return np.asarray(zarr.open_array(str(out / array), mode="r"))
