"""A DDP training run with a fault injected, started by ``torchrun`` from test_ddp.py.

    python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_faults.py \\
        CONFIG RUN_DIR DATASPLIT FREQUENCIES FAULT

FAULT: ``none``; ``nan`` (rank 1's input is NaN on the last micro-batch of the accumulation
window that ends at step 2, so that window's only synchronising backward is skipped);
``stop`` (every rank is asked to stop for a resume after step 2, as SIGTERM would, and rank 0
takes 3 s to write the checkpoint); ``diskfull`` (rank 0 cannot write the checkpoint at step 2,
as on a full disk). Every rank of a finished run writes its final weights
to ``RUN_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import sys
import time
from unittest import mock

import torch
import yaml

from cellseg.errors import CellsegError
from cellseg.training import Trainer, resolve_settings
from cellseg.training import trainer as trainer_module


class FaultyTrainer(Trainer):
    fault = "none"

    def train_step(self, image: torch.Tensor, target: torch.Tensor, step: bool, crops=None) -> None:
        if self.fault == "nan" and self.rank == 1 and step and self.global_step == 1:
            image = image * float("nan")
        super().train_step(image, target, step, crops)

    def after_optimizer_step(self, samples_per_s: float) -> None:
        if self.fault == "stop" and self.global_step == 2:
            self.stop_requested = True
        super().after_optimizer_step(samples_per_s)

    def save(self, name: str) -> None:
        if self.fault == "stop" and self.stop_requested and self.is_main:
            time.sleep(3)  # a multi-GB checkpoint on a shared file system
        if self.fault == "diskfull" and self.global_step == 2:
            with mock.patch.object(trainer_module, "save_checkpoint", full_disk):
                return super().save(name)
        return super().save(name)


def full_disk(state: dict, path) -> None:
    raise CellsegError(f"{path}: could not write the checkpoint (No space left on device)")


def main() -> int:
    config_path, run_dir, datasplit, frequencies, fault = sys.argv[1:6]
    with open(config_path) as handle:
        config = yaml.safe_load(handle)
    trainer = FaultyTrainer(resolve_settings(config, "unet_2d"), run_dir, datasplit, frequencies)
    trainer.fault = fault
    status = trainer.run()
    if status == 0:  # a rank exiting non-zero ends the others at once: nothing may follow it
        torch.save(trainer.network.state_dict(), f"{run_dir}/rank{trainer.rank}.pt")
    return status


if __name__ == "__main__":
    sys.exit(main())
