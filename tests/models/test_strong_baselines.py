"""The strong baselines (issue 26): ``resenc_3d`` (nnU-Net's ResEnc L) and ``mednext_3d``.

Their seed presets are checked against independent definitions (``seed_reference.py``): the
topology against nnU-Net's planner rules re-derived there, the parameter counts exactly; the
demo presets train a step on CPU (``test_demo_models.py`` runs every registered model too).
"""

from __future__ import annotations

import argparse

import pytest
import torch
from seed_reference import (
    MedNeXtRef,
    ResEncUNet,
    count,
    nnunet_pooling,
    nnunet_widths,
    reference_count,
)

from cellseg.classes import NUM_CLASSES
from cellseg.errors import CellsegError
from cellseg.models import (
    build_model,
    check_input_shape,
    count_parameters,
    input_rule,
    list_models,
    model_config,
    planning,
)

STRONG = [("resenc", "3d"), ("mednext", "3d")]


def test_registered_after_the_eight() -> None:
    # after unet, resnet, swin, vit, in name order among the other models
    models = list_models("3d")
    assert all(models.index(m) >= 4 for m in STRONG)
    assert models.index(("mednext", "3d")) < models.index(("resenc", "3d"))


@pytest.mark.parametrize("preset", ["seed", "demo"])
def test_resenc_topology_is_nnunets_plan_for_the_patch(preset: str) -> None:
    # nnU-Net's rule on the patch at 8 nm isotropic: strides, widths 32 x 2^s capped at 320,
    # ResEnc blocks 1, 3, 4, 6, 6, ... (seed), one conv per decoder stage
    config = model_config("resenc", "3d", preset)
    strides = nnunet_pooling((8, 8, 8), config["input_shape"])
    assert [tuple(s) for s in config["strides"]] == strides
    assert tuple(config["n_conv_per_stage_decoder"]) == (1,) * (len(strides) - 1)
    if preset == "seed":
        assert strides[1:] == [(2, 2, 2)] * 3 + [(1, 2, 2)] * 3  # down to a 4x4x4 bottleneck
        assert tuple(config["features_per_stage"]) == nnunet_widths(7)
        assert tuple(config["n_blocks_per_stage"]) == (1, 3, 4, 6, 6, 6, 6)
        assert input_rule("resenc", "3d", "seed").divisor == (8, 64, 64)


@pytest.mark.parametrize(("name", "dim"), STRONG)
def test_seed_size_equals_the_reference_exactly(name: str, dim: str) -> None:
    assert count_parameters(name, dim, "seed") == reference_count(name, dim)


def test_resenc_without_the_deep_supervision_heads() -> None:
    # nnU-Net builds a 1x1x1 head per decoder stage; without deep supervision only the
    # full-resolution one (on 32 channels) runs, and cellseg drops the other five (on the
    # skips of widths 320, 320, 256, 128, 64)
    with torch.device("meta"):
        all_heads = count(ResEncUNet(heads="all"))
    unused = sum(c * NUM_CLASSES + NUM_CLASSES for c in (320, 320, 256, 128, 64))
    assert count_parameters("resenc", "3d", "seed") == all_heads - unused
    model = build_model("resenc", "3d", preset="demo")
    heads = model.net.decoder.seg_layers
    assert all(isinstance(h, torch.nn.Identity) for h in heads[:-1])
    assert model.output_layer() is heads[-1]


def test_mednext_seed_is_the_papers_l_with_kernel_3() -> None:
    # MONAI's own factory of the paper's variants agrees with the preset and the reference,
    # which also gives the paper's M (17.6 M parameters at kernel 3)
    from monai.networks.nets.mednext import create_mednext

    with torch.device("meta"):
        monai_l = count(create_mednext("L", 3, 1, NUM_CLASSES, kernel_size=3))
        monai_m = count(create_mednext("M", 3, 1, NUM_CLASSES, kernel_size=3))
        reference_m = count(
            MedNeXtRef(
                enc=(2, 3, 4, 4), dec=(4, 4, 3, 2), bottleneck_ratio=4,
                down=(3, 4, 4, 4), bottleneck=4, up=(4, 4, 4, 3),
            )
        )  # fmt: skip
    assert count_parameters("mednext", "3d", "seed") == monai_l
    assert model_config("mednext", "3d", "seed")["kernel_size"] == 3
    assert reference_m == monai_m


@pytest.mark.parametrize(("name", "shape"), [("resenc", (8, 32, 48)), ("mednext", (16, 32, 48))])
def test_demo_forward_backward_any_valid_shape(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, "3d", preset="demo").train()
    x = torch.randn(2, 1, *shape)
    logits = model(x)
    logits.sigmoid().mean().backward()
    assert logits.shape == (2, NUM_CLASSES, *shape)
    assert torch.isfinite(logits).all()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_bad_shapes_and_options_fail_in_one_line() -> None:
    with pytest.raises(CellsegError, match=r"model resenc 3d: input spatial shape 32x96x256"):
        check_input_shape("resenc", "3d", (32, 96, 256))
    with pytest.raises(CellsegError, match=r"nearest valid: 16x64x64"):
        check_input_shape("mednext", "3d", (20, 64, 64), preset="demo")
    with pytest.raises(CellsegError, match=r"strides has 4 entries for 5 stages"):
        build_model("resenc", "3d", preset="demo", strides=((1, 1, 1),) + ((2, 2, 2),) * 3)
    with pytest.raises(CellsegError, match=r"kernel_size 4 must be odd"):
        build_model("mednext", "3d", preset="demo", kernel_size=4)
    with pytest.raises(CellsegError, match=r"blocks_up has 3 entries for 4 levels"):
        build_model("mednext", "3d", preset="demo", blocks_up=(1, 1, 1))


def test_plan_batch_plans_them(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # a real plan of each (small inputs: a bf16 Conv3d on CPU is slow) ...
    for name, shape in (("resenc", (8, 16, 32)), ("mednext", (16, 16, 32))):
        plan = planning.plan_batch(name, "3d", gpu_mem_gb=4, preset="demo", input_shape=shape)
        assert plan.params == count_parameters(name, "3d", "demo")
        assert plan.batch > 0 and plan.activation_bytes_per_sample > 0
        assert plan.gflops_per_sample > 0 and plan.input_shape == shape
    # ... and `plan-batch --model all --dim 3d` plans and tabulates both (plans stubbed)
    planned = []

    def stub(name: str, dim: str, gpu_mem_gb: float, preset: str) -> planning.BatchPlan:
        planned.append((name, dim))
        shape = input_rule(name, dim, preset).default
        return planning.BatchPlan(
            name, dim, preset, shape, 1, 1.0, 1, 16, 2**30, 1, None, shape, "cpu", 1.0
        )

    monkeypatch.setattr(planning, "plan_batch", stub)
    parser = argparse.ArgumentParser()
    planning.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plan-batch", "--model", "all", "--dim", "3d", "--preset", "demo"])
    assert args.func(args) == 0
    assert set(STRONG) <= set(planned)
    out = capsys.readouterr().out
    assert "| resenc | 3d | 16x64x64 |" in out and "| mednext | 3d | 16x64x64 |" in out
