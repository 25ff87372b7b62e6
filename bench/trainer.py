"""Trainer throughput: cellseg's ``Trainer.train_epoch`` vs a bare training loop, and demo epoch times.

    bash scripts/env.sh python bench/trainer.py [--quick] [--threads 2] [--repeats N]
    bash scripts/env.sh python bench/trainer.py --epochs-only   # just the 8-model epoch table

On the default demo data (``make_demo_data(size="default")``, the demo config
``config/config.yaml``; CPU), for unet_2d and unet_3d:

* trainer: ``Trainer.train_epoch()`` (autocast switch, loss, backward, online class
  frequency, on the step the window's one read of its losses and finite flags, gradient
  clipping, optimizer and scheduler step, TensorBoard scalars and the
  progress log every ``log_every_steps``, ``checkpoints/last.pt`` every ``checkpoint_every_steps``);
* bare: ``model(image)``, ``loss(logits, target)``, ``backward``, ``clip_grad_norm_``,
  ``optimizer.step()``, ``zero_grad``, ``scheduler.step()`` on the very model, loss, optimizer and
  scheduler objects the trainer built.

An epoch is the demo's ``iterations_per_epoch`` batches of ``batch_per_gpu`` (``--quick``: 6).
Both are fed (a) the same batches prefetched once into memory (a ``Trainer`` subclass whose
``loader()`` iterates the list), which isolates the trainer's own overhead, and (b) end to end,
each drawing the same samples through the trainer's real ``DataLoader``. Repeats are
interleaved (trainer and bare alternate which goes first) after one warm-up each, and the
median samples/s is printed with the ratio trainer / bare (target >= 95 %).

Then one demo epoch of each configured model (``--quick``: unet_2d and unet_3d) through the
``Trainer`` with real data loading, split into set-up (``initialize``), training
(``train_epoch``), ``validation`` and ``on_epoch_end`` (TensorBoard figures, checkpoints),
projected to ``max_epochs``: this plans the demo's time budget. Trainer progress lines go to
stderr; the tables go to stdout.

Host syncs: on a GPU, ``Tensor.item``/``tolist``/``__bool__``/``__float__``/``__int__``/``cpu``/
``numpy`` of a device tensor blocks the host until the device has caught up. On CPU nothing
blocks, so the bench counts those calls instead (a ``TorchFunctionMode`` sees every one) during
one in-memory ``train_epoch`` per ``grad_accum`` of ``--sync-accum``, and prints them per
micro-batch, split into calls from cellseg's code (what the trainer and the loss do) and calls
inside torch or other libraries (e.g. the optimizer's ``.item()`` of its CPU step counters, which
do not block on a GPU either). ``--syncs-only`` prints just that table.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.overrides import TorchFunctionMode

from cellseg.config.settings import resolve_settings
from cellseg.data.datasplit import make_datasplit, write_datasplit
from cellseg.data.demo import make_demo_data
from cellseg.data.frequencies import class_frequencies
from cellseg.io import write_json_atomic
from cellseg.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
Batch = dict[str, torch.Tensor]


def stamped(batches: Iterator[Batch], stamps: list[float]) -> Iterator[Batch]:
    """Yield ``batches``, noting the time of each yield and of the end.

    Consecutive stamps bound one iteration of the consumer's loop body plus the loading of the
    next batch, so per-step medians can be taken: robust to bursts of load from other processes,
    which on a shared 2-core machine swamp whole-epoch means.
    """
    for batch in batches:
        stamps.append(time.perf_counter())
        yield batch
    stamps.append(time.perf_counter())


class BenchTrainer(Trainer):
    """A Trainer that can be fed prefetched batches, stamps its steps and counts checkpoints."""

    batches: list[Batch] | None = None
    stamps: list[float] | None = None
    saves = 0

    def loader(self) -> Iterator[Batch]:
        real = super().loader() if self.batches is None else iter(self.batches[self.iteration :])
        if self.stamps is None:
            self.stamps = []
        return stamped(real, self.stamps)

    def save(self, name: str) -> None:
        self.saves += 1
        super().save(name)


SYNC_METHODS = frozenset(
    ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")
)
"""Tensor methods that copy a device tensor's value to the host (a host sync on a GPU)."""
TORCH_DIR = str(Path(torch.__file__).resolve().parent)


class SyncCounter(TorchFunctionMode):
    """Counts :data:`SYNC_METHODS` calls, keyed by (method, caller, whether torch made the call).

    The caller is the first frame outside torch, so a call inside ``optimizer.step()`` is
    attributed to the line that called ``step``, and flagged as made by torch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[tuple[str, str, bool], int] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in SYNC_METHODS:
            frame = sys._getframe(1)
            by_torch = frame.f_code.co_filename.startswith(TORCH_DIR)
            while frame is not None and frame.f_code.co_filename.startswith(TORCH_DIR):
                frame = frame.f_back
            where = (
                "?" if frame is None else f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"
            )
            key = (name, where, by_torch)
            self.calls[key] = self.calls.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


def count_syncs(
    config: dict[str, Any], key: str, scratch: Path, data: tuple[Path, Path], threads: int
) -> None:
    """Print host-sync calls per micro-batch of one in-memory epoch, per ``grad_accum``."""
    for accum in (1, 4):
        config = copy.deepcopy(config)
        config["training"]["defaults"]["grad_accum"] = accum
        trainer = build_trainer(config, key, scratch / f"syncs_{key}_{accum}", data, threads)
        trainer.batches = None
        trainer.batches = list(trainer.loader())
        trainer.iteration = 0
        with SyncCounter() as counter:
            trainer.train_epoch()
        micro = trainer.settings.iterations_per_epoch
        ours = {k: n for k, n in counter.calls.items() if not k[2]}
        in_torch = {k: n for k, n in counter.calls.items() if k[2]}
        sites = ", ".join(
            f"{name}@{where} x{n}"
            for (name, where, _), n in sorted(ours.items(), key=lambda item: -item[1])
        )
        print(
            f"{key:>8} {accum:>5} {micro:>5} {sum(ours.values()) / micro:>8.2f} "
            f"{sum(in_torch.values()) / micro:>8.2f}   {sites or '-'}"
        )
        if trainer.writer is not None:
            trainer.writer.close()


def make_data(root: Path) -> tuple[Path, Path]:
    """Demo data, datasplit and class frequencies as the workflow makes them."""
    make_demo_data(root / "demo", seed=0, size="default")
    crops = make_datasplit([root / "demo"], 0.15, 0.15)
    datasplit, frequencies = root / "datasplit.csv", root / "class_frequencies.json"
    write_datasplit(crops, datasplit)
    train = [crop for crop in crops if crop.split == "train"]
    write_json_atomic(frequencies, class_frequencies(train, 8.0, allow_missing_classes=True))
    return datasplit, frequencies


def build_trainer(
    config: dict[str, Any], key: str, run_dir: Path, data: tuple[Path, Path], threads: int
) -> BenchTrainer:
    trainer = BenchTrainer(resolve_settings(config, key), run_dir, *data, restart=True)
    trainer.initialize()
    # initialize() sets cpus_per_task threads; pin them to what this run prints
    torch.set_num_threads(threads)
    trainer.on_train_start()
    return trainer


def trainer_epoch(trainer: BenchTrainer) -> tuple[float, list[float]]:
    """(Samples/s, step seconds) of one ``train_epoch`` from the start of epoch 0 (same samples)."""
    trainer.iteration = 0
    trainer.stamps = []
    samples = trainer.settings.iterations_per_epoch * trainer.settings.batch_per_gpu
    # timed from outside, so whatever train_epoch does around its own clock counts too
    started = time.perf_counter()
    trainer.train_epoch()
    return samples / (time.perf_counter() - started), list(np.diff(trainer.stamps or []))


def bare_epoch(
    trainer: BenchTrainer, feed: Callable[[], Iterator[Batch]]
) -> tuple[float, list[float]]:
    """(Samples/s, step seconds) of the plain loop over ``feed()`` with the trainer's objects."""
    model, loss_fn, optimizer, scheduler = (
        trainer.model,
        trainer.loss,
        trainer.optimizer,
        trainer.scheduler,
    )
    parameters = list(trainer.network.parameters())
    device, clip = trainer.device, trainer.settings.grad_clip
    trainer.iteration = 0
    stamps: list[float] = []
    started = time.perf_counter()
    model.train()
    samples = 0
    for batch in stamped(feed(), stamps):
        image = batch["image"].to(device, non_blocking=True)
        target = batch["target"].to(device, non_blocking=True)
        # same precision as the trainer (autocast is on only on CUDA with amp)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.amp):
            logits = model(image)
        loss = loss_fn(logits, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        samples += image.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return samples / (time.perf_counter() - started), list(np.diff(stamps))


def compare(
    config: dict[str, Any],
    key: str,
    scratch: Path,
    data: tuple[Path, Path],
    threads: int,
    iterations: int | None,
    repeats: int,
) -> None:
    config = copy.deepcopy(config)
    dim = key.rpartition("_")[2]
    if iterations is not None:
        config["training"][dim]["iterations_per_epoch"] = iterations
    # every timed epoch steps the one scheduler; OneCycleLR refuses steps past total_steps
    config["training"]["defaults"]["max_epochs"] = 1000
    if isinstance(config["models"].get(key), dict):
        config["models"][key]["max_epochs"] = 1000  # a model's own budget overrides the default
    trainer = build_trainer(config, key, scratch / f"compare_{key}", data, threads)
    s = trainer.settings
    trainer.batches = None
    prefetched = list(trainer.loader())
    loaders: dict[str, dict[str, Any]] = {
        "in memory": {
            "trainer": lambda: trainer_epoch(trainer),
            "bare": lambda: bare_epoch(trainer, lambda: iter(prefetched)),
            "feed": prefetched,
        },
        "end to end": {
            "trainer": lambda: trainer_epoch(trainer),
            # Trainer.loader, not the override: the same samples through the real DataLoader
            "bare": lambda: bare_epoch(trainer, lambda: Trainer.loader(trainer)),
            "feed": None,
        },
    }
    for feed_name, feed in loaders.items():
        trainer.batches = feed["feed"]
        feed["bare"]()  # warm-up: allocator, array cache, first checkpoint
        feed["trainer"]()
        epochs: dict[str, list[float]] = {"trainer": [], "bare": []}
        steps: dict[str, list[float]] = {"trainer": [], "bare": []}
        saves_before = trainer.saves
        for repeat in range(repeats):
            # alternate who goes first so drifting load from other processes hits both alike
            order = ("trainer", "bare") if repeat % 2 == 0 else ("bare", "trainer")
            for name in order:
                rate, seconds = feed[name]()
                epochs[name].append(rate)
                steps[name].extend(seconds)
        ours, bare = (statistics.median(epochs[n]) for n in ("trainer", "bare"))
        ours_step, bare_step = (
            s.batch_per_gpu / statistics.median(steps[n]) for n in ("trainer", "bare")
        )
        print(
            f"{key:>8} {feed_name:>10} {s.batch_per_gpu:>5} {s.iterations_per_epoch:>5} "
            f"{ours_step:>9.2f} {bare_step:>8.2f} {100 * ours_step / bare_step:>6.1f} % "
            f"{ours:>9.2f} {bare:>8.2f} {100 * ours / bare:>6.1f} % "
            f"{(trainer.saves - saves_before) / repeats:>5.1f}"
            f"   epoch samples/s: trainer {min(epochs['trainer']):.2f}-"
            f"{max(epochs['trainer']):.2f}, bare {min(epochs['bare']):.2f}-{max(epochs['bare']):.2f}"
        )
    if trainer.writer is not None:
        trainer.writer.close()


def demo_epoch(
    config: dict[str, Any], key: str, scratch: Path, data: tuple[Path, Path], threads: int
) -> tuple[float, ...]:
    """Seconds of set-up, training, validation and epoch end of one demo epoch, and samples/s."""
    started = time.perf_counter()
    trainer = build_trainer(config, key, scratch / f"epoch_{key}", data, threads)
    setup = time.perf_counter() - started
    started = time.perf_counter()
    trainer.train_epoch()
    train = time.perf_counter() - started
    started = time.perf_counter()
    validation = trainer.validation()
    validate = time.perf_counter() - started
    started = time.perf_counter()
    trainer.on_epoch_end(validation)
    end = time.perf_counter() - started
    rate = trainer.epoch_samples_per_s
    parameters = trainer.parameters
    if trainer.writer is not None:
        trainer.writer.close()
    del trainer
    gc.collect()
    return parameters, setup, train, rate, validate, end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6-batch epochs, 2 demo models")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed epochs each (5; quick 3)")
    parser.add_argument(
        "--epochs-only", action="store_true", help="skip the comparison; every model's epoch"
    )
    parser.add_argument(
        "--syncs-only", action="store_true", help="only the host-sync table (seconds)"
    )
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)
    iterations = 6 if args.quick else None
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    # the trainer sets this many threads on CPU; keep it equal to what is printed
    config["training"]["defaults"]["cpus_per_task"] = args.threads
    with tempfile.TemporaryDirectory(prefix="cellseg-bench-trainer-") as tmp:
        scratch = Path(tmp)
        started = time.perf_counter()
        data = make_data(scratch)
        print(
            f"demo data (size default) in {time.perf_counter() - started:.1f} s; "
            f"torch threads: {torch.get_num_threads()}; cpus: {os.cpu_count()}; "
            f"load average: {os.getloadavg()[0]:.2f}; torch {torch.__version__}, device cpu"
        )
        print(
            f"\nhost-sync calls per micro-batch of one in-memory train_epoch "
            f"({'6' if args.quick else 'demo'} micro-batches; {', '.join(sorted(SYNC_METHODS))}); "
            "direct: called by cellseg's code (sites: method@file:line x calls per epoch); "
            "in torch: made inside torch (the optimizer's .item() of its CPU step counters)"
        )
        print(f"{'model':>8} {'accum':>5} {'micro':>5} {'direct':>8} {'in torch':>8}   sites")
        for key in ("unet_2d", "unet_3d"):
            count_config = copy.deepcopy(config)
            if iterations is not None:
                count_config["training"][key.rpartition("_")[2]]["iterations_per_epoch"] = (
                    iterations
                )
            count_syncs(count_config, key, scratch, data, args.threads)
        if args.syncs_only:
            return
        if not args.epochs_only:
            print(
                f"\ntrainer vs bare loop, {repeats} interleaved timed epochs each after a warm-up; "
                "samples/s from the median step (batch / median seconds per loop iteration, "
                "steady under bursts of load from others) and the median of whole-epoch rates; "
                "ckpt: checkpoints written per timed trainer epoch; ranges of the epoch rates"
            )
            print(
                f"{'model':>8} {'feed':>10} {'batch':>5} {'iters':>5} {'step: tr':>9} "
                f"{'bare':>8} {'ratio':>8} {'epoch: tr':>9} {'bare':>8} {'ratio':>8} "
                f"{'ckpt':>5}"
            )
            for key in ("unet_2d", "unet_3d"):
                compare(config, key, scratch, data, args.threads, iterations, repeats)
        keys = (
            ["unet_2d", "unet_3d"]
            if args.quick and not args.epochs_only
            else list(config["models"])
        )
        epochs = config["training"]["defaults"]["max_epochs"]
        print(
            f"\none demo epoch per model through the Trainer (real loading, {args.threads} "
            f"threads), seconds; load average now {os.getloadavg()[0]:.2f}"
        )
        print(
            f"{'model':>10} {'params':>9} {'setup':>6} {'train':>6} {'samp/s':>7} {'valid':>6} "
            f"{'end':>6} {'epoch':>6} {f'x{epochs} epochs':>11}"
        )
        total = 0.0
        for key in keys:
            parameters, setup, train, rate, validate, end = demo_epoch(
                config, key, scratch, data, args.threads
            )
            epoch = train + validate + end
            run = setup + epochs * epoch
            total += run
            print(
                f"{key:>10} {parameters:>9,} {setup:>6.1f} {train:>6.1f} {rate:>7.1f} "
                f"{validate:>6.1f} {end:>6.1f} {epoch:>6.1f} {run:>11.0f}"
            )
        print(
            f"sum of {len(keys)} models x {epochs} epochs, one after another: {total:.0f} s "
            f"({total / 60:.1f} min); load average now {os.getloadavg()[0]:.2f}"
        )


if __name__ == "__main__":
    main()
