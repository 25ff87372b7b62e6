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


SETUP04_ALONG_X = {
    "feature_widths_down": (2, 2, 2, 2),
    "feature_widths_up": (2, 2, 2, 2),
    "downsample_factors": ((1, 1, 2), (1, 1, 3), (1, 1, 3)),
    "final_feature_width": 2,
    "input_shape": (34, 34, 216),
}
"""setup04's levels along x (pooling 2, 3, 3: crops by odd numbers at the coarse levels),
narrow; 216 -> 32 as setup04 itself."""


@pytest.mark.parametrize("overrides", [{}, SETUP04_ALONG_X], ids=["demo", "setup04-along-x"])
def test_the_output_is_centred_on_the_input_by_its_margin(overrides: dict):
    """Through the full-resolution path (the coarser levels' upsampling convolutions zeroed,
    the ReLUs made linear) output voxel ``j`` sees exactly the input voxels ``margin + j``
    +- 6 on every axis (six 3x3x3 convolutions: the level's two, the two after the skip, the
    final two): the output is the input's centre less ``output_margin_voxels`` on each side."""
    torch.manual_seed(0)
    model = build_model("cosem", "3d", preset="demo", **overrides).eval()
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(module, name, torch.nn.Identity())
    with torch.no_grad():
        for level in model.net.backbone[0].r_up[0]:
            level.up[1].weight.zero_()
            level.up[1].bias.zero_()
    margin = model.output_margin_voxels
    x = torch.randn(1, 1, *model.config["input_shape"], requires_grad=True)
    y = model(x)
    assert tuple(y.shape[2:]) == tuple(s - 2 * m for s, m in zip(x.shape[2:], margin, strict=True))
    last = tuple(s - 1 for s in y.shape[2:])
    for voxel in ((0, 0, 0), last):
        (grad,) = torch.autograd.grad(y[(0, slice(None), *voxel)].sum(), x, retain_graph=True)
        seen = torch.nonzero(grad[0, 0].abs() > 0)
        for axis in range(3):
            centre = margin[axis] + voxel[axis]
            low, high = int(seen[:, axis].min()), int(seen[:, axis].max())
            assert (low, high) == (centre - 6, centre + 6), (voxel, axis, low, high)


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
