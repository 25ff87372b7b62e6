"""Patch-loader throughput and memory: cellseg's streaming loader vs a naive whole-crop reader.

    bash scripts/env.sh python bench/loader.py [--quick] [--data DIR]

Prints patches/s for 2D (1, 256, 256) and 3D (1, 32, 128, 128) patches at 8 nm with every
augmentation (rotation always on), with 0, 2 and 4 workers, without and with the per-process array cache, the ratio against the naive baseline
(open the crop, read every class array whole, slice a patch: what a loader without level/box
selection does) measured in the same process, and the RSS of the loader's processes (main plus
workers) after 10 % and 100 % of the 3D run with 4 workers (the flat-memory check).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer patches")
    parser.add_argument("--data", type=Path, help="a CellMap data root (default: make the demo)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.data
        if root is None:
            root = Path(scratch) / "demo"
            make_demo_data(root, seed=0)
        crops = make_datasplit([root], 0.0, 0.0)
        n2, n3, n_rss = (60, 40, 400) if args.quick else (300, 200, 2000)
        print(f"data: {root} ({len(crops)} crops); cores: {psutil.cpu_count()}")
        print(
            f"{'patch':>18} {'cache MB':>8} {'workers':>7} {'patches/s':>10} {'naive/s':>8} {'ratio':>6}"
        )
        for shape, count in (((256, 256), n2), ((32, 128, 128), n3)):
            naive = naive_patches(crops, shape, max(count // 4, 10))
            for cache_mb in (0, 256):
                dataset = TrainPatches(
                    crops, PatchSpec(shape, 8.0), Augmentation(rotate_xy=1.0), cache_mb=cache_mb
                )
                for workers in (0, 2, 4):
                    rate = loader_patches(dataset, workers, count, batch=4)
                    label = "x".join(map(str, (1, *shape)))
                    print(
                        f"{label:>18} {cache_mb:>8} {workers:>7} {rate:>10.1f} {naive:>8.1f} {rate / naive:>5.1f}x"
                    )
        dataset = TrainPatches(
            crops, PatchSpec((32, 128, 128), 8.0), Augmentation(rotate_xy=1.0), cache_mb=256
        )
        rss: list[tuple[int, float]] = []
        loader_patches(dataset, 4, n_rss, batch=2, rss=rss)
        early = next(m for d, m in rss if d >= n_rss // 10)
        late = rss[-1][1]
        print(
            f"RSS (main + 4 workers), 3D: after {n_rss // 10} patches {early:.0f} MB, after {n_rss} patches {late:.0f} MB ({100 * (late / early - 1):+.1f} %)"
        )


if __name__ == "__main__":
    main()
