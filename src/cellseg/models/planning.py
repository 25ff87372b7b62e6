"""Memory and cost planning: ``cellseg plan-batch``.

The seed guessed its batch sizes by scaling H100 numbers. Here the largest batch that fits a
GPU is computed from a memory model and measurements:

* **parameters** ``P``: counted on the built model;
* **fixed memory** ``16 P`` bytes: fp32 weights (4) + fp32 gradients (4) + AdamW's two fp32
  moments (8); bf16 autocast keeps the master weights in fp32;
* **activation memory per sample** ``A``: the bytes of every tensor autograd saves for the
  backward pass (a ``saved_tensors_hooks`` pack hook, unique storages, parameters excluded),
  for a forward under bf16 autocast plus a stand-in for the partial Tversky loss, plus the
  input and its 14-channel float32 target. It is measured at batch 1 and 2, and the difference
  is the per-sample cost (what does not grow with the batch, e.g. bf16 weight copies, drops out);
* **reserve**: 1.5 GB for the CUDA context and allocator, and 10 % of the card for
  fragmentation and the transient gradient buffers of the backward pass.

So ``batch = floor((0.9 * M - 1.5 GB - 16 P) / A)``. On a CPU-only machine big 3D inputs
(32x256x256) are measured at a smaller spatial size and scaled linearly in voxels (exact for
convolutions and windowed attention; slightly low for global attention, e.g. UNETR's over 512
tokens, whose attention weights the fused kernel does not save anyway; the seed 3D ViT,
ViT-V-Net, attends over only 64 tokens). FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` for forward + backward, scaled the same way.
``--probe`` (CUDA only) instead finds the batch by trying: bf16 autocast, forward, backward and
an AdamW step, doubling then bisecting until out of memory.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from cellseg.classes import NUM_CLASSES
from cellseg.errors import CellsegError
from cellseg.models._registry import format_shape
from cellseg.models.margin import crop_margin, output_margin

SEED_BATCH: dict[tuple[str, str], int] = {
    ("unet", "2d"): 26,
    ("resnet", "2d"): 28,
    ("swin", "2d"): 18,
    ("vit", "2d"): 10,
    ("unet", "3d"): 5,
    ("resnet", "3d"): 5,
    ("swin", "3d"): 2,
    ("vit", "3d"): 1,
}
"""Batch per GPU of the seed experiment on a 48 GB L40S (SPEC §5)."""

BYTES_PER_PARAM = 16
"""fp32 weight + fp32 gradient + AdamW exp_avg + exp_avg_sq."""

CUDA_RESERVE_BYTES = int(1.5 * 2**30)
FRAGMENTATION = 0.10

# Largest voxel count measured on CPU for one sample; bigger inputs are scaled down to this.
_CPU_MAX_VOXELS = {2: 256 * 256, 3: 32 * 64 * 64}


@dataclass(frozen=True)
class BatchPlan:
    """The result of :func:`plan_batch`; sizes in bytes, FLOPs per sample (forward+backward)."""

    model: str
    dim: str
    preset: str
    input_shape: tuple[int, ...]
    params: int
    gflops_per_sample: float
    activation_bytes_per_sample: int
    fixed_bytes: int
    gpu_mem_bytes: int
    batch: int
    seed_batch: int | None
    measured_shape: tuple[int, ...]
    measured_on: str
    scale: float

    @property
    def note(self) -> str:
        """How the numbers were obtained (one line)."""
        if self.scale == 1.0:
            return f"measured at {format_shape(self.measured_shape)} on {self.measured_on}"
        return (
            f"measured at {format_shape(self.measured_shape)} on {self.measured_on}, scaled x{self.scale:g} "
            f"linearly in voxels to {format_shape(self.input_shape)}"
        )


def max_batch(activation_bytes: int, fixed_bytes: int, gpu_mem_bytes: int) -> int:
    """Largest batch under the memory model of this module (0 if not even one fits)."""
    budget = (1 - FRAGMENTATION) * gpu_mem_bytes - CUDA_RESERVE_BYTES - fixed_bytes
    return max(0, int(budget // max(1, activation_bytes)))


def _stand_in_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # The partial Tversky loss's autograd footprint: fp32 sigmoid, masked products, sums.
    valid = ~torch.isnan(target)
    t0 = torch.nan_to_num(target, 0.0)
    p = torch.sigmoid(logits.float())
    axes = [0, *range(2, logits.ndim)]
    tp = (valid * p * t0).sum(axes)
    fp = (valid * p * (1 - t0)).sum(axes)
    fn = (valid * (1 - p) * t0).sum(axes)
    return (1 - (tp + 1e-6) / (tp + 0.6 * fp + 0.4 * fn + 1e-6)).mean()


def _measure(
    model: nn.Module, shape: Sequence[int], batch: int, device: torch.device, flops: bool
) -> tuple[int, float]:
    """Bytes saved for backward and FLOPs of one training step's forward+backward."""
    from torch.utils.flop_counter import FlopCounterMode

    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    x = torch.randn(batch, 1, *shape, device=device)
    # the target as training crops it: to the output of a valid-convolution model
    target = torch.rand(batch, NUM_CLASSES, *shape, device=device).round()
    target = crop_margin(target, output_margin(model, len(shape)))
    counter = FlopCounterMode(display=False) if flops else None
    model.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        if counter is not None:
            counter.__enter__()
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = _stand_in_loss(model(x), target)
            loss.backward()
        finally:
            if counter is not None:
                counter.__exit__(None, None, None)
    io_bytes = x.numel() * x.element_size() + target.numel() * target.element_size()
    total_flops = float(counter.get_total_flops()) if counter is not None else 0.0
    return sum(seen.values()) + io_bytes, total_flops


def _measurement_shape(shape: tuple[int, ...], divisor: tuple[int, ...]) -> tuple[int, ...]:
    # Shrink the in-plane axes (then depth) by 2 until the sample is small enough for a CPU,
    # staying a multiple of the divisor.
    limit = _CPU_MAX_VOXELS[len(shape)]
    out = list(shape)
    while math.prod(out) > limit:
        # largest axis first, in-plane (later) axes before depth on ties
        for axis in sorted(range(len(out)), key=lambda a: (-out[a], -a)):
            half = out[axis] // 2
            if half >= divisor[axis] and half % divisor[axis] == 0:
                out[axis] = half
                break
        else:
            break
    return tuple(out)


def plan_batch(
    name: str,
    dim: str,
    gpu_mem_gb: float = 45.0,
    preset: str = "seed",
    device: str | None = None,
    **overrides: Any,
) -> BatchPlan:
    """Estimate params, GFLOPs/sample, activation bytes/sample and the largest fitting batch.

    Args:
        name, dim, preset, overrides: the model, as for :func:`cellseg.models.build_model`.
        gpu_mem_gb: usable memory of one GPU in GB (2**30 bytes); 45 for an L40S.
        device: ``"cuda"`` or ``"cpu"``; default: CUDA when available. On CPU, inputs larger
            than 32x64x64 (3D) are measured smaller and scaled linearly in voxels.

    Returns:
        A :class:`BatchPlan`.
    """
    from cellseg.models import build_model, input_rule

    rule = input_rule(name, dim, preset, **overrides)
    shape = rule.default
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    measured = shape if dev.type == "cuda" else _measurement_shape(shape, rule.divisor)
    build_overrides = dict(overrides)
    if measured != shape and rule.fixed is not None:
        # fixed-size models are rebuilt for the smaller shape (same weights count except the
        # position embedding, whose size is counted from the full-size model below)
        build_overrides["input_shape"] = measured
    full = build_model(name, dim, preset=preset, **overrides)
    params = sum(p.numel() for p in full.parameters())
    model = full if measured == shape else build_model(name, dim, preset=preset, **build_overrides)
    del full
    model = model.to(dev).train()
    bytes1, flops1 = _measure(model, measured, 1, dev, flops=True)
    bytes2, _ = _measure(model, measured, 2, dev, flops=False)
    scale = math.prod(shape) / math.prod(measured)
    per_sample = int(max(bytes2 - bytes1, bytes1 // 2) * scale)
    fixed = BYTES_PER_PARAM * params
    mem = int(gpu_mem_gb * 2**30)
    return BatchPlan(
        model=name,
        dim=dim,
        preset=preset,
        input_shape=shape,
        params=params,
        gflops_per_sample=flops1 * scale / 1e9,
        activation_bytes_per_sample=per_sample,
        fixed_bytes=fixed,
        gpu_mem_bytes=mem,
        batch=max_batch(per_sample, fixed, mem),
        seed_batch=SEED_BATCH.get((name, dim)) if preset == "seed" else None,
        measured_shape=measured,
        measured_on=dev.type,
        scale=scale,
    )


def probe_batch(
    name: str, dim: str, preset: str = "seed", limit: int = 1024, **overrides: Any
) -> int:
    """Largest batch that trains one step on the current CUDA GPU (bf16 autocast, AdamW).

    Raises:
        CellsegError: no CUDA device is visible.
    """
    if not torch.cuda.is_available():
        raise CellsegError(
            "--probe needs a CUDA GPU and none is visible; drop --probe for the estimate"
        )
    from cellseg.models import build_model, input_rule

    shape = input_rule(name, dim, preset, **overrides).default
    model = build_model(name, dim, preset=preset, **overrides).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def fits(batch: int) -> bool:
        try:
            x = torch.randn(batch, 1, *shape, device="cuda")
            target = torch.rand(batch, NUM_CLASSES, *shape, device="cuda").round()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = _stand_in_loss(model(x), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    low, high = 0, 1
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def format_table(
    plans: Sequence[BatchPlan], probed: dict[tuple[str, str], int] | None = None
) -> str:
    """A Markdown table of plans (the plan-batch table of docs/models.md)."""
    gb = plans[0].gpu_mem_bytes / 2**30 if plans else 45
    head = (
        f"| model | dim | input | params (M) | GFLOPs/sample (fwd+bwd) | activations/sample (MB) "
        f"| fitting batch on {gb:g} GB | seed batch |"
    )
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|"]
    for p in plans:
        fit = str(p.batch)
        if probed and (p.model, p.dim) in probed:
            fit += f" (probed {probed[(p.model, p.dim)]})"
        lines.append(
            f"| {p.model} | {p.dim} | {format_shape(p.input_shape)} | {p.params / 1e6:.2f} "
            f"| {p.gflops_per_sample:.1f} | {p.activation_bytes_per_sample / 2**20:.0f} "
            f"| {fit} | {p.seed_batch if p.seed_batch is not None else '-'} |"
        )
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from cellseg.models import DIMS, list_models

    dims = DIMS if args.dim == "all" else (args.dim,)
    wanted = [
        (n, d) for n, d in list_models() if d in dims and (args.model == "all" or n == args.model)
    ]
    if not wanted:
        from cellseg.models import get_entry

        get_entry(args.model, dims[0])  # raises the one-line unknown-model error
    plans, probed = [], {}
    for name, dim in wanted:
        start = time.perf_counter()
        plan = plan_batch(name, dim, args.gpu_mem_gb, args.preset)
        if args.probe:
            probed[(name, dim)] = probe_batch(name, dim, args.preset)
        plans.append(plan)
        print(
            f"{name} {dim} ({args.preset}): {plan.params / 1e6:.2f} M params, "
            f"{plan.gflops_per_sample:.1f} GFLOPs/sample, "
            f"{plan.activation_bytes_per_sample / 2**20:.1f} MB activations/sample, "
            f"{plan.fixed_bytes / 2**30:.2f} GB weights+grads+AdamW -> batch {plan.batch} "
            f"on {args.gpu_mem_gb:g} GB"
            + (f" (probed: {probed[(name, dim)]})" if args.probe else "")
            + (f", seed batch {plan.seed_batch}" if plan.seed_batch is not None else "")
            + f"; {plan.note} [{time.perf_counter() - start:.0f} s]",
            flush=True,
        )
    if args.json:
        import json

        print(json.dumps([asdict(p) for p in plans]))
    elif len(plans) > 1:
        print()
        print(format_table(plans, probed))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``cellseg plan-batch``; ``func`` returns the exit code."""
    parser = subparsers.add_parser(
        "plan-batch",
        help="estimate params, FLOPs, activation memory and the largest batch for a GPU",
        description=(
            "Memory model: 16 bytes/parameter (fp32 weights, grads, AdamW moments) + measured "
            "activation bytes/sample under bf16 autocast + 1.5 GB CUDA reserve + 10%% margin."
        ),
    )
    parser.add_argument("--model", required=True, help="unet, resnet, swin, vit, or all")
    parser.add_argument("--dim", required=True, choices=("2d", "3d", "all"))
    parser.add_argument("--gpu-mem-gb", type=float, default=45.0, help="usable GPU memory (GB)")
    parser.add_argument("--preset", default="seed", choices=("seed", "demo"))
    parser.add_argument(
        "--probe", action="store_true", help="find the batch by trying on the CUDA GPU"
    )
    parser.add_argument("--json", action="store_true", help="also print the plans as JSON")
    parser.set_defaults(func=_run)
    return parser
