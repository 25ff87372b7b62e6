"""A chunk file lost from a finished prediction block is found and the block redone (issue 35):
through ``cellseg predict``, on a complete store and on a half-done one. The killed run is a
process of its own; the other commands run through the command's entry point in the test's
process (a fresh process would spend most of its CPU importing torch and MONAI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from cellseg.data.store import EM_GROUP
from cellseg.prediction import KILL_AFTER_ENV
from predict_cli import demo_options, predict_cli
from predict_cli import predict_in_process as predict
from predict_cli import stored as values
from store_builders import write_multiscale

pytestmark = pytest.mark.minutes(0.5)  # order: tests/conftest.py


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, list[str]]:
    """Random EM (16 x 40 x 40 at 8 nm), a demo 2D UNet's best.pt, and the command's options:
    8 blocks of (8, 32, 32) in chunks of 8."""
    root_dir = tmp_path_factory.mktemp("lost")
    store = root_dir / "vol" / "vol.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    em = np.random.default_rng(1).integers(0, 256, (16, 40, 40), dtype=np.uint8)
    write_multiscale(root, EM_GROUP, [em], [(8.0,) * 3], [(4.0,) * 3])
    return root_dir, demo_options(root_dir, store / EM_GROUP, 8, (8, 32, 32))


ARRAY = "probabilities/mito_mem/s0"


def test_a_chunk_lost_from_a_complete_prediction_is_named_and_redone(setup):
    root_dir, options = setup
    out = root_dir / "complete.zarr"
    first = predict(*options, "--out", str(out))
    assert first.returncode == 0, first.stderr
    before = {a: values(out, a) for a in (ARRAY, "masks/mito_mem/s0", "probabilities/mito_mem/s1")}
    chunk = out / ARRAY / "1.0.1"  # z 8:16, y 0:8, x 8:16: block 4 (blocks run x, y, z)
    assert chunk.is_file()
    chunk.unlink()
    assert values(out, ARRAY)[8:16, 0:8, 8:16].max() == 0  # read back as probability 0
    rerun = predict(*options, "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr
    # named on the console: the file and its block, and what is done about it
    assert f"{ARRAY}/1.0.1" in rerun.stderr and "1 finished blocks (4)" in rerun.stderr
    assert "predicting those blocks and the pyramid again" in rerun.stderr
    assert "1 blocks predicted, 7 already done" in rerun.stderr
    assert chunk.is_file()
    attrs = json.loads((out / ".zattrs").read_text())["cellseg"]
    assert attrs["complete"] is True
    for array, expected in before.items():  # the same store as before the loss
        np.testing.assert_array_equal(values(out, array), expected, err_msg=array)
    # a rerun of an intact store does nothing
    again = predict(*options, "--out", str(out))
    assert again.returncode == 0 and "gone" not in again.stderr and "complete" in again.stderr


def test_a_chunk_lost_from_a_finished_block_of_a_killed_run_is_redone(setup):
    root_dir, options = setup
    out = root_dir / "killed.zarr"
    killed = predict_cli(*options, "--out", str(out), env={KILL_AFTER_ENV: "3"})
    assert killed.returncode == -9, killed.stderr
    marker = json.loads((out / ".cellseg" / "blocks" / "0.json").read_text())
    stored = [k for k, bits in marker["chunks"].items() if int(bits, 16)]
    assert ARRAY in stored  # the record: which chunk files block 0 stored
    (out / ARRAY / "0.0.0").unlink()
    # the pyramid stage refuses to build a half-done store
    pyramid = predict(*options, "--out", str(out), "--stage", "pyramid")
    assert pyramid.returncode == 2 and "Traceback" not in pyramid.stderr, pyramid.stderr
    assert "not predicted yet" in pyramid.stderr.splitlines()[-1]  # blocks 3.. are missing
    resumed = predict(*options, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"block 0: 1 chunk files it wrote are gone ({ARRAY}/0.0.0)" in resumed.stderr
    assert "6 blocks predicted, 2 already done" in resumed.stderr
    whole = root_dir / "whole.zarr"
    assert predict(*options, "--out", str(whole)).returncode == 0
    np.testing.assert_allclose(values(out, ARRAY), values(whole, ARRAY), atol=1e-6)


def test_the_pyramid_stage_names_a_lost_chunk_and_drops_its_marker(setup):
    root_dir, options = setup
    out = root_dir / "staged.zarr"
    assert predict(*options, "--out", str(out), "--stage", "init").returncode == 0
    assert predict(*options, "--out", str(out), "--stage", "blocks").returncode == 0
    (out / ARRAY / "1.4.4").unlink()  # z 8:16, y 32:40, x 32:40: block 7
    pyramid = predict(*options, "--out", str(out), "--stage", "pyramid")
    assert pyramid.returncode == 2 and "Traceback" not in pyramid.stderr, pyramid.stderr
    error = pyramid.stderr.splitlines()[-1]  # one line
    assert f"{ARRAY}/1.4.4" in error and "(block 7:" in error, error
    assert not (out / ".cellseg" / "blocks" / "7.json").exists()
    blocks = predict(*options, "--out", str(out), "--stage", "blocks")
    assert "1 blocks predicted, 7 already done" in blocks.stderr, blocks.stderr
    assert predict(*options, "--out", str(out), "--stage", "pyramid").returncode == 0
