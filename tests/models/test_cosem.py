"""cosem_3d: COSEM's setup04 built by cellmap-models, its valid-convolution shapes, and COSEM
weights files loading into it (saved from a freshly built network: nothing is downloaded)."""

from __future__ import annotations

import sys
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

import pytest
import torch

from cellseg.errors import CellsegError
from cellseg.models import build_model, count_parameters, model_config
from cellseg.models.cosem import output_shape
from cellseg.models.margin import crop_margin
from cellseg.training.init import initialize_weights
from checkpoint_builders import cosem_weights_file

cosem = pytest.importorskip("cellmap_models.pytorch.cosem")
from cellmap_models.pytorch.cosem.load_model import Architecture  # noqa: E402

SETUP04 = Path(cosem.__file__).parent / "setup04" / "model.py"


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building or loading must never reach cellmap_models' downloader."""

    def refuse(*args, **kwargs):
        raise AssertionError("cellmap_models tried to download")

    import cellmap_models

    # the module, which the package's load_model function shadows as an attribute
    module = sys.modules["cellmap_models.pytorch.cosem.load_model"]
    monkeypatch.setattr(cellmap_models, "download_url_to_file", refuse, raising=False)
    monkeypatch.setattr(module, "download_url_to_file", refuse)


def test_the_seed_preset_is_setup04_with_its_parameter_count():
    spec = spec_from_file_location("setup04_model", SETUP04)
    setup = module_from_spec(spec)
    spec.loader.exec_module(setup)
    seed = model_config("cosem", "3d", "seed")
    assert list(seed["feature_widths_down"]) == list(setup.feature_widths_down)
    assert list(seed["feature_widths_up"]) == list(setup.feature_widths_up)
    assert [tuple(f) for f in seed["downsample_factors"]] == list(setup.downsampling_factors)
    assert seed["final_feature_width"] == setup.final_feature_width
    kernels = {k for level in setup.kernel_sizes_down + setup.kernel_sizes_up for k in level}
    assert kernels | set(setup.final_kernel_size) == {(seed["kernel_size"],) * 3}
    # the reference: cellmap_models' own network of setup04 (its 4 nm upsampling included,
    # whose 1x1x1 convolution cosem_3d keeps), counted on the meta device
    with torch.device("meta"):
        reference = Architecture(setup)
    expected = sum(p.numel() for p in reference.parameters())
    assert count_parameters("cosem", "3d", "seed") == expected == 234_967_826


def test_shapes_and_margins_match_the_network():
    # setup04 on the meta device: the smallest valid input and the seed preset's
    config = model_config("cosem", "3d", "seed")
    for size, out in ((216, 32), (252, 68)):
        with torch.device("meta"):
            model = build_model("cosem", "3d", preset="seed", input_shape=(size,) * 3)
            y = model(torch.zeros(1, 1, size, size, size))
        assert tuple(y.shape[2:]) == output_shape((size,) * 3, config) == (out,) * 3
        assert model.output_margin_voxels == ((size - out) // 2,) * 3 == (92,) * 3
    # the demo preset for real: output = input - 2 margin
    model = build_model("cosem", "3d", preset="demo")
    assert isinstance(model.net, Architecture)
    x = torch.randn(1, 1, 24, 72, 72)
    y = model(x)
    assert model.output_margin_voxels == (8, 10, 10)
    assert tuple(y.shape) == (1, 14, 8, 52, 52) == (1, 14, *crop_margin(x, (8, 10, 10)).shape[2:])
    with pytest.raises(CellsegError) as info:
        build_model("cosem", "3d", preset="demo", input_shape=(24, 71, 72))
    message = str(info.value)
    assert "\n" not in message and "nearest valid: 24x70x72 or 24x72x72" in message


def test_the_output_is_centred_where_the_full_resolution_path_is():
    """A change of the input at the voxel under output voxel (0, 0, 0) of the full-resolution
    path (input voxel = the margin) changes that output voxel; a change one margin further out
    does not reach it through that path alone (it does through the coarse ones, so only the
    first is checked, against a change outside every receptive field)."""
    torch.manual_seed(0)
    model = build_model("cosem", "3d", preset="demo").eval()
    margin = model.output_margin_voxels
    x = torch.randn(1, 1, 24, 72, 72)
    base = model(x)
    changed = x.clone()
    changed[(0, 0, *margin)] += 10.0
    assert (model(changed) - base)[0, :, 0, 0, 0].abs().max() > 0
    far = x.clone()
    far[0, 0, -1, -1, -1] += 10.0  # outside output voxel (0, 0, 0)'s receptive field
    assert torch.equal(model(far)[0, :, 0, 0, 0], base[0, :, 0, 0, 0])


def test_a_cosem_weights_file_loads_all_but_its_head(tmp_path):
    torch.manual_seed(0)
    # a freshly built network of the same design, with its own head (COSEM's 14 classes)
    published = build_model("cosem", "3d", preset="demo").net
    path = cosem_weights_file(tmp_path / "1820500.pth", published)
    torch.manual_seed(1)
    model = build_model("cosem", "3d", preset="demo")
    head_before = model.net.prediction_head.weight.detach().clone()
    report = initialize_weights(model, {"checkpoint": str(path)}, "test")
    assert report is not None
    assert report.ignored == []
    assert {n.split(" ")[0] for n in report.reinitialised} == {
        "net.prediction_head.weight",
        "net.prediction_head.bias",
    }
    assert "COSEM's classes" in report.reinitialised[0]
    for name, tensor in published.state_dict().items():
        if not name.startswith("prediction_head."):
            assert torch.equal(model.net.state_dict()[name], tensor), name
    assert torch.equal(model.net.prediction_head.weight, head_before)
