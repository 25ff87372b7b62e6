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

So ``batch = floor((0.9 * M - 1.5 GB - 16 P) / A)``. On CUDA the step runs for real at the
full input. On a CPU the same step runs at the full input on **fake tensors**
(``torch._subclasses.fake_tensor.FakeTensorMode``): fake twins of the parameters and buffers,
a fake input and target, every intermediate with its shape, dtype, strides and storage but no
data, so nothing is allocated or computed (a 252^3 COSEM step takes seconds) and bf16 CPU
autocast applies as to real CPU tensors. Saved storages are told apart by their StorageImpl
(``_cdata``), since a fake storage's data pointer is always 0. Against the real CPU step at
small inputs it gives the same FLOPs and bytes (``tests/models/test_planning.py``), once a
norm's saved mean and 1/std are made float32 as the real kernels keep them
(:class:`_Float32NormStatistics`). CPU autocast is not CUDA autocast: CUDA runs layer and
group norm, softmax, ``exp``, ``pow`` and ``sum`` in float32, the CPU in bf16, so for models
with those (Swin, ViT, MedNeXt) the CPU figures likely count less than a GPU saves (fake CUDA
tensors would follow CUDA's rules, but their backward pass needs a CUDA driver). A model that cannot run on fake
tensors (it reads its data, e.g. ``.item()``; :data:`FAKE_FAILURES`) is measured for real at a
smaller spatial size (3D: 32x64x64) and scaled linearly in voxels, as every 3D model once was
(not exact: padding to whole attention windows and boundary terms weigh more on a small
input), and its :class:`BatchPlan` says so. FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` for forward + backward (on fake tensors too: it
reads shapes only). ``--probe`` (CUDA only) instead finds the batch by trying: bf16 autocast,
forward, backward and an AdamW step, doubling then bisecting until out of memory.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedFakeTensorException,
    UnsupportedOperatorException,
)
from torch.utils._python_dispatch import TorchDispatchMode

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


FAKE_FAILURES = (
    DataDependentOutputException,
    DynamicOutputShapeException,
    UnsupportedOperatorException,
    UnsupportedFakeTensorException,
    NotImplementedError,
)
"""What a model raises when it cannot run on fake tensors (it reads its data, or an op has no
fake implementation); :func:`plan_batch` then measures it for real at a smaller shape."""


@dataclass(frozen=True)
class BatchPlan:
    """The result of :func:`plan_batch`; sizes in bytes, FLOPs per sample (forward+backward).

    ``measured_on`` is the device the measurement ran on (``cpu`` or ``cuda``); ``method`` is
    ``real`` (real tensors, at ``measured_shape``, then scaled by ``scale``) or ``fake`` (fake
    CPU tensors at the full input: shapes and dtypes only); ``fake_error`` says why a CPU plan
    fell back from fake to real tensors (empty otherwise).
    """

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
    method: str = "real"
    fake_error: str = ""

    @property
    def note(self) -> str:
        """How the numbers were obtained (one line)."""
        if self.method == "fake":
            return (
                f"measured at {format_shape(self.measured_shape)} with fake {self.measured_on} "
                f"tensors (shapes and dtypes only)"
            )
        note = f"measured at {format_shape(self.measured_shape)} on {self.measured_on}"
        if self.scale != 1.0:
            note += (
                f", scaled x{self.scale:g} linearly in voxels to {format_shape(self.input_shape)}"
            )
        if self.fake_error:
            note += f" (fake tensors failed: {self.fake_error})"
        return note


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


class _Float32NormStatistics(TorchDispatchMode):
    """Gives the mean and 1/std of a norm over bf16/fp16 input in float32, as the real CPU and
    CUDA kernels do (they accumulate in float32); the fake (meta) kernels give them the input's
    dtype, which would count 2 bytes less per statistic saved for backward."""

    _STATS: ClassVar[dict[Any, tuple[int, ...]]] = {
        torch.ops.aten.native_layer_norm.default: (1, 2),
        torch.ops.aten.native_batch_norm.default: (1, 2),
        torch.ops.aten._native_batch_norm_legit.default: (1, 2),
        torch.ops.aten._native_batch_norm_legit.no_stats: (1, 2),
        torch.ops.aten.native_group_norm.default: (1, 2),
    }

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        stats = self._STATS.get(func)
        if stats is None or args[0].dtype not in (torch.bfloat16, torch.float16):
            return out
        return tuple(o.float() if i in stats else o for i, o in enumerate(out))


@contextlib.contextmanager
def _fake_weights(model: nn.Module, mode: FakeTensorMode) -> Iterator[None]:
    """Swap every parameter and buffer of ``model`` for a fake twin, and back on exit.

    Each module is visited once (``named_modules`` drops repeats), so a module reachable under
    two names (MONAI's DynUNet keeps its encoder blocks in ``skip_layers`` too) is swapped and
    restored once; ``torch.func.functional_call`` swaps per name and leaves such a module with
    fake weights. A parameter shared by two modules gets one twin, so it stays shared.
    """
    twins: dict[int, torch.Tensor] = {}
    swapped: list[tuple[dict[str, Any], str, torch.Tensor]] = []

    def twin(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in twins:
            fake = mode.from_tensor(t)
            # parameters stay leaves that take the (fake) gradients
            twins[id(t)] = (
                nn.Parameter(fake, t.requires_grad) if isinstance(t, nn.Parameter) else fake
            )
        return twins[id(t)]

    try:
        for _, module in model.named_modules():
            for table in (module._parameters, module._buffers):
                for key, value in table.items():
                    if value is not None:
                        swapped.append((table, key, value))
                        table[key] = twin(value)
        yield
    finally:
        for table, key, value in reversed(swapped):
            table[key] = value


def _measure(
    model: nn.Module,
    shape: Sequence[int],
    batch: int,
    device: torch.device,
    flops: bool,
    fake: bool = False,
) -> tuple[int, float]:
    """Bytes saved for backward and FLOPs of one training step's forward+backward.

    Args:
        model: the model in training mode, on ``device`` (its own tensors are never changed
            when ``fake``).
        shape: the spatial input shape (voxels), one input channel.
        batch: samples in the step.
        device: where real tensors run; ``fake`` needs the CPU.
        flops: also count FLOPs (``FlopCounterMode``); 0.0 otherwise.
        fake: run on fake CPU tensors (``FakeTensorMode``): the parameters, buffers, input,
            target and every intermediate have shapes, strides, dtypes and storages but no
            data, so nothing is allocated or computed whatever the shape; bf16 CPU autocast
            applies as to real CPU tensors (fake tensors report ``device="cpu"``).

    Returns:
        ``(bytes, flops)``: the bytes of the unique storages autograd saves (parameters
        excluded) plus the input ``(batch, 1, *shape)`` and its float32 14-class target cropped
        to the model's output; the FLOPs of forward + backward.

    Raises:
        RuntimeError: with ``fake``, an operation that needs the data (e.g. ``.item()``, a
            data-dependent output shape) or has no fake implementation (the
            ``torch._subclasses.fake_tensor`` exceptions, all ``RuntimeError``).
    """
    from torch.utils.flop_counter import FlopCounterMode

    # A storage is identified by its C++ StorageImpl (``_cdata``), not its data pointer: a fake
    # storage's data pointer is 0 for every tensor. Views share their base's StorageImpl, so
    # a view saved next to its base is counted once, as the memory is. Holding each storage
    # keeps its address from being reused by a later allocation within the step.
    mode = FakeTensorMode() if fake else None
    with _fake_weights(model, mode) if mode is not None else contextlib.nullcontext():
        params = [p.untyped_storage() for p in model.parameters()]
        seen: dict[int, torch.UntypedStorage] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            seen.setdefault(storage._cdata, storage)
            return t

        param_ids = {s._cdata for s in params}
        counter = FlopCounterMode(display=False) if flops else contextlib.nullcontext()
        norms = _Float32NormStatistics() if fake else contextlib.nullcontext()
        model.zero_grad(set_to_none=True)
        with mode or contextlib.nullcontext():
            x = torch.randn(batch, 1, *shape, device=device)
            # the target as training crops it: to the output of a valid-convolution model
            target = torch.rand(batch, NUM_CLASSES, *shape, device=device).round()
            target = crop_margin(target, output_margin(model, len(shape)))
            with torch.autocast(device.type, dtype=torch.bfloat16), counter, norms:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    loss = _stand_in_loss(model(x), target)
                loss.backward()
            saved = sum(s.nbytes() for key, s in seen.items() if key not in param_ids)
            io_bytes = x.numel() * x.element_size() + target.numel() * target.element_size()
    total_flops = float(counter.get_total_flops()) if isinstance(counter, FlopCounterMode) else 0.0
    return saved + io_bytes, total_flops


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
    fake: bool | None = None,
    **overrides: Any,
) -> BatchPlan:
    """Estimate params, GFLOPs/sample, activation bytes/sample and the largest fitting batch.

    Args:
        name, dim, preset, overrides: the model, as for :func:`cellseg.models.build_model`.
        gpu_mem_gb: usable memory of one GPU in GB (2**30 bytes); 45 for an L40S.
        device: ``"cuda"`` or ``"cpu"``; default: CUDA when available.
        fake: measure the full input on fake CPU tensors (default: on CPU, not on CUDA). When
            the model cannot run on fake tensors (:data:`FAKE_FAILURES`), or with
            ``fake=False`` on CPU, inputs larger than 32x64x64 (3D) are measured for real at
            a smaller shape and scaled linearly in voxels.

    Returns:
        A :class:`BatchPlan`.
    """
    from cellseg.models import build_model, input_rule

    rule = input_rule(name, dim, preset, **overrides)
    shape = rule.default
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if fake is None:
        fake = dev.type == "cpu"
    if fake and dev.type != "cpu":
        raise CellsegError(f"plan-batch: fake tensors are CPU tensors, not {dev.type}")
    full = build_model(name, dim, preset=preset, **overrides)
    params = sum(p.numel() for p in full.parameters())
    fixed = BYTES_PER_PARAM * params
    mem = int(gpu_mem_gb * 2**30)

    def plan(
        per_sample: int,
        flops: float,
        measured: tuple[int, ...],
        *,
        scale: float,
        method: str,
        fake_error: str = "",
    ) -> BatchPlan:
        return BatchPlan(
            model=name,
            dim=dim,
            preset=preset,
            input_shape=shape,
            params=params,
            gflops_per_sample=flops / 1e9,
            activation_bytes_per_sample=per_sample,
            fixed_bytes=fixed,
            gpu_mem_bytes=mem,
            batch=max_batch(per_sample, fixed, mem),
            seed_batch=SEED_BATCH.get((name, dim)) if preset == "seed" else None,
            measured_shape=measured,
            measured_on=dev.type,
            scale=scale,
            method=method,
            fake_error=fake_error,
        )

    fake_error = ""
    if fake:
        try:
            bytes1, flops1 = _measure(full.train(), shape, 1, dev, flops=True, fake=True)
            bytes2, _ = _measure(full, shape, 2, dev, flops=False, fake=True)
            per_sample = max(bytes2 - bytes1, bytes1 // 2)
            return plan(per_sample, flops1, shape, scale=1.0, method="fake")
        except FAKE_FAILURES as error:
            fake_error = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:120]}"
    measured = shape if dev.type == "cuda" else _measurement_shape(shape, rule.divisor)
    build_overrides = dict(overrides)
    if measured != shape and rule.fixed is not None:
        # fixed-size models are rebuilt for the smaller shape (same weights count except the
        # position embedding, whose size is counted from the full-size model above)
        build_overrides["input_shape"] = measured
    model = full if measured == shape else build_model(name, dim, preset=preset, **build_overrides)
    del full
    model = model.to(dev).train()
    bytes1, flops1 = _measure(model, measured, 1, dev, flops=True)
    bytes2, _ = _measure(model, measured, 2, dev, flops=False)
    scale = math.prod(shape) / math.prod(measured)
    per_sample = int(max(bytes2 - bytes1, bytes1 // 2) * scale)
    return plan(
        per_sample, flops1 * scale, measured, scale=scale, method="real", fake_error=fake_error
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
            target = crop_margin(target, output_margin(model, len(shape)))
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


def format_footnote(plans: Sequence[BatchPlan]) -> str:
    """How the rows of :func:`format_table` were measured (the line under the docs table)."""
    groups: dict[str, list[str]] = {}
    for p in plans:
        if p.method == "fake":
            how = (
                f"with fake {p.measured_on} tensors at the full input (`FakeTensorMode`: shapes "
                "and dtypes, nothing allocated or computed)"
            )
        else:
            how = p.note.removeprefix("measured ")
        groups.setdefault(how, []).append(f"{p.model} {p.dim}")
    if len(groups) == 1:
        return f"All rows measured {next(iter(groups))}."
    return " ".join(f"{', '.join(rows)}: measured {how}." for how, rows in groups.items())


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
        print()
        print(format_footnote(plans))
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
