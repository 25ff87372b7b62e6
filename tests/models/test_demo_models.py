"""Every demo model trains a step on CPU: shapes, dtype, gradients to the first layer, no NaN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cellseg.classes import NUM_CLASSES
from cellseg.models import build_model, input_rule, list_models

pytestmark = pytest.mark.minutes(2)  # order: tests/conftest.py


def _first_layer(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The first convolution/linear layer the input goes through (found by hooks)."""
    order: list[nn.Module] = []
    handles = [
        m.register_forward_pre_hook(lambda mod, _: order.append(mod))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)) and m.weight.requires_grad
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return order[0]


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize(("name", "dim"), list_models())
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_demo_forward_backward(name: str, dim: str, autocast: bool) -> None:
    torch.manual_seed(0)
    model = build_model(name, dim, preset="demo").train()
    shape = input_rule(name, dim, "demo").default
    # oneDNN is off for 3D bf16 (see below) and the native bf16 Conv3d is slow: batch 1 there
    batch = 4 if dim == "2d" else (1 if autocast else 2)
    x = torch.randn(batch, 1, *shape)
    first = _first_layer(model, x)
    # torch 2.14's oneDNN bf16 Conv3d backward returns random non-finite weight gradients for
    # feature maps of depth 2 (reproduced on a bare nn.Conv3d); the native kernel is correct,
    # so 3D bf16 runs without oneDNN here. CPU training runs in float32 and is unaffected.
    onednn = not (autocast and dim == "3d")
    with (
        torch.backends.mkldnn.flags(enabled=onednn),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
    ):
        logits = model(x)
        loss = torch.sigmoid(logits.float()).mean()
        loss.backward()
    # a valid-convolution model (cosem_3d) loses output_margin_voxels on each side
    out = tuple(s - 2 * m for s, m in zip(shape, model.output_margin_voxels, strict=True))
    assert logits.shape == (batch, NUM_CLASSES, *out)
    assert logits.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert torch.isfinite(logits.float()).all()
    assert first.weight.grad is not None
    assert torch.isfinite(first.weight.grad).all() and first.weight.grad.abs().sum() > 0
    bad = [
        n for n, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
    ]
    assert not bad, f"non-finite gradients in {bad}"
    # DDP (find_unused_parameters off) waits for a gradient of every trainable parameter
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"trainable parameters without a gradient: {missing}"


@pytest.mark.parametrize(
    ("name", "dim"),
    [(n, d) for n in ("unet", "resnet", "swin", "vit") for d in ("2d", "3d")]
    + [("resenc", "3d"), ("mednext", "3d")],
)
def test_the_output_layer_bias_shifts_the_logits_exactly(name, dim):
    model = build_model(name, dim, preset="demo").eval()
    x = torch.rand(1, 1, *model.input_rule.default)
    shift = torch.linspace(-3.0, 3.0, NUM_CLASSES)
    with torch.no_grad():
        before = model(x)
        model.init_output_bias(model.output_layer().bias + shift)
        after = model(x)
    expected = shift.view(1, -1, *[1] * (before.ndim - 2))
    torch.testing.assert_close(after - before, expected.expand_as(before), atol=1e-4, rtol=0)
