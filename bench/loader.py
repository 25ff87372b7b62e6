"""Patch-loader throughput and memory, and whether the loader keeps the seed's GPUs fed.

    bash scripts/env.sh python bench/loader.py [--quick] [--data DIR] [--sustained-tflops 126.7]

1. Per-process patches/s of cellseg's loader (``TrainPatches`` through a ``DataLoader``, batch
   4, every augmentation, rotation always on) at 8 nm for the seed's 2D (1, 256, 256) and 3D
   (1, 32, 256, 256) patches and for (1, 32, 128, 128): read in the main process without the
   per-process array cache (``cache_mb`` 0: every patch decodes its chunks), and in one
   persistent worker with the seed's cache_mb once warm (the second of two passes; the
   steady state of a long run, batches through shared memory as in training). Each rate is
   also printed as a ratio against the naive baseline measured in the same process (open the
   crop, read every class array whole, slice a patch, no rotation: what a loader without
   level/box selection does). Without --quick, also 2 workers (on a 2-core machine this
   measures the cores more than the loader).
2. Per seed model (config/experiments/l40s_comparison.yaml): forward FLOPs of one sample at its
   patch shape (``torch.utils.flop_counter.FlopCounterMode``, batch 1; meta device, or real CPU
   tensors where the model cannot run on meta), training FLOPs = 3 x forward, GPU demand =
   sustained throughput / training FLOPs (samples/s per GPU = per rank), against the supply of
   one rank = num_workers (the model's own, else the default) x the measured patches per CPU
   second of one warm worker at that patch shape (the worker's user + system time, so that the
   figure does not depend on what else shares this machine's cores; the seed preset gives each
   worker a core).
   ASSUMPTION: L40S dense bf16 tensor peak 362 TFLOPS, 35 % sustained = 126.7 TFLOPS
   (--sustained-tflops). A model whose supply is under 1.5 x its demand is flagged.
3. RSS of the loader's processes (main plus 4 workers) after 10 % and 100 % of a 3D
   (1, 32, 128, 128) run with 4 workers (the flat-memory check).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import yaml
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from cellseg.classes import CLASS_INDEX, NUM_CLASSES
from cellseg.data.dataset import PatchSpec, SampleRange, TrainPatches, worker_init_fn
from cellseg.data.datasplit import make_datasplit
from cellseg.data.demo import make_demo_data
from cellseg.data.patches import Augmentation
from cellseg.data.store import read_crop_geometry


def tree_rss_mb() -> float:
    process = psutil.Process()
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def naive_patches(crops, shape: tuple[int, ...], count: int, seed: int = 0) -> float:
    """Patches/s of the naive reader: whole arrays read per patch, no rotation."""
    rng = np.random.default_rng(seed)
    geometries = [read_crop_geometry(c, 8.0) for c in crops]
    grid = (1, *shape) if len(shape) == 2 else shape
    started = time.perf_counter()
    for _ in range(count):
        geometry = geometries[rng.integers(len(geometries))]
        level = geometry.em.level_for(8.0)
        em = geometry.em.open_level(level)
        target = np.full((NUM_CLASSES, *grid), np.nan, dtype=np.float32)
        start_nm, stop_nm = geometry.bounds_nm
        centre = rng.uniform(start_nm, stop_nm)
        corner = np.maximum(level.world_to_index(centre).astype(int) - np.asarray(grid) // 2, 0)
        em_patch = np.asarray(em[tuple(slice(c, c + g) for c, g in zip(corner, grid, strict=True))])
        for name, multiscale in geometry.labels.items():
            label_level = multiscale.level_for(8.0)
            labels = np.asarray(multiscale.open_level(label_level)[:])
            z, y, x = (
                rng.integers(0, max(n - g, 0) + 1) for n, g in zip(labels.shape, grid, strict=True)
            )
            window = labels[z : z + grid[0], y : y + grid[1], x : x + grid[2]]
            target[CLASS_INDEX[name], : window.shape[0], : window.shape[1], : window.shape[2]] = (
                window
            )
        del em_patch
    return count / (time.perf_counter() - started)


def loader_patches(
    dataset: TrainPatches, workers: int, count: int, batch: int, rss: list | None = None
) -> float:
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=SampleRange(0, count),
        num_workers=workers,
        worker_init_fn=worker_init_fn,
    )
    started = time.perf_counter()
    done = 0
    for batch_data in loader:
        done += batch_data["image"].shape[0]
        if rss is not None:
            rss.append((done, tree_rss_mb()))
    return done / (time.perf_counter() - started)


SEED_CONFIG = Path(__file__).resolve().parents[1] / "config/experiments/l40s_comparison.yaml"
PEAK_TFLOPS, SUSTAINED_FRACTION = 362.0, 0.35  # L40S dense bf16 tensor peak; assumed sustained


def forward_flops(name: str, dim: str, shape: tuple[int, ...]) -> tuple[float, str]:
    """Forward FLOPs of the seed preset of a model for one ``(1, *shape)`` sample, and where
    they were counted ("meta", or "cpu" for a model that cannot run on the meta device)."""
    from cellseg.models import build_model

    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = build_model(name, dim, preset="seed").eval()
                x = torch.zeros(1, 1, *shape)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(x)
            return float(counter.get_total_flops()), device
        except (RuntimeError, NotImplementedError):
            if device == "cpu":
                raise
    raise AssertionError("unreachable")


def worker_cpu_seconds() -> float:
    """User + system CPU seconds of this process's children (the loader's workers, with their
    zarr decoding threads)."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def worker_rate(dataset: TrainPatches, count: int, batch: int = 4) -> tuple[float, float]:
    """Patches per wall second and per CPU second of one persistent data-loader worker (as
    training runs it: ``worker_init_fn``, batches through shared memory) once its cache is
    warm: ``count`` patches are timed after a warm-up pass of ``2 * count``.

    The per-CPU-second rate is what one worker supplies on a core of its own (the seed preset
    gives every worker and rank one: ``cpus_per_task`` >= ranks x (workers + 1)); unlike the
    wall rate it does not fall when other processes share the machine's cores.
    """
    # the warm-up pass is twice as long as the timed one, so that the timed patches mostly
    # fall in crops whose chunks are already cached (a long run's steady state)
    sampler = SampleRange(0, 2 * count)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=1,
        worker_init_fn=worker_init_fn,
        persistent_workers=True,
    )
    for _ in loader:  # first pass: the worker opens its arrays and fills its cache
        pass
    sampler.set_range(2 * count, 3 * count)
    cpu_started, started = worker_cpu_seconds(), time.perf_counter()
    done = sum(batch_data["image"].shape[0] for batch_data in loader)
    wall, cpu = time.perf_counter() - started, worker_cpu_seconds() - cpu_started
    return done / wall, done / cpu


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer patches (< 2 minutes)")
    parser.add_argument("--data", type=Path, help="a CellMap data root (default: make the demo)")
    parser.add_argument(
        "--sustained-tflops",
        type=float,
        default=PEAK_TFLOPS * SUSTAINED_FRACTION,
        help="sustained training throughput of one L40S, TFLOPS (default: 35 %% of 362)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    seed = yaml.safe_load(SEED_CONFIG.read_text())
    defaults = seed["training"]["defaults"]
    seed_shapes = {dim: tuple(seed["training"][dim]["patch_shape"]) for dim in ("2d", "3d")}
    cache_mb, workers_per_rank = float(defaults["cache_mb"]), int(defaults["num_workers"])
    with tempfile.TemporaryDirectory() as scratch:
        root = args.data
        if root is None:
            root = Path(scratch) / "demo"
            make_demo_data(root, seed=0)
        crops = make_datasplit([root], 0.0, 0.0)
        print(f"data: {root} ({len(crops)} crops); cores: {psutil.cpu_count()}")
        print("per-process rate: TrainPatches -> DataLoader, batch 4, rotate_xy 1.0, 8 nm")
        print(
            f"{'patch':>16} {'cache MB':>8} {'workers':>7} {'patches/s':>10} {'naive/s':>8} "
            f"{'ratio':>6}"
        )
        counts = {(256, 256): 200, (32, 128, 128): 60, (32, 256, 256): 24}
        if not args.quick:
            counts = {shape: 4 * n for shape, n in counts.items()}
        shapes = [seed_shapes["2d"], (32, 128, 128), seed_shapes["3d"]]
        warm: dict[tuple[int, ...], float] = {}
        for shape in shapes:
            count = counts.get(shape, 40)
            label = "x".join(map(str, (1, *shape)))
            naive = naive_patches(crops, shape, max(count // 4, 10))
            spec = PatchSpec(shape, 8.0)
            rotate = Augmentation(rotate_xy=1.0)
            for workers in (0,) if args.quick else (0, 2):
                cold = TrainPatches(crops, spec, rotate, cache_mb=0)
                rate = loader_patches(cold, workers, max(count // 2, 8), batch=4)
                print(
                    f"{label:>16} {0:>8} {workers:>7} {rate:>10.1f} {naive:>8.1f} "
                    f"{rate / naive:>5.1f}x"
                )
            cached = TrainPatches(crops, spec, rotate, cache_mb=cache_mb)
            wall_rate, warm[shape] = worker_rate(cached, count)
            print(
                f"{label:>16} {cache_mb:>8.0f} {'1 (p)':>7} {wall_rate:>10.1f} {naive:>8.1f} "
                f"{wall_rate / naive:>5.1f}x  (one persistent worker, warm cache; "
                f"{warm[shape]:.1f} per CPU second)"
            )
            if shape == seed_shapes["3d"]:
                # the target a worker hands over: compact uint8 (now) vs float32 (before),
                # interleaved so that both see the same load
                rates: dict[bool, list[float]] = {True: [], False: []}
                for _ in range(2):
                    for compact in (True, False):
                        dataset = TrainPatches(
                            crops, spec, rotate, cache_mb=cache_mb, compact_target=compact
                        )
                        rates[compact].append(worker_rate(dataset, count)[1])
                compact_rate, float_rate = (max(rates[k]) for k in (True, False))
                print(
                    f"{label:>16} target uint8 {compact_rate:.1f}/s vs float32 "
                    f"{float_rate:.1f}/s: {compact_rate / float_rate:.2f}x (one persistent worker, "
                    "per CPU second)"
                )
            if not args.quick:
                rate = loader_patches(cached, 2, count, batch=4)
                print(
                    f"{label:>16} {cache_mb:>8.0f} {2:>7} {rate:>10.1f} {naive:>8.1f} "
                    f"{rate / naive:>5.1f}x"
                )
        sustained = args.sustained_tflops * 1e12
        print(
            f"\nGPU demand vs loader supply per rank (one rank per GPU): ASSUMED sustained "
            f"{args.sustained_tflops:.1f} TFLOPS per L40S (dense bf16 peak {PEAK_TFLOPS:.0f} "
            f"TFLOPS x {args.sustained_tflops / PEAK_TFLOPS:.0%}); training FLOPs = 3 x forward; "
            f"supply = num_workers (default {workers_per_rank}) x one warm worker's patches per "
            f"CPU second (each worker on a core of its own)"
        )
        print(
            f"{'model':>10} {'batch/GPU':>9} {'workers':>7} {'fwd GFLOP':>10} {'counted':>7} "
            f"{'demand/s':>9} {'supply/s':>9} {'margin':>7}"
        )
        for key, model in seed["models"].items():
            name, dim = key.rsplit("_", 1)
            shape = seed_shapes[dim]
            flops, device = forward_flops(name, dim, shape)
            demand = sustained / (3 * flops)
            workers = int(model.get("num_workers", workers_per_rank))  # a model's own override
            supply = workers * warm[shape]
            margin = supply / demand
            flag = "  <-- supply < 1.5 x demand" if margin < 1.5 else ""
            print(
                f"{key:>10} {model['batch_per_gpu']:>9} {workers:>7} {flops / 1e9:>10.1f} {device:>7} "
                f"{demand:>9.1f} {supply:>9.1f} {margin:>6.2f}x{flag}"
            )
        n_rss = 60 if args.quick else 2000
        dataset = TrainPatches(
            crops, PatchSpec((32, 128, 128), 8.0), Augmentation(rotate_xy=1.0), cache_mb=256
        )
        rss: list[tuple[int, float]] = []
        loader_patches(dataset, 4, n_rss, batch=2, rss=rss)
        early = next(m for d, m in rss if d >= n_rss // 10)
        late = rss[-1][1]
        print(
            f"\nRSS (main + 4 workers), 3D: after {n_rss // 10} patches {early:.0f} MB, after "
            f"{n_rss} patches {late:.0f} MB ({100 * (late / early - 1):+.1f} %)"
        )
    print(f"wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
