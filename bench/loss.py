"""Benchmark the Balanced Softmax Partial Tversky loss against a seed-style per-class loop.

    bash scripts/env.sh python bench/loss.py            # (2,14,32,128,128) and (26,14,256,256)
    bash scripts/env.sh python bench/loss.py --quick    # small shapes, a few seconds
    bash scripts/env.sh python bench/loss.py --device cuda --dtype bfloat16
    bash scripts/env.sh python bench/loss.py --threads 1   # steadier on a shared machine
    bash scripts/env.sh python bench/loss.py --memory-only  # just the bf16 memory table

Forward + backward of each implementation, timed as the median of interleaved runs (every
repetition runs each implementation once, in turn, so that load from other processes hits all
alike); the CPU time of the process is reported next to the wall time. Values and gradients are compared with the seed-style loop. Memory: the peak of the bytes
held by tensors allocated during one forward + backward, above what was allocated before it
(inputs excluded, the gradient of the logits included), read from the allocator events of
``torch.profiler.profile(profile_memory=True)`` on CPU and from ``torch.cuda.max_memory_allocated``
on CUDA; "held" is what stays allocated between forward and backward (what autograd saved).

bf16 memory (last table; ``--memory-only`` prints just it): bf16 logits of a seed-like shape
((2, 14, 32, 256, 256); ``--quick``: (2, 14, 8, 64, 64)) through the loss as the trainer called it
before (``loss(logits.float(), target)``: a float32 copy that autograd keeps until backward),
as it calls it now (``loss(logits, target)``: chunks converted inside the loop) and through the
autograd reference. Every figure is a ratio against the bf16 logits' own bytes: bytes of the
tensors saved for backward (``torch.autograd.graph.saved_tensors_hooks``, each storage once), of
those not the caller's logits or target (new memory), the profiler peak and held figures above,
and the peak resident set of a fresh subprocess during one forward + backward above its resident
set just before (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``). The gradient is
compared with the autograd reference in float64 on the same bf16-rounded logits.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

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


def memory_variants(
    prior: torch.Tensor,
) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The calls the bf16 memory table compares (name: function of logits and target)."""
    options = {"alpha": ALPHA, "beta": BETA, "smooth": SMOOTH, "min_annotated_voxels": MIN_VOXELS}
    function = BalancedSoftmaxPartialTverskyLoss(prior, **options)
    autograd = BalancedSoftmaxPartialTverskyLoss(prior, implementation="autograd", **options)
    return {
        "function(z.float())": lambda z, t: function(z.float(), t),
        "function(z)": lambda z, t: function(z, t),
        "autograd(z)": lambda z, t: autograd(z, t),
    }


def saved_bytes(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    target: torch.Tensor,
) -> tuple[int, int, torch.Tensor]:
    """(Bytes saved for backward, those not in the caller's logits or target, the gradient)."""
    z = logits.detach().requires_grad_()
    inputs = {z.untyped_storage().data_ptr(), target.untyped_storage().data_ptr()}
    storages: dict[int, int] = {}  # a storage saved twice (or through views) counts once

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = fn(z, target)
    loss.backward()
    assert z.grad is not None
    new = sum(n for ptr, n in storages.items() if ptr not in inputs)
    return sum(storages.values()), new, z.grad


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_child(variant: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """In a fresh process: print the peak resident bytes of one forward + backward above the
    resident bytes just before it (inputs made, one small warm-up run done)."""
    small_logits, small_target, prior = make_inputs(
        (1, shape[1], 4, 8, 8), torch.device("cpu"), dtype
    )
    fn = memory_variants(prior)[variant]
    run_once(fn, small_logits, small_target)  # loads kernels, starts the thread pool
    logits, target, _ = make_inputs(shape, torch.device("cpu"), dtype)
    z = logits.detach().requires_grad_()
    del logits
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    base = _vm_kib("VmRSS")
    fn(z, target).backward()
    print(json.dumps({"peak_bytes": (_vm_kib("VmHWM") - base) * 1024}))


def child_peak_rss(variant: str, shape: tuple[int, ...], dtype: torch.dtype, threads: int) -> float:
    command = [
        sys.executable,
        __file__,
        "--rss-child",
        variant,
        "--memory-shape",
        ",".join(map(str, shape)),
        "--dtype",
        str(dtype).removeprefix("torch."),
        "--threads",
        str(threads),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]


def bench_bf16_memory(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    device = torch.device("cpu")
    logits, target, prior = make_inputs(shape, device, dtype)
    own = logits.numel() * logits.element_size()
    reference = BalancedSoftmaxPartialTverskyLoss(
        prior,
        alpha=ALPHA,
        beta=BETA,
        smooth=SMOOTH,
        min_annotated_voxels=MIN_VOXELS,
        implementation="autograd",
    )
    _, ref_grad = run_once(lambda z, t: reference(z, t), logits.double(), target.double())
    scale = ref_grad.abs().max().item()
    print(
        f"\n{dtype} logits {shape} on cpu, {torch.get_num_threads()} threads: ratios against the "
        f"logits' own {own / 2**20:.0f} MiB (a float32 copy is 2.00 for bf16); target "
        f"{target.dtype} (the caller's, saved by reference)"
    )
    print(
        f"  {'call':20s} {'saved':>6s} {'saved new':>9s} {'peak':>6s} {'held':>6s} "
        f"{'RSS peak':>8s} {'grad dtype':>14s} {'max|dgrad|/max|grad|':>20s}"
    )
    for name, fn in memory_variants(prior).items():
        saved, new, grad = saved_bytes(fn, logits, target)
        peak, held = peak_memory(fn, logits, target)
        rss = child_peak_rss(name, shape, dtype, torch.get_num_threads())
        error = (grad.double() - ref_grad).abs().max().item() / scale
        print(
            f"  {name:20s} {saved / own:6.2f} {new / own:9.2f} {peak * 2**20 / own:6.2f} "
            f"{held * 2**20 / own:6.2f} {rss / own:8.2f} {grad.dtype!s:>14s} {error:20.1e}"
        )
        del grad
        gc.collect()


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
    parser.add_argument("--memory-only", action="store_true", help="only the bf16 memory table")
    parser.add_argument(
        "--memory-shape", default=None, help="shape of the bf16 memory table, e.g. 2,14,32,256,256"
    )
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.memory_shape:
        memory_shape = tuple(int(n) for n in args.memory_shape.split(","))
    else:
        memory_shape = (2, NUM_CLASSES, 8, 64, 64) if args.quick else (2, NUM_CLASSES, 32, 256, 256)
    if args.rss_child:
        rss_child(args.rss_child, memory_shape, dtype)
        return
    memory_dtype = torch.bfloat16 if dtype == torch.float32 else dtype
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
    if not args.memory_only:
        for shape in shapes:
            bench_shape(shape, device, dtype, repeats, impls)
    bench_bf16_memory(memory_shape, memory_dtype)


if __name__ == "__main__":
    main()
