"""Benchmark the Balanced Softmax Partial Tversky loss against a seed-style per-class loop.

    bash scripts/env.sh python bench/loss.py            # (2,14,32,128,128) and (26,14,256,256)
    bash scripts/env.sh python bench/loss.py --quick    # small shapes, a few seconds
    bash scripts/env.sh python bench/loss.py --device cuda --dtype bfloat16
    bash scripts/env.sh python bench/loss.py --threads 1   # steadier on a shared machine

Forward + backward of each implementation, timed as the median of interleaved runs (every
repetition runs each implementation once, in turn, so that load from other processes hits all
alike); the CPU time of the process is reported next to the wall time. Values and gradients are compared with the seed-style loop. Memory: the peak of the bytes
held by tensors allocated during one forward + backward, above what was allocated before it
(inputs excluded, the gradient of the logits included), read from the allocator events of
``torch.profiler.profile(profile_memory=True)`` on CPU and from ``torch.cuda.max_memory_allocated``
on CUDA; "held" is what stays allocated between forward and backward (what autograd saved).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from cellseg.classes import NUM_CLASSES
from cellseg.losses import BalancedSoftmaxPartialTverskyLoss

ALPHA, BETA, SMOOTH, MIN_VOXELS = 0.6, 0.4, 1e-6, 10


def seed_style_loss(
    logits: torch.Tensor, target: torch.Tensor, shift: torch.Tensor, unbind: bool = False
) -> torch.Tensor:
    """What the seed did: per class, sigmoid, multiply by the mask, three sums.

    With ``logits[:, c]`` (``unbind=False``) autograd's backward of each slice writes a full-size
    zero tensor and adds it into the gradient (14 full-size passes); ``unbind=True`` takes the
    slices with one ``unbind`` instead, whose backward stacks them once: a stronger baseline.
    """
    losses = []
    channels = logits.unbind(1) if unbind else [logits[:, c] for c in range(logits.shape[1])]
    for c, z in enumerate(channels):
        t = target[:, c]
        mask = ~torch.isnan(t)
        if mask.sum() < MIN_VOXELS:
            continue
        t = torch.nan_to_num(t, nan=0.0)
        p = torch.sigmoid(z.float() + shift[c]) * mask
        tp = (p * t).sum()
        fp = (p * (1 - t)).sum()
        fn = ((1 - p) * t).sum()
        losses.append(1 - (tp + SMOOTH) / (tp + ALPHA * fp + BETA * fn + SMOOTH))
    if not losses:
        return logits.sum() * 0.0
    return torch.stack(losses).mean()


def make_inputs(
    shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random logits, 0/1 targets with some classes unannotated per sample and NaN speckle, priors."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=g) * 3).to(device=device, dtype=dtype)
    target = (torch.rand(shape, generator=g) < 0.2).float()
    # partial annotation: each sample annotates a random subset of classes; a crop border is NaN
    unannotated = torch.rand(shape[:2], generator=g) < 0.4
    target[unannotated] = float("nan")
    target[..., :4] = float("nan")
    prior = torch.rand(shape[1], generator=g) * 0.3 + 1e-3
    return logits, target.to(device), prior


def run_once(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    target: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    z = logits.detach().requires_grad_()
    loss = fn(z, target)
    loss.backward()
    return loss.detach(), z.grad


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    target: torch.Tensor,
) -> tuple[float, float]:
    """(peak, held between forward and backward) in MiB above the bytes allocated before."""
    z = logits.detach().requires_grad_()
    if logits.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss = fn(z, target)
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() - base
        loss.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        return peak / 2**20, held / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function("bench_forward"):
            loss = fn(z, target)
        loss.backward()
    events = prof.profiler.kineto_results.events()
    fwd_end = max(e.end_ns() for e in events if e.name() == "bench_forward")
    mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    level = peak = held = 0
    for start, nbytes in mem:
        level += nbytes
        peak = max(peak, level)
        if start <= fwd_end:
            held = level
    return peak / 2**20, held / 2**20


def bench_shape(
    shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, repeats: int, impls: list[str]
) -> None:
    logits, target, prior = make_inputs(shape, device, dtype)
    losses = {
        impl: BalancedSoftmaxPartialTverskyLoss(
            prior,
            alpha=ALPHA,
            beta=BETA,
            smooth=SMOOTH,
            min_annotated_voxels=MIN_VOXELS,
            implementation=impl,
        ).to(device)
        for impl in impls
    }
    shift = next(iter(losses.values())).shift().to(device)
    fns: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "seed-loop": lambda z, t: seed_style_loss(z, t, shift),
        "seed-loop(unbind)": lambda z, t: seed_style_loss(z, t, shift, unbind=True),
        **{f"cellseg[{k}]": v for k, v in losses.items()},
    }
    ref_loss, ref_grad = run_once(fns["seed-loop"], logits, target)
    results = {}
    for name, fn in fns.items():
        loss, grad = run_once(fn, logits, target)  # warm-up (and compilation)
        results[name] = (
            abs(loss.double() - ref_loss.double()).item(),
            (grad.double() - ref_grad.double()).abs().max().item(),
            bool(torch.isfinite(grad).all()),
        )
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu_times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            run_once(fn, logits, target)
            sync(device)
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)
    memory = {name: peak_memory(fn, logits, target) for name, fn in fns.items()}
    full_mib = logits.numel() * 4 / 2**20
    print(
        f"\nshape {shape} {dtype} on {device}: one float32 full-size tensor = {full_mib:.0f} MiB; "
        f"median of {repeats} interleaved runs, forward+backward"
    )
    base_t = statistics.median(times["seed-loop"])
    base_c = statistics.median(cpu_times["seed-loop"])
    base_peak = memory["seed-loop"][0]
    print(
        f"  {'implementation':20s} {'wall s':>7s} {'speed-up':>8s} {'cpu s':>7s} {'speed-up':>8s} "
        f"{'peak MiB':>8s} {'held MiB':>8s} {'peak ratio':>10s} {'|dloss|':>8s} {'max|dgrad|':>10s}"
    )
    for name in fns:
        t = statistics.median(times[name])
        c = statistics.median(cpu_times[name])
        peak, held = memory[name]
        dl, dg, finite = results[name]
        print(
            f"  {name:20s} {t:7.3f} {base_t / t:7.2f}x {c:7.3f} {base_c / c:7.2f}x "
            f"{peak:8.0f} {held:8.0f} {peak / base_peak:10.2f} {dl:8.1e} {dg:10.1e}"
            + ("" if finite else "  NON-FINITE GRADIENT")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (seconds)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved runs (7; quick: 5)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--compile", action="store_true", help="also time implementation=compile")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.quick:
        shapes = [(2, NUM_CLASSES, 8, 32, 32), (4, NUM_CLASSES, 64, 64)]
    else:
        shapes = [(2, NUM_CLASSES, 32, 128, 128), (26, NUM_CLASSES, 256, 256)]
    repeats = args.repeats or (5 if args.quick else 7)
    impls = ["function", "autograd"] + (["compile"] if args.compile else [])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; speed-up and peak ratio "
        "are relative to seed-loop; |dloss| and max|dgrad| are differences from seed-loop.\n"
        "wall s: median wall time; cpu s: median CPU time of this process, all threads (less "
        "sensitive to other load on a shared machine).\n"
        "seed-loop indexes logits[:, c]; seed-loop(unbind) is the same loop over logits.unbind(1), "
        "a stronger baseline."
    )
    for shape in shapes:
        bench_shape(shape, device, dtype, repeats, impls)


if __name__ == "__main__":
    main()
