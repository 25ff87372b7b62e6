"""The one inference path: MONAI's window placement and blending, reproduced by cellseg's own
sliding window; models that predict less than they read (valid convolutions)."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from cellseg.classes import NUM_CLASSES
from cellseg.data.multiscale import open_group, read_multiscale
from cellseg.data.store import EM_GROUP
from cellseg.errors import CellsegError
from cellseg.inference import (
    Blender,
    Predictor,
    WindowGrid,
    sliding_window_logits,
    window_starts,
)
from cellseg.prediction_geometry import PredictionSettings, block_logits, plan_prediction
from store_builders import write_multiscale
from tiny_nets import SeededConvNet


def settings(**options) -> SimpleNamespace:
    return SimpleNamespace(
        **({"overlap": 0.25, "blend_mode": "gaussian", "sw_batch_size": 3} | options)
    )


class ValidNet(nn.Module):
    """A valid 3x3x3 convolution (one voxel lost on each side), then a head: pointwise (so a
    whole-volume forward is the exact reference) or same-padded 3x3x3 (so blending matters)."""

    output_margin_voxels = (1, 1, 1)

    def __init__(self, head: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv3d(1, 5, 3, padding=0),
            nn.Tanh(),
            nn.Conv3d(5, NUM_CLASSES, head, padding=head // 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4 * self.net(x)


def test_window_starts_are_monai_s():
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for size, window, overlap in [(40, 16, 0.25), (16, 16, 0.5), (37, 8, 0.6), (9, 1, 0.25)]:
        interval = _get_scan_interval((size,), (window,), 1, (overlap,))
        expected = [s[0].start for s in dense_patch_slices((size,), (window,), interval)]
        assert window_starts(size, window, overlap) == expected


@pytest.mark.parametrize("blend_mode", ["gaussian", "constant"])
@pytest.mark.parametrize(
    ("shape", "roi"), [((1, 1, 13, 30, 37), (6, 12, 16)), ((3, 1, 30, 37), (12, 16))]
)
def test_sliding_window_equals_monai(shape, roi, blend_mode):
    from monai.inferers import sliding_window_inference

    network = SeededConvNet(len(roi), width=5, seed=0, scale=4).eval()
    image = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    ours = sliding_window_logits(network, image, roi, settings(blend_mode=blend_mode))
    with torch.no_grad():
        monai = sliding_window_inference(
            image, roi, 3, network, overlap=0.25, mode=blend_mode, progress=False
        )
    assert ours.shape == monai.shape
    torch.testing.assert_close(ours, monai, rtol=1e-5, atol=1e-5)


def test_valid_convolutions_equal_a_whole_volume_forward():
    """With a pointwise head the windows cannot change a voxel: whole-image and box-by-box runs
    (carried along z and along x) equal one forward pass over the whole image, shifted by the
    margin (a window read one voxel off would differ everywhere)."""
    network = ValidNet().eval()
    image = torch.rand((1, 1, 14, 29, 33), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = network(image)[0]  # (14, 12, 27, 31)
    ours = sliding_window_logits(network, image, (6, 10, 12), settings())[0]
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    model = Predictor(network, "valid", "3d", (6, 10, 12), 1.0)
    assert model.output_margin == (1, 1, 1) and model.output_window == (4, 8, 10)
    grid = WindowGrid.over(reference.shape[1:], model.output_window, model.output_margin, 0.25)
    volume = image[0, 0]

    def read(box):  # image index i reads input voxel i + margin
        return volume[tuple(slice(a + 1, b + 1) for a, b in box)]

    for axis, cuts in [(0, (0, 5, 9, 12)), (2, (0, 7, 20, 31))]:
        blender = Blender(model, grid, "gaussian", 2)
        boxes = []
        for k, (a, b) in enumerate(itertools.pairwise(cuts)):
            box = [(0, n) for n in reference.shape[1:]]
            box[axis] = (a, b)
            boxes.append((k, box))
        pieces = [logits for _, logits in blender.logits(read, boxes, carry_axis=axis)]
        torch.testing.assert_close(torch.cat(pieces, 1 + axis), reference, rtol=1e-5, atol=1e-5)
        # each window computed once: the carried ones are not recomputed
        assert blender.windows_run == grid.n_windows


def naive_blend(network: nn.Module, volume: np.ndarray, window: int, margin: int, overlap: float):
    """The contract written out window by window, with MONAI's importance map and patch
    placement: output windows of ``window - 2 margin`` tile the output with ``overlap``; each
    reads ``margin`` more voxels on every side."""
    from monai.data.utils import compute_importance_map, dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    out_window = (window - 2 * margin,) * 3
    shape = tuple(n - 2 * margin for n in volume.shape)
    weight = compute_importance_map(out_window, mode="gaussian", sigma_scale=0.125).numpy()
    interval = _get_scan_interval(shape, out_window, 3, (overlap,) * 3)
    sums = np.zeros((NUM_CLASSES, *shape))
    weights = np.zeros(shape)
    for slices in dense_patch_slices(shape, out_window, interval):
        read = tuple(slice(s.start, s.stop + 2 * margin) for s in slices)
        with torch.no_grad():
            logits = network(torch.from_numpy(volume[read])[None, None])[0].double().numpy()
        sums[(slice(None), *slices)] += logits * weight
        weights[slices] += weight
    return sums / weights


def test_valid_convolutions_with_a_same_padded_head_equal_a_naive_loop():
    network = ValidNet(head=3).eval()
    volume = np.random.default_rng(4).random((12, 17, 15), dtype=np.float32)
    ours = sliding_window_logits(
        network, torch.from_numpy(volume)[None, None], (8, 8, 8), settings()
    )
    expected = naive_blend(network, volume, 8, 1, 0.25)
    np.testing.assert_allclose(ours[0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_a_margin_that_does_not_match_the_network_is_one_line():
    network = ValidNet().eval()
    network.output_margin_voxels = (0, 0, 0)  # wrong: the network loses one voxel a side
    with pytest.raises(CellsegError, match="output_margin_voxels"):
        sliding_window_logits(network, torch.rand(1, 1, 10, 10, 10), (6, 6, 6), settings())
    network.output_margin_voxels = (3, 1, 1)  # leaves no output voxel of a 6-voxel window
    with pytest.raises(CellsegError, match="does not fit the window"):
        sliding_window_logits(network, torch.rand(1, 1, 10, 10, 10), (6, 6, 6), settings())


@pytest.fixture
def em_path(tmp_path: Path) -> Path:
    store = tmp_path / "vol" / "vol.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    em = np.random.default_rng(5).integers(0, 256, (11, 26, 23), dtype=np.uint8)
    write_multiscale(root, EM_GROUP, [em], [(8.0,) * 3], [(4.0, 4.0, 4.0)], chunks=(8, 16, 16))
    return store / EM_GROUP


def test_prediction_of_a_valid_convolution_model_reads_edge_context(em_path):
    """Blockwise prediction with a model that loses a voxel a side: the EM is read with the
    context plus that margin, beyond the volume repeating its edge, as a whole-volume forward
    over the edge-padded EM."""
    store = em_path.parents[2]
    em = read_multiscale(open_group(store), store, EM_GROUP)
    model = Predictor(ValidNet().eval(), "valid", "3d", (6, 10, 10), 8.0, em_range=(0.0, 255.0))
    options = PredictionSettings(chunk_voxels=4, block_voxels=(4, 12, 8), sw_batch_size=2)
    plan = plan_prediction(em, model, options)
    out = torch.full((NUM_CLASSES, *plan.shape), float("nan"))
    reader = plan.reader(em, model.em_range)
    for index, logits in block_logits(model, plan, reader, range(plan.n_blocks), options):
        out[(slice(None), *plan.block_box(index))] = logits
    raw = np.asarray(em.open_level(em.finest)[...], dtype=np.float32) / 255
    padded = np.pad(raw, [(m + 1, m + 1) for m in plan.margin], mode="edge")
    with torch.no_grad():
        whole = model.network(torch.from_numpy(padded)[None, None])[0]
    inner = tuple(slice(m, m + n) for m, n in zip(plan.margin, plan.shape, strict=True))
    torch.testing.assert_close(out, whole[(slice(None), *inner)], rtol=1e-5, atol=1e-5)


def test_float_em_off_the_scale_of_em_range_is_refused_where_it_is_read(tmp_path):
    """Evaluation and prediction read EM through EMReader: float EM in [0, 1] would clip to
    the bottom of [10.6, 194.1] everywhere; on the EM's own scale it is read."""
    from cellseg.inference import EMReader

    store = tmp_path / "vol" / "vol.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    em = np.full((4, 8, 8), 0.5, dtype=np.float32)
    write_multiscale(root, EM_GROUP, [em], [(8.0,) * 3], [(4.0, 4.0, 4.0)])
    multiscale = read_multiscale(open_group(store), store, EM_GROUP)
    level = multiscale.finest
    array = multiscale.open_level(level)
    with pytest.raises(CellsegError) as error:
        EMReader(array, level, (4.0, 4.0, 4.0), 8.0, (0, 0, 0), (10.6, 194.1))
    assert str(error.value) == (
        f"{store}/{EM_GROUP}/s0: float EM whose sampled values (central [4, 8, 8] voxels of s0) "
        "lie in [0.5, 0.5], 100% of them outside data.em_range = [10.6, 194.1] (raw 8-bit "
        "values), so they would clip to its bottom and the model would see a blank image; "
        "rescale the EM to uint8 (0-255), or set data.em_range to the EM's own scale (e.g. "
        "[0, 1])"
    )
    reader = EMReader(array, level, (4.0, 4.0, 4.0), 8.0, (0, 0, 0), (0.0, 1.0))
    np.testing.assert_allclose(reader.read(((0, 4), (0, 8), (0, 8))), 0.5)
