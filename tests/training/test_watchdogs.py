"""Watchdogs of a long run, each tested by injecting its fault: non-finite gradients, a run that
stalls, a starved loader, and a time limit already used up when training would start."""

from __future__ import annotations

import copy
import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
import yaml
from cli_training import train_command
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cellseg.data.dataset import TrainPatches
from cellseg.errors import CellsegError
from cellseg.losses import BalancedSoftmaxPartialTverskyLoss
from cellseg.training import EXIT_STALLED, EXIT_TIME_BUDGET, Trainer, resolve_settings
from cellseg.training.budget import job_start_time
from cellseg.training.checkpoint import load_checkpoint
from cellseg.training.launch import launch_training

pytestmark = pytest.mark.minutes(1.5)  # order: tests/conftest.py

REPO = Path(__file__).resolve().parents[2]


def with_training(tiny_config: dict, **training) -> dict:
    config = copy.deepcopy(tiny_config)
    config["training"]["defaults"].update(training)
    return config


def make_trainer(config, tiny_data, run_dir, cls=Trainer, **kwargs) -> Trainer:
    return cls(
        resolve_settings(config, "unet_2d"),
        run_dir,
        tiny_data["datasplit"],
        tiny_data["class_frequencies"],
        **kwargs,
    )


def stop_message(trainer: Trainer) -> str:
    """The one-line error a watchdog stops ``trainer``'s run with."""
    with pytest.raises(CellsegError) as error:
        trainer.run()
    message = str(error.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------- non-finite gradients
def test_nonfinite_gradients_with_finite_losses_stop_the_run(tiny_config, tiny_data, tmp_path):
    # steps 1-2 train; from then on every window's gradient is NaN while its loss is finite
    config = with_training(tiny_config, inject_nonfinite_grad_after_steps=2, max_nonfinite_steps=2)
    trainer = make_trainer(config, tiny_data, tmp_path)
    message = stop_message(trainer)
    assert message.startswith(
        "gradient norm was NaN/Inf in 3 accumulation windows in a row (epoch 1, steps 2-4; crops "
        "tiny/crop1, tiny/crop2)"
    )
    assert (trainer.nonfinite_total, trainer.global_step) == (3, 4)
    # the skipped windows left the weights as step 2 made them
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["global_step"] == 4
    before = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["model"]
    step2 = make_trainer(with_training(tiny_config, fail_after_steps=2), tiny_data, tmp_path / "2")
    with pytest.raises(RuntimeError, match="fail_after_steps"):
        step2.run()
    after2 = load_checkpoint(tmp_path / "2" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(before[k], v) for k, v in after2.items())


def test_a_nonfinite_gradient_counts_in_history(tiny_config, tiny_data, tmp_path):
    # only the last of 8 windows (4 per epoch) has NaN gradients: counted, not fatal
    config = with_training(tiny_config, inject_nonfinite_grad_after_steps=7)
    assert make_trainer(config, tiny_data, tmp_path).run() == 0
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["nonfinite_steps"]) == [0, 1]


def test_a_nonfinite_gradient_window_counts_once(tiny_config, tiny_data, tmp_path):
    config = with_training(tiny_config, grad_accum=2, inject_nonfinite_grad_after_steps=0)
    config["loss"]["online_frequency_every"] = 1000
    trainer = make_trainer(config, tiny_data, tmp_path)
    trainer.initialize()
    batch = next(trainer.loader())
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    trainer.train_step(batch["image"], batch["target"], step=False)
    trainer.train_step(batch["image"], batch["target"], step=True)
    assert all(torch.equal(before[k], v) for k, v in trainer.network.state_dict().items())
    assert (trainer.nonfinite_total, trainer.nonfinite.in_a_row, trainer.global_step) == (1, 1, 1)
    assert trainer.epoch_loss_count == 0  # like non-finite losses: not in the epoch's loss


class FirstMicroBatchNaN(Trainer):
    """A NaN image, hence a NaN loss, in the first micro-batch of every accumulation window."""

    def train_step(self, image, target, step, crops=None):
        if not self.window_losses:
            image = torch.full_like(image, float("nan"))
        super().train_step(image, target, step, crops)


@pytest.mark.parametrize("grad_accum", [1, 4])
def test_skipped_windows_are_counted_whatever_grad_accum(
    tiny_config, tiny_data, tmp_path, grad_accum
):
    # the case: with grad_accum 4 the finite micro-batches after the NaN one reset a
    # per-micro-batch counter, and every update was skipped with the counter at 0
    config = with_training(tiny_config, grad_accum=grad_accum, max_nonfinite_steps=2)
    config["training"]["2d"]["iterations_per_epoch"] = 4 * grad_accum
    trainer = make_trainer(config, tiny_data, tmp_path, FirstMicroBatchNaN)
    message = stop_message(trainer)
    assert message.startswith(
        "loss was NaN/Inf in 3 accumulation windows in a row (epoch 0, steps 0-2; crops tiny/crop"
    )
    assert "lower training lr or check those crops" in message
    # the same 3 windows whatever grad_accum: the limit counts optimizer steps
    assert (trainer.global_step, trainer.nonfinite_total) == (2, 3)
    assert (tmp_path / "checkpoints" / "nonfinite.json").is_file()


def test_a_nonfinite_window_that_recurs_after_a_resume_stops_naming_its_crops(
    tiny_config, tiny_data, tmp_path
):
    # every window from optimizer step 2 on has NaN gradients (finite losses): the same data
    # after a resume gives the same NaN, which no retry can get past
    config = with_training(
        tiny_config,
        inject_nonfinite_grad_after_steps=2,
        max_nonfinite_steps=1,
        checkpoint_every_steps=2,
    )
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    command = train_command(config_path, tiny_data, run)
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 2, first.stderr[-3000:]
    last = first.stderr.strip().splitlines()[-1]
    assert (
        "gradient norm was NaN/Inf in 2 accumulation windows in a row (epoch 0, steps 2-3" in last
    )
    checkpoint = run / "checkpoints" / "last.pt"
    assert load_checkpoint(checkpoint)["global_step"] == 2
    kept = checkpoint.read_bytes()

    # what Snakemake's retry does: the same command, which resumes from step 2
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == EXIT_STALLED, second.stderr[-3000:]
    last = second.stderr.strip().splitlines()[-1]
    assert "stopped (exit status 65): the gradient norm was NaN/Inf again at epoch 0, step 2, " in (
        last
    )
    assert (
        "after a resume, on the same data as the attempt that stopped there (crops tiny/crop"
        in (last)
    )
    assert "check those crops' EM and labels" in last
    # nothing lost: the checkpoint it resumed from stays as it was; both attempts are logged
    assert checkpoint.read_bytes() == kept
    log = (run / "train.log").read_text()
    assert "resumed from" in log and log.count("attempt 2: settings") == 1


# ----------------------------------------------------------------- stalls
def test_weights_that_stop_changing_stop_the_run(tiny_config, tiny_data, tmp_path):
    # a learning rate of 0 (the schema refuses it in a config; the Trainer API does not)
    config = with_training(tiny_config, max_stalled_steps=3)
    config["models"]["unet_2d"] = {"lr": 0.0}
    assert make_trainer(config, tiny_data, tmp_path).run() == EXIT_STALLED
    log = (tmp_path / "train.log").read_text()
    line = next(x for x in log.splitlines() if "stopped (exit status 65)" in x)
    assert "training stalled: 3 optimizer steps in a row changed nothing (weights unchanged" in line
    assert "max_stalled_steps" in line and not (tmp_path / "history.csv").exists()
    # 0 turns the watchdog off
    off = copy.deepcopy(config)
    off["training"]["defaults"]["max_stalled_steps"] = 0
    assert make_trainer(off, tiny_data, tmp_path / "off").run() == 0


class ConstantLoss(torch.nn.Module):
    """The loss value 0.5 exactly, with a gradient: the weights change, the loss does not."""

    def __init__(self, loss: BalancedSoftmaxPartialTverskyLoss) -> None:
        super().__init__()
        self.inner = loss
        self.prior = loss.prior
        self.tau = loss.tau

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mean = logits.float().mean()
        return mean - mean.detach() + 0.5

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


class ConstantLossTrainer(Trainer):
    def build_loss(self):
        return ConstantLoss(super().build_loss())


def test_a_loss_that_stays_exactly_constant_stops_the_run(tiny_config, tiny_data, tmp_path):
    config = with_training(tiny_config, max_stalled_steps=3)
    trainer = make_trainer(config, tiny_data, tmp_path, ConstantLossTrainer)
    assert trainer.run() == EXIT_STALLED
    line = next(
        x for x in (tmp_path / "train.log").read_text().splitlines() if "training stalled" in x
    )
    assert "(loss constant at 0.5; epoch 0, step 4)" in line  # the weights did change
    assert trainer.global_step == 4


# ----------------------------------------------------------------- data starvation
def test_data_wait_is_in_history_tensorboard_and_the_log(
    tiny_config, tiny_data, tmp_path, monkeypatch
):
    original = TrainPatches.__getitem__

    def slow(self, index):  # a loader that cannot keep up: 50 ms per patch at least
        time.sleep(0.05)
        return original(self, index)

    monkeypatch.setattr(TrainPatches, "__getitem__", slow)
    config = with_training(tiny_config, data_wait_warn_fraction=0.0)
    assert make_trainer(config, tiny_data, tmp_path).run() == 0
    history = pd.read_csv(tmp_path / "history.csv")
    # 4 micro-batches of 2 patches per epoch, each patch >= 50 ms in the loader
    assert (history["data_wait_s"] >= 4 * 2 * 0.05).all()
    assert (history["data_wait_fraction"] > 0).all() and (history["data_wait_fraction"] <= 1).all()
    assert (history["data_wait_s"] < history["seconds"]).all()
    log = (tmp_path / "train.log").read_text()
    assert log.count("data wait: epoch") == 2
    assert "of its training time for the loader" in log and "raise num_workers (now 0)" in log
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    assert len(events.Scalars("train/data_wait_fraction")) == 8  # every step (log_every_steps 1)
    # under the threshold: no line
    quiet = with_training(tiny_config, data_wait_warn_fraction=1.0)
    assert make_trainer(quiet, tiny_data, tmp_path / "quiet").run() == 0
    assert "data wait:" not in (tmp_path / "quiet" / "train.log").read_text()


# ----------------------------------------------------------------- the job's time limit
def test_a_job_near_its_slurm_end_time_stops_for_resume_before_any_step(
    tiny_config, tiny_data, tmp_path
):
    # SLURM ends the job in 60 s and the margin is 2 min: cellseg train must not start training
    config = with_training(tiny_config, time_budget_margin_min=2)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    command = train_command(config_path, tiny_data, run)
    env = os.environ | {
        "PYTHONPATH": str(REPO / "src"),
        "OMP_NUM_THREADS": "1",
        "SLURM_JOB_END_TIME": str(int(time.time()) + 60),
    }
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == EXIT_TIME_BUDGET, result.stderr[-3000:]
    assert "SLURM_JOB_END_TIME (" in result.stderr and "minus 2 min margin reached" in result.stderr
    assert "at epoch 0, step 0; nothing trained in this attempt" in result.stderr
    assert not (run / "checkpoints" / "last.pt").exists() and not (run / "history.csv").exists()


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        # the budget (1 - 0.99 min from the job's start) is gone before the first step
        ({"runtime_min": 1, "time_budget_margin_min": 0.99}, EXIT_TIME_BUDGET),
        # a learning rate of 0 (the schema refuses it; the launcher does not check): a stall
        ({"lr": 0.0, "max_stalled_steps": 2}, EXIT_STALLED),
    ],
    ids=["resume", "stalled"],
)
def test_torchrun_carries_the_ranks_exit_status_to_the_job(
    tiny_config, tiny_data, tmp_path, fault, status
):
    # what the train rule runs (workflow/scripts/train.py): two gloo ranks under torchrun,
    # whose own status is 1 whenever a rank exits non-zero
    config = copy.deepcopy(tiny_config)
    config["models"]["unet_2d"] = {"gpus": 2, "run_on_cpu": True, "mem_mb": 8000, **fault}
    log_path = tmp_path / "job.log"
    with open(log_path, "w") as log:
        result = launch_training(
            config,
            "unet_2d",
            tmp_path / "run",
            tiny_data["datasplit"],
            tiny_data["class_frequencies"],
            runtime_min=fault.get("runtime_min"),
            log=log,
        )
    text = log_path.read_text()
    assert result == status, text[-3000:]
    assert "torch.distributed.run --standalone --nproc_per_node=2" in text
    assert (
        f"torchrun exited 1; rank 0 of cellseg train exited {status}: the job exits {status}"
        in (text)
    )
    assert not (tmp_path / "run" / ".exit_status").exists()


def test_the_budget_of_a_torchrun_rank_counts_from_torchrun(monkeypatch):
    own = psutil.Process().create_time()
    assert job_start_time() == own
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    assert job_start_time() == psutil.Process().parent().create_time() <= own
