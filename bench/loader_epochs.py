"""Data loading over several epochs: the trainer's one persistent loader vs a loader per epoch.

    bash scripts/env.sh python bench/loader_epochs.py [--workers 2] [--epochs 5] [--repeats 3]

On the default demo data and the demo config (``config/config.yaml``, its ``cache_mb``), for
unet_2d and unet_3d, ``Trainer.loader()`` is iterated for ``--epochs`` epochs with no training
step, so only loading is timed:

* persistent: the trainer as it is: one ``DataLoader`` for the run, its workers (and their
  array caches) kept across epochs;
* per epoch (baseline): the same trainer with its loader dropped before each epoch, so every
  epoch starts new worker processes with empty caches (what cellseg did before).

Runs alternate (persistent first, then per epoch, ``--repeats`` times); the median seconds of
each and the ratio per-epoch / persistent are printed, with the median first-epoch and
later-epoch patch rates of each.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml

from cellseg.config.settings import resolve_settings
from cellseg.training.trainer import Trainer
from trainer import make_data

REPO = Path(__file__).resolve().parents[1]


class LoaderPerEpoch(Trainer):
    """The baseline: a new DataLoader (new workers, cold caches) every epoch."""

    def loader(self) -> Iterator[dict[str, torch.Tensor]]:
        self.train_loader = None
        return super().loader()


def load_epochs(trainer: Trainer, epochs: int) -> list[float]:
    """Seconds of each epoch's loading (every micro-batch drawn, nothing trained)."""
    seconds = []
    for epoch in range(epochs):
        trainer.epoch, trainer.iteration = epoch, 0
        started = time.perf_counter()
        for _ in trainer.loader():
            pass
        seconds.append(time.perf_counter() - started)
    trainer.train_loader = None
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="loader workers (default 2)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (default 3)")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["training"]["defaults"]["num_workers"] = args.workers
    with tempfile.TemporaryDirectory(prefix="cellseg-bench-loader-epochs-") as tmp:
        scratch = Path(tmp)
        data = make_data(scratch)
        print(
            f"{args.workers} workers, {args.epochs} epochs per run, {args.repeats} runs each, "
            f"cache_mb {config['training']['defaults']['cache_mb']}; cpus: {os.cpu_count()}; "
            f"load average: {os.getloadavg()[0]:.2f}"
        )
        print(
            f"{'model':>8} {'patches/epoch':>13} {'persistent s':>12} {'per-epoch s':>11} "
            f"{'ratio':>6} {'pers. 1st/later p/s':>20} {'per-ep. 1st/later p/s':>22}"
        )
        for key in ("unet_2d", "unet_3d"):
            settings = resolve_settings(copy.deepcopy(config), key)
            patches = settings.iterations_per_epoch * settings.batch_per_gpu
            runs: dict[type[Trainer], list[list[float]]] = {Trainer: [], LoaderPerEpoch: []}
            for _ in range(args.repeats):
                for kind in runs:
                    trainer = kind(settings, scratch / key, *data, restart=True)
                    trainer.initialize()
                    runs[kind].append(load_epochs(trainer, args.epochs))
            totals = {kind: statistics.median(map(sum, r)) for kind, r in runs.items()}
            rates = {
                kind: (
                    patches / statistics.median(s[0] for s in r),
                    patches / statistics.median(x for s in r for x in s[1:]),
                )
                for kind, r in runs.items()
            }
            print(
                f"{key:>8} {patches:>13} {totals[Trainer]:>12.2f} {totals[LoaderPerEpoch]:>11.2f} "
                f"{totals[LoaderPerEpoch] / totals[Trainer]:>5.2f}x "
                f"{rates[Trainer][0]:>9.1f}/{rates[Trainer][1]:<10.1f} "
                f"{rates[LoaderPerEpoch][0]:>10.1f}/{rates[LoaderPerEpoch][1]:<11.1f}"
            )


if __name__ == "__main__":
    main()
