"""Host memory of a training job at the seed's settings, from measured parts.

    bash scripts/env.sh python bench/memory.py [--data DIR] [--config-files FILE ...]

Measures, each in a fresh process, on this machine's CPU:

* the import base: Python + torch + MONAI + timm + cellseg, after one training batch is read;
* per seed model, a rank's peak: the base plus the model built on the host (a GPU rank moves it
  to the GPU, so this is an upper bound of its host part);
* a loader worker without its cache (unique set size: pages it shares with the rank are
  counted there) and the growth of a worker's memory with its array cache, against
  ``cache_mb`` (the cache must stay within its budget);
* one batch's bytes against :func:`cellseg.config.resources.batch_mb`.

Then prints, for every model of the layered config (default: config/config.yaml +
config/experiments/l40s_comparison.yaml), :func:`cellseg.config.resources.training_host_memory_mb`
with the measured ``rank_mb``/``worker_mb`` and the configured ``cuda_mb`` (not measurable
without a GPU) against the model's ``mem_mb``, and its processes against ``cpus_per_task``.
Figures are ratios against the configured values, measured in this process. About 3 minutes
on 2 cores (8 seed models are built once each).
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
from pathlib import Path

import psutil

from peak_rss import peak_rss_mb

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LAYERS = [REPO / "config/config.yaml", REPO / "config/experiments/l40s_comparison.yaml"]


def _dataset(root: str, shape: tuple[int, ...], cache_mb: float):
    from cellseg.data.dataset import PatchSpec, TrainPatches
    from cellseg.data.datasplit import make_datasplit
    from cellseg.data.patches import Augmentation

    crops = make_datasplit([Path(root)], 0.0, 0.0, resolution_nm=8.0)
    return TrainPatches(
        crops, PatchSpec(shape, 8.0), Augmentation(rotate_xy=1.0), cache_mb=cache_mb
    )


def _rank(root: str, name: str, dim: str, shape: tuple[int, ...], batch: int, out) -> None:
    """A rank's host side: imports, one batch read, the seed model built on the host."""
    import torch

    from cellseg.models import build_model

    torch.set_num_threads(1)
    dataset = _dataset(root, shape, 0)
    samples = [dataset[i] for i in range(batch)]
    batch_bytes = sum(s["image"].nbytes + s["target"].nbytes for s in samples)
    base = psutil.Process().memory_info().rss / 2**20
    del samples
    model = build_model(name, dim, preset="seed")
    parameters = sum(p.numel() for p in model.parameters())
    out.put((base, peak_rss_mb(), parameters, batch_bytes / 2**20))


def _worker_growth(root: str, shape: tuple[int, ...], cache_mb: float, count: int, out) -> None:
    """Unique memory (MB) of one loader worker after ``count`` patches with ``cache_mb``."""
    import torch
    from torch.utils.data import DataLoader

    from cellseg.data.dataset import SampleRange, worker_init_fn

    torch.set_num_threads(1)
    dataset = _dataset(root, shape, cache_mb)
    loader = DataLoader(
        dataset,
        batch_size=1,
        sampler=SampleRange(0, count),
        num_workers=1,
        worker_init_fn=worker_init_fn,
        persistent_workers=True,
    )
    iterator = iter(loader)
    for _ in range(count):
        next(iterator)
    (worker,) = psutil.Process().children()
    out.put(worker.memory_full_info().uss / 2**20)
    del iterator, loader


def measure(target, *args):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Exception:  # queue.Empty: is the measuring process still alive?
            if not process.is_alive():
                raise SystemExit(f"{target.__name__} failed (exit {process.exitcode})") from None
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a CellMap data root (default: the demo)")
    parser.add_argument("--config-files", type=Path, nargs="+", default=DEFAULT_LAYERS)
    parser.add_argument("--patches", type=int, default=60, help="patches per worker measurement")
    args = parser.parse_args()

    from cellseg.config.layers import layered_config, read_layer
    from cellseg.config.resources import batch_mb, training_host_memory_mb
    from cellseg.config.settings import resolve_settings
    from cellseg.data.demo import make_demo_data

    layers = [read_layer(path) for path in args.config_files]
    config = layered_config(layers[0], layers[1:], {})
    host = config["resources"]["host_memory"]
    with tempfile.TemporaryDirectory() as scratch:
        root = args.data
        if root is None:
            root = Path(scratch) / "demo"
            make_demo_data(root, seed=0)
        root = str(root)
        print(
            f"data: {root}; cores: {psutil.cpu_count()}; layers: {[str(p) for p in args.config_files]}"
        )

        shape3 = (32, 256, 256)
        bare = measure(_worker_growth, root, shape3, 0, args.patches)
        cache_mb = 256
        cached = measure(_worker_growth, root, shape3, cache_mb, args.patches)
        print(
            f"loader worker (1x32x256x256, rotation): {bare:.0f} MB unique without cache "
            f"(configured worker_mb {host['worker_mb']}: ratio {bare / host['worker_mb']:.2f}); "
            f"with cache_mb {cache_mb}: +{cached - bare:.0f} MB "
            f"({(cached - bare) / cache_mb:.2f} of its budget)"
        )

        print(
            f"{'model':>10} {'params M':>8} {'base MB':>7} {'rank MB':>7} {'batch MB':>8} "
            f"{'formula':>7} {'est. MB':>8} {'mem_mb':>7} {'est/mem':>7} {'procs':>5} {'cpus':>4}"
        )
        worst_rank = 0.0
        for key in config["models"]:
            settings = resolve_settings(config, key)
            base, peak, parameters, batch = measure(
                _rank, root, settings.model, settings.dim, tuple(settings.patch_shape),
                settings.batch_per_gpu,
            )  # fmt: skip
            worst_rank = max(worst_rank, peak)
            estimate = training_host_memory_mb(config, settings, uses_cuda=settings.gpus > 0)
            processes = max(settings.gpus, 1) * (settings.num_workers + 1)
            print(
                f"{key:>10} {parameters / 1e6:>8.1f} {base:>7.0f} {peak:>7.0f} {batch:>8.0f} "
                f"{batch_mb(settings):>7.0f} {estimate:>8.0f} {settings.mem_mb:>7} "
                f"{estimate / settings.mem_mb:>7.2f} {processes:>5} {settings.cpus_per_task:>4}"
            )
        print(
            f"largest rank peak {worst_rank:.0f} MB against the configured rank_mb "
            f"{host['rank_mb']}: ratio {worst_rank / host['rank_mb']:.2f}; cuda_mb "
            f"{host['cuda_mb']} is assumed (no GPU here)"
        )


if __name__ == "__main__":
    main()
