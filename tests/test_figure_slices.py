"""The figure slices file (cellseg.figure_slices): what evaluation writes the figures read back
whole, in order; anything else is one line naming the file and the fix."""

from __future__ import annotations

import numpy as np
import pytest

from cellseg.classes import NUM_CLASSES
from cellseg.errors import CellsegError
from cellseg.figure_slices import (
    FigureSlice,
    FigureSlices,
    ModelFigureSettings,
    read_figure_slices,
    write_figure_slices,
)


def a_slice(k: int, channels: int = NUM_CLASSES) -> FigureSlice:
    rng = np.random.default_rng(k)
    target = rng.integers(0, 2, (channels, 3, 5)).astype(np.float32)
    target[:, 0] = np.nan  # unannotated
    return FigureSlice(
        f"ds/crop{k}", k, rng.random((3, 5), dtype=np.float32), target,
        rng.random((NUM_CLASSES, 3, 5), dtype=np.float32),
    )  # fmt: skip


def test_figure_slices_come_back_as_written(tmp_path):
    # twelve samples: sample10 stays after sample9 (not sorted as text)
    written = FigureSlices(
        "unet_2d", "train", 0.4, ("pm", "mito_mem"), (16.0, 8.0, 8.0),
        tuple(a_slice(k) for k in range(12)), a_slice(99, NUM_CLASSES + 5), ("pm", "mito"),
    )  # fmt: skip
    path = tmp_path / "unet_2d.figure_slices.npz"
    write_figure_slices(path, written)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
    read = read_figure_slices(path)
    for name in ("model", "mode", "threshold", "trained_classes", "resolution_nm", "names"):
        assert getattr(read, name) == getattr(written, name), name
    assert [s.crop for s in read.samples] == [f"ds/crop{k}" for k in range(12)]
    pairs = zip((*read.samples, read.classes), (*written.samples, written.classes), strict=True)
    for got, want in pairs:
        assert got.z == want.z
        for array in ("em", "target", "probabilities"):
            np.testing.assert_array_equal(getattr(got, array), getattr(want, array))
            assert getattr(got, array).dtype == np.float32


def test_no_test_crop_keeps_no_class_panel(tmp_path):
    path = tmp_path / "x.npz"
    write_figure_slices(path, FigureSlices("m_2d", "none", 0.5, ("pm",), (8.0,) * 3, ()))
    read = read_figure_slices(path)
    assert read.samples == () and read.classes is None


@pytest.mark.parametrize("content", [b"not a zip", None])
def test_a_file_that_is_not_figure_slices_is_one_line(tmp_path, content):
    path = tmp_path / "run.figure_slices.npz"
    if content is not None:
        path.write_bytes(content)
    else:
        np.savez(path, other=np.zeros(2))  # an npz without meta
    with pytest.raises(CellsegError) as error:
        read_figure_slices(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "evaluate" in message


def test_figure_settings_come_from_the_evaluation_section():
    assert ModelFigureSettings.from_config({"figure_samples": 5, "figure_seed": 7}) == (
        ModelFigureSettings(samples=5, seed=7)
    )
    assert ModelFigureSettings.from_config(None) == ModelFigureSettings(3, 42)
