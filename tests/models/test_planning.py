"""``cellseg plan-batch`` on demo models (CPU)."""

from __future__ import annotations

import argparse

import pytest

from cellseg.errors import CellsegError
from cellseg.models import planning


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
