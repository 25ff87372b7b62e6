"""``cellseg plan-batch`` on demo models (CPU)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensor

from cellseg.classes import NUM_CLASSES
from cellseg.errors import CellsegError
from cellseg.models import build_model, input_rule, list_models, planning

pytestmark = pytest.mark.minutes(2)  # order: tests/conftest.py


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    planning.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_plan_batch_prints_a_batch(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["plan-batch", "--model", "unet", "--dim", "3d", "--preset", "demo"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "unet 3d (demo)" in out and "-> batch " in out and "GFLOPs/sample" in out


def test_plan_is_consistent_with_memory_model() -> None:
    plan = planning.plan_batch("vit", "2d", gpu_mem_gb=4, preset="demo")
    assert plan.params > 0 and plan.gflops_per_sample > 0 and plan.activation_bytes_per_sample > 0
    assert plan.batch == planning.max_batch(
        plan.activation_bytes_per_sample, plan.fixed_bytes, plan.gpu_mem_bytes
    )
    assert planning.max_batch(10**9, 0, 2 * 2**30) == 0  # CUDA reserve leaves no room


def test_probe_needs_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(CellsegError, match="--probe needs a CUDA GPU"):
        planning.probe_batch("unet", "2d", preset="demo")


def test_measurement_shape_shrinks_in_plane_first() -> None:
    assert planning._measurement_shape((32, 256, 256), (16, 16, 16)) == (32, 64, 64)
    assert planning._measurement_shape((256, 256), (16, 16)) == (256, 256)


# Fake tensors against the real measurement, at inputs small enough to run for real on a CPU:
# every family's layer types (convolutions; instance, batch, group and layer norm; windowed and
# global attention; valid convolutions; DynUNet's encoder blocks reachable under two names).
# (model, dim, preset, input_shape override or None)
FAKE_VS_REAL = [
    ("unet", "3d", "demo", (16, 32, 32)),
    ("resnet", "2d", "demo", None),
    ("resnet", "3d", "demo", (16, 32, 32)),
    ("swin", "2d", "demo", None),
    ("vit", "3d", "demo", None),
    ("cosem", "3d", "demo", None),
    ("mednext", "3d", "demo", (16, 32, 32)),
]


@pytest.mark.parametrize(("name", "dim", "preset", "shape"), FAKE_VS_REAL)
def test_fake_measurement_equals_the_real_one(name, dim, preset, shape) -> None:
    overrides = {} if shape is None else {"input_shape": shape}
    shape = input_rule(name, dim, preset, **overrides).default
    torch.manual_seed(0)
    model = build_model(name, dim, preset=preset, **overrides).train()
    cpu = torch.device("cpu")
    for batch in (1, 2):
        # fake first: the real step after it must find the model's own tensors back
        fake_bytes, fake_flops = planning._measure(model, shape, batch, cpu, flops=True, fake=True)
        real_bytes, real_flops = planning._measure(model, shape, batch, cpu, flops=True)
        assert (fake_bytes, fake_flops) == (real_bytes, real_flops)
        assert real_flops > 0
    # the fake twins are gone (torch.func.functional_call left DynUNet's with fake weights)
    tensors = [*model.parameters(), *model.buffers()]
    assert not any(isinstance(t, FakeTensor) for t in tensors)


class _Halves(torch.nn.Module):
    """(B, 1, 12, 8) -> (B, 14, 6, 8): the product of the top and bottom halves of ``x * a``,
    which autograd saves as two views of one storage (or a view and a copy)."""

    output_margin_voxels = (3, 0)

    def __init__(self, copy: bool) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.ones(1, NUM_CLASSES, 1, 1))
        self.copy = copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * self.a
        top, bottom = h[..., :6, :], h[..., 6:, :]
        return top * (bottom.clone() if self.copy else bottom)


@pytest.mark.parametrize("fake", [False, True])
def test_saved_views_of_one_storage_count_once(fake: bool) -> None:
    # Two views of h saved: h's storage once. A view and a copy: h's storage and the copy's.
    # (Counting each view's own bytes would make both the same; counting each view as its
    # whole storage would make the views cost more than the view and the copy.)
    cpu = torch.device("cpu")
    views, _ = planning._measure(_Halves(copy=False), (12, 8), 2, cpu, False, fake=fake)
    copied, _ = planning._measure(_Halves(copy=True), (12, 8), 2, cpu, False, fake=fake)
    assert copied - views == 2 * NUM_CLASSES * 6 * 8 * 4


def test_full_size_plans_use_fake_tensors_and_the_output_shape(monkeypatch) -> None:
    # cosem's output is smaller than its input: the loss must see the output-sized target
    shapes = []
    stand_in = planning._stand_in_loss

    def recording(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        shapes.append((tuple(logits.shape), tuple(target.shape), type(target)))
        return stand_in(logits, target)

    monkeypatch.setattr(planning, "_stand_in_loss", recording)
    plan = planning.plan_batch("cosem", "3d", gpu_mem_gb=4, preset="demo", device="cpu")
    assert plan.method == "fake" and plan.scale == 1.0 and plan.measured_shape == (24, 72, 72)
    assert [s[:2] for s in shapes] == [
        ((b, NUM_CLASSES, 8, 52, 52), (b, NUM_CLASSES, 8, 52, 52)) for b in (1, 2)
    ]
    assert all(kind is FakeTensor for *_, kind in shapes)
    assert "with fake cpu tensors" in plan.note
    assert planning.format_footnote([plan]).startswith("All rows measured with fake cpu tensors")


def test_models_that_fail_on_fake_tensors_fall_back_to_the_scaled_real_measurement(
    monkeypatch,
) -> None:
    real = planning._measure

    def no_fake(*args, fake: bool = False, **kwargs):
        if fake:  # what a model that reads its data (.item()) raises
            raise DataDependentOutputException(torch.ops.aten._local_scalar_dense.default)
        return real(*args, **kwargs)

    fake_plan = planning.plan_batch("unet", "2d", gpu_mem_gb=4, preset="demo", device="cpu")
    monkeypatch.setattr(planning, "_measure", no_fake)
    plan = planning.plan_batch("unet", "3d", gpu_mem_gb=4, preset="demo", device="cpu")
    assert plan.method == "real" and plan.measured_on == "cpu"
    assert "DataDependentOutputException" in plan.fake_error and "fake tensors failed" in plan.note
    footnote = planning.format_footnote([fake_plan, plan])
    assert footnote.startswith("unet 2d: measured with fake cpu tensors at the full input")
    assert "unet 3d: measured at 16x64x64 on cpu (fake tensors failed: DataDep" in footnote


@pytest.mark.slow
def test_the_docs_table_is_what_plan_batch_prints() -> None:
    # docs/models.md's table and footnote between the plan-table markers are the output of
    # `cellseg plan-batch --model all --dim all` on a CPU (fake tensors, about 40 s): a model
    # or memory-model change that moves a figure must regenerate them.
    docs = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    block = docs.split("<!-- plan-table -->\n")[1].split("<!-- /plan-table -->")[0]
    plans = [planning.plan_batch(name, dim, device="cpu") for name, dim in list_models()]
    expected = planning.format_table(plans) + "\n\n" + planning.format_footnote(plans) + "\n"
    assert block == expected
