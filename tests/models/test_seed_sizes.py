"""The ``seed`` presets have the seed architectures' sizes (within 10 % of an independent
reference definition, ``seed_reference.py``), and the table of docs/models.md says so."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
import torch
from seed_reference import (
    ClassicUNet,
    ResnetGenerator,
    SwinT,
    ViTEncoder,
    count,
    reference_count,
    reference_models,
)

from cellseg.classes import NUM_CLASSES
from cellseg.errors import CellsegError
from cellseg.models import (
    build_model,
    check_input_shape,
    count_parameters,
    input_rule,
    list_models,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"
TOLERANCE = 0.10


@cache
def _cellseg_seed(name: str, dim: str) -> int:
    return count_parameters(name, dim, "seed")


def test_reference_covers_every_model() -> None:
    assert sorted(reference_models()) == sorted(list_models())


@pytest.mark.parametrize(("dims", "stated_millions"), [(2, 31.0), (3, 90.3)])
def test_reference_unet_has_the_stated_size(dims: int, stated_millions: float) -> None:
    # SPEC §5: "about 31.0 M parameters in 2D and 90.3 M in 3D for 1 input channel and 14
    # classes" (instance norm, dropout 0.2, trilinear=False)
    with torch.device("meta"):
        n = count(ClassicUNet(dims, in_channels=1, classes=14))
    assert round(n / 1e6, 1) == stated_millions


def test_reference_transformers_have_the_published_sizes() -> None:
    # the published ImageNet classifiers (3 channels, 1000 classes): Swin-T 28.3 M (Liu et al.
    # 2021, table 1: 28 M; timm swin_tiny_patch4_window7_224: 28,288,354) and ViT-B/16 at 224
    # (Dosovitskiy et al. 2021: 86 M; timm vit_base_patch16_224: 86,567,656)
    with torch.device("meta"):
        swin = count(SwinT(2, 3, patch=(4, 4), window=(7, 7), classes=1000))
        vit = count(ViTEncoder(2, 3, tokens=196, patch=16, cls_token=True, classes=1000))
    assert swin == 28_288_354
    assert vit == 86_567_656


def test_reference_generator_arithmetic() -> None:
    # 2D by hand: 7x7 in (3,200), two stride-2 convs (73,856 + 295,168), six blocks of two
    # 3x3 256->256 convs (7,080,960), two transposed convs (295,040 + 73,792), 7x7 out (43,918)
    with torch.device("meta"):
        assert count(ResnetGenerator(2)) == 7_865_934


@pytest.mark.parametrize(("name", "dim"), sorted(reference_models()))
def test_seed_preset_within_10_percent_of_reference(name: str, dim: str) -> None:
    reference = reference_count(name, dim)
    ours = _cellseg_seed(name, dim)
    ratio = ours / reference
    assert abs(ratio - 1) <= TOLERANCE, (
        f"{name} {dim}: cellseg seed {ours:,} vs reference {reference:,} (x{ratio:.3f})"
    )


def _docs_reference_rows() -> dict[tuple[str, str], tuple[int, int, str]]:
    text = DOCS.read_text()
    section = text.split("<!-- param-table -->")[1].split("<!-- /param-table -->")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and re.fullmatch(r"[\d,]+", cells[4]):
            rows[(cells[0], cells[1])] = (
                int(cells[2].replace(",", "")),
                int(cells[4].replace(",", "")),
                cells[5],
            )
    return rows


def test_readme_reference_column_matches() -> None:
    rows = _docs_reference_rows()
    assert sorted(rows) == sorted(reference_models())
    for (name, dim), (seed, reference, ratio) in rows.items():
        assert reference == reference_count(name, dim), (name, dim)
        assert ratio == f"{seed / reference:.2f}", (name, dim)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        (
            "swin",
            {
                "feature_size": 12,
                "depths": (1, 1, 1, 1),
                "num_heads": (1, 1, 2, 2),
                "input_shape": (16, 32, 64),
            },
        ),
        (
            "vit",
            {
                "hidden_size": 24,
                "mlp_dim": 48,
                "num_heads": 2,
                "feature_size": 4,
                "input_shape": (32, 32, 64),
            },
        ),
    ],
)
def test_seed_3d_networks_train_on_cpu(name: str, overrides: dict) -> None:
    # the seed's 3D Swin and ViT are other networks than their demo presets: run them small
    torch.manual_seed(0)
    model = build_model(name, "3d", preset="seed", **overrides).train()
    assert model.config["network"] in ("swin_unet", "vitvnet")
    x = torch.randn(2, 1, *overrides["input_shape"])
    logits = model(x)
    logits.float().sigmoid().mean().backward()
    assert logits.shape == (2, NUM_CLASSES, *overrides["input_shape"])
    assert torch.isfinite(logits).all()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_seed_swin_3d_patch_and_shapes() -> None:
    # the seed's anisotropic 2x4x4 patch: a 32x256x256 input is 16x64x64 tokens
    model = build_model("swin", "3d", preset="seed", feature_size=12, depths=(1, 1, 1, 1))
    assert model.net.encoder.patch_embed.proj.kernel_size == (2, 4, 4)
    assert model.net.encoder.layers4[0].downsample is None  # Swin-T: no merging after stage 4
    assert input_rule("swin", "3d", "seed").divisor == (16, 32, 32)
    with pytest.raises(CellsegError, match=r"16x48x64 is not accepted"):
        check_input_shape("swin", "3d", (16, 48, 64), preset="seed")
    with pytest.raises(CellsegError, match=r"unknown network 'mamba'"):
        input_rule("vit", "3d", "seed", network="mamba")
    with pytest.raises(CellsegError, match=r"32x32x32 is a single ViT-V-Net token"):
        build_model("vit", "3d", preset="seed", input_shape=(32, 32, 32))
