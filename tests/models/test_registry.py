"""The model registry: names, presets, overrides, input-shape rules and seed parameter counts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from cellseg.errors import CellsegError
from cellseg.models import (
    build_model,
    check_input_shape,
    count_parameters,
    input_rule,
    list_models,
    model_config,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"
ALL = [
    ("unet", "2d"),
    ("resnet", "2d"),
    ("swin", "2d"),
    ("vit", "2d"),
    ("unet", "3d"),
    ("resnet", "3d"),
    ("swin", "3d"),
    ("vit", "3d"),
]


def _docs_parameter_counts() -> dict[tuple[str, str, str], int]:
    """Parse the "parameter counts" table of docs/models.md: model | dim | seed | demo."""
    text = DOCS.read_text()
    section = text.split("<!-- param-table -->")[1].split("<!-- /param-table -->")[0]
    counts = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"[\d,]+", cells[2]):
            name, dim = cells[0], cells[1].lower()
            counts[(name, dim, "seed")] = int(cells[2].replace(",", ""))
            counts[(name, dim, "demo")] = int(cells[3].replace(",", ""))
    return counts


def test_list_models_has_the_eight() -> None:
    # the eight first, in canonical order; further models (the strong baselines) follow
    assert list_models()[: len(ALL)] == ALL
    assert list_models("3d")[:4] == ALL[4:]


@pytest.mark.parametrize(("name", "dim"), ALL)
@pytest.mark.parametrize("preset", ["seed", "demo"])
def test_parameter_count_matches_docs(name: str, dim: str, preset: str) -> None:
    expected = _docs_parameter_counts()[(name, dim, preset)]
    assert count_parameters(name, dim, preset) == expected


def test_unknown_name_dim_preset_and_option() -> None:
    with pytest.raises(CellsegError, match=r"unknown model 'mamba'.*valid models: unet, resnet"):
        build_model("mamba", "2d")
    with pytest.raises(CellsegError, match=r"unknown dim '4d'; valid dims: 2d, 3d"):
        build_model("unet", "4d")
    with pytest.raises(CellsegError, match=r"unknown preset 'huge'"):
        build_model("unet", "2d", preset="huge")
    with pytest.raises(CellsegError, match=r"unknown option\(s\) 'depthz'; valid options: .*"):
        model_config("swin", "3d", depthz=3)
    # pretrained only exists for the 2D timm encoders
    with pytest.raises(CellsegError, match=r"unknown option\(s\) 'pretrained'"):
        build_model("unet", "3d", preset="demo", pretrained=True)


@pytest.mark.parametrize(
    ("name", "dim", "shape", "nearest"),
    [
        ("unet", "2d", (100, 64), "96x64 or 112x64"),
        ("unet", "3d", (16, 64, 70), "16x64x64 or 16x64x80"),
        ("swin", "3d", (16, 64, 64), "32x64x64"),
        ("vit", "3d", (32, 64, 64), "16x64x64"),  # fixed img_size
        ("vit", "2d", (128, 128), "64x64"),
    ],
)
def test_bad_shape_one_line_error(name: str, dim: str, shape: tuple, nearest: str) -> None:
    with pytest.raises(CellsegError) as info:
        check_input_shape(name, dim, shape, preset="demo")
    message = str(info.value)
    assert "\n" not in message
    assert f"model {name} {dim}" in message and "x".join(map(str, shape)) in message
    assert nearest in message


def test_forward_checks_shape_before_the_library() -> None:
    model = build_model("swin", "3d", preset="demo")
    with pytest.raises(CellsegError, match=r"16x64x64 is not accepted .* nearest valid: 32x64x64"):
        model(torch.zeros(1, 1, 16, 64, 64))
    with pytest.raises(CellsegError, match=r"wrong number of dimensions"):
        model(torch.zeros(1, 1, 64, 64))


def test_input_rules_and_overrides() -> None:
    assert input_rule("unet", "3d", "seed").default == (32, 256, 256)
    assert input_rule("swin", "3d", "demo").default == (32, 64, 64)
    assert input_rule("resnet", "3d", "seed").divisor == (4, 4, 4)
    rule = input_rule("vit", "2d", "demo", input_shape=(128, 128))
    assert rule.fixed == (128, 128)
    model = build_model("vit", "2d", preset="demo", input_shape=(32, 48), out_channels=3)
    assert model(torch.zeros(1, 1, 32, 48)).shape == (1, 3, 32, 48)
    with pytest.raises(CellsegError, match=r"multiple of the patch size 16"):
        build_model("vit", "2d", preset="demo", input_shape=(40, 48))
    with pytest.raises(CellsegError, match=r"rejected encoder_kwargs"):
        build_model("swin", "2d", preset="demo", encoder_kwargs={"no_such_kwarg": 1})
    assert model_config("unet", "2d", "demo", dropout=0.0)["dropout"] == 0.0


def test_pretrained_without_network_fails_cleanly(offline_hub) -> None:
    with pytest.raises(CellsegError) as info:
        build_model("resnet", "2d", preset="demo", pretrained=True, encoder_kwargs={})
    message = str(info.value)
    assert "\n" not in message
    assert "pretrained" in message and "resnet18" in message
