from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.overrides import TorchFunctionMode

from cellseg.classes import CLASSES
from cellseg.data.dataset import worker_init_fn
from cellseg.errors import CellsegError
from cellseg.training import EXIT_TIME_BUDGET, Trainer, resolve_settings
from cellseg.training.checkpoint import load_checkpoint
from cellseg.training.launch import training_command

pytestmark = pytest.mark.minutes(1)  # order: tests/conftest.py

REPO = Path(__file__).resolve().parents[2]


def make_trainer(config, tiny_data, run_dir, key="unet_2d", **kwargs) -> Trainer:
    return Trainer(
        resolve_settings(config, key),
        run_dir,
        tiny_data["datasplit"],
        tiny_data["class_frequencies"],
        **kwargs,
    )


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def test_training_writes_outputs_and_history(tiny_config, tiny_data, tmp_path):
    assert make_trainer(tiny_config, tiny_data, tmp_path).run() == 0
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["epoch"]) == [0, 1]
    expected = {
        "train_loss",
        "val_loss",
        "lr",
        "val_mean_dice",
        "seconds",
        "samples_per_s",
        "peak_memory_mb",
    }
    assert expected | {f"val_dice_{c}" for c in CLASSES} <= set(history.columns)
    assert history["train_loss"].notna().all() and (history["val_mean_dice"].between(0, 1)).all()
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["summary"]["stop_reason"] == "max_epochs" and best["classes"] == list(CLASSES)
    assert best["logit_shift"].shape == (len(CLASSES),)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best.pt",
        "epoch_0002.pt",
        "last.pt",
    ]
    assert not list(tmp_path.rglob("*.tmp")), "no temporary files are left behind"


@pytest.mark.parametrize("key", ["unet_2d", "unet_3d"])
def test_kill_and_resume_gives_identical_weights(tiny_config, tiny_data, tmp_path, key):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert make_trainer(tiny_config, tiny_data, straight, key).run() == 0
    failing = copy.deepcopy(tiny_config)
    failing["training"]["defaults"]["fail_after_steps"] = 3  # mid-epoch
    with pytest.raises(RuntimeError, match="fault injection"):
        make_trainer(failing, tiny_data, resumed, key).run()
    assert load_checkpoint(resumed / "checkpoints" / "last.pt")["global_step"] == 3
    assert not (resumed / "best.pt").exists()
    assert make_trainer(tiny_config, tiny_data, resumed, key).run() == 0
    for name, tensor in weights(straight).items():
        torch.testing.assert_close(weights(resumed)[name], tensor, rtol=0, atol=0, msg=name)
    a, b = pd.read_csv(straight / "history.csv"), pd.read_csv(resumed / "history.csv")
    pd.testing.assert_series_equal(a["train_loss"], b["train_loss"])
    pd.testing.assert_series_equal(a["val_mean_dice"], b["val_mean_dice"])


def record_worker_start(directory: Path, worker_id: int) -> None:
    """A worker_init_fn that leaves one file per worker process started."""
    worker_init_fn(worker_id)
    (directory / f"worker-{os.getpid()}").touch()


def test_workers_persist_across_epochs_and_change_nothing(
    tiny_config, tiny_data, tmp_path, monkeypatch
):
    in_process = tmp_path / "in_process"
    assert make_trainer(tiny_config, tiny_data, in_process).run() == 0
    starts = tmp_path / "starts"
    starts.mkdir()
    monkeypatch.setattr(
        "cellseg.training.batches.worker_init_fn", partial(record_worker_start, starts)
    )
    with_workers = copy.deepcopy(tiny_config)
    with_workers["training"]["defaults"]["num_workers"] = 2
    workers_dir = tmp_path / "workers"
    assert make_trainer(with_workers, tiny_data, workers_dir).run() == 0
    # 2 epochs, 2 workers: started once, not once per epoch
    assert len(list(starts.iterdir())) == 2
    assert len(pd.read_csv(workers_dir / "history.csv")) == 2
    for name, tensor in weights(in_process).items():
        torch.testing.assert_close(weights(workers_dir)[name], tensor, rtol=0, atol=0, msg=name)


def test_time_budget_stops_with_checkpoint_then_resumes(tiny_config, tiny_data, tmp_path):
    class BudgetEndsAtStep2(Trainer):
        def after_optimizer_step(self, samples_per_s: float) -> None:
            if self.global_step == 2:
                self.deadline = time.monotonic()  # the budget runs out during step 2
            super().after_optimizer_step(samples_per_s)

    settings = resolve_settings(tiny_config, "unet_2d")
    files = (tiny_data["datasplit"], tiny_data["class_frequencies"])
    assert BudgetEndsAtStep2(settings, tmp_path, *files, time_budget_min=10).run() == 75
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["global_step"] == 2 and not (tmp_path / "history.csv").exists()
    assert "reached at epoch 0, step 2" in (tmp_path / "train.log").read_text()
    assert make_trainer(tiny_config, tiny_data, tmp_path).run() == 0
    assert len(pd.read_csv(tmp_path / "history.csv")) == 2


def test_a_step_delay_makes_any_machine_too_slow_for_its_budget(tiny_config, tiny_data, tmp_path):
    # 8 steps (2 epochs of 4) that sleep 1 s each cannot fit a 6 s budget on any machine: the
    # run stops for a resume (what the SLURM time-limit test relies on), and the delay, outside
    # the config hash, can be dropped for the resume, which finishes
    slow = copy.deepcopy(tiny_config)
    slow["training"]["defaults"].update(inject_step_delay_s=1.0, checkpoint_every_steps=1)
    trainer = make_trainer(slow, tiny_data, tmp_path, time_budget_min=0.1)
    assert trainer.run() == EXIT_TIME_BUDGET
    assert 0 < trainer.global_step < 8 and not (tmp_path / "history.csv").exists()
    assert make_trainer(tiny_config, tiny_data, tmp_path).run() == 0
    assert "resumed from" in (tmp_path / "train.log").read_text()
    assert len(pd.read_csv(tmp_path / "history.csv")) == 2


def test_a_budget_used_up_before_training_stops_before_any_step(tiny_config, tiny_data, tmp_path):
    # the budget counts from the job's start: 2 minutes ago, with a 1-minute budget
    trainer = make_trainer(
        tiny_config, tiny_data, tmp_path, time_budget_min=1, job_started=time.time() - 120
    )
    assert trainer.run() == EXIT_TIME_BUDGET
    assert trainer.global_step == 0 and not (tmp_path / "checkpoints" / "last.pt").exists()
    log = (tmp_path / "train.log").read_text()
    assert "time budget of 1.0 min from the job's start reached at epoch 0, step 0" in log
    assert "nothing trained in this attempt" in log


def test_a_run_that_fits_its_budget_does_not_stop_for_a_distant_checkpoint(
    tiny_config, tiny_data, tmp_path
):
    # 10 minutes are plenty for the tiny run, but not for 10^7 steps to the next checkpoint:
    # the budget check looks ahead only to the end of training
    config = copy.deepcopy(tiny_config)
    config["training"]["defaults"]["checkpoint_every_steps"] = 10**7
    assert make_trainer(config, tiny_data, tmp_path, time_budget_min=10).run() == 0
    assert len(pd.read_csv(tmp_path / "history.csv")) == 2


def test_early_stopping_on_plateau(tiny_config, tiny_data, tmp_path):
    config = copy.deepcopy(tiny_config)
    config["training"]["defaults"].update(
        max_epochs=5, early_stopping_patience=1, early_stopping_min_delta=2.0
    )
    assert make_trainer(config, tiny_data, tmp_path).run() == 0
    summary = torch.load(tmp_path / "best.pt", weights_only=False)["summary"]
    assert (
        summary["stop_reason"] == "early_stop"
        and summary["epochs_run"] == 2
        and summary["best_epoch"] == 0
    )


def test_changed_settings_are_refused_naming_the_keys(tiny_config, tiny_data, tmp_path):
    failing = copy.deepcopy(tiny_config)
    failing["training"]["defaults"]["fail_after_steps"] = 1
    with pytest.raises(RuntimeError):
        make_trainer(failing, tiny_data, tmp_path).run()
    changed = copy.deepcopy(tiny_config)
    changed["training"]["2d"]["lr"] = 0.5
    changed["loss"]["alpha"] = 0.7
    with pytest.raises(
        CellsegError, match=r"changed: loss\.alpha, lr\); to keep that run, set them back"
    ) as refused:
        make_trainer(changed, tiny_data, tmp_path).run()
    assert "\n" not in str(refused.value) and "--restart" in str(refused.value)
    # every attempt's log says how it ended, the refusal included
    assert f"failed: CellsegError: {refused.value}" in (tmp_path / "train.log").read_text()
    assert make_trainer(changed, tiny_data, tmp_path, restart=True).run() == 0


def test_nonfinite_loss_stops_with_one_line_error(tiny_config, tiny_data, tmp_path):
    class NaNTrainer(Trainer):
        def build_network(self) -> torch.nn.Module:
            network = super().build_network()
            network.register_forward_hook(lambda module, args, output: output * float("nan"))
            return network

    config = copy.deepcopy(tiny_config)
    config["training"]["defaults"]["max_nonfinite_steps"] = 2
    trainer = NaNTrainer(
        resolve_settings(config, "unet_2d"),
        tmp_path,
        tiny_data["datasplit"],
        tiny_data["class_frequencies"],
    )
    with pytest.raises(CellsegError, match="NaN/Inf in 3 accumulation windows in a row") as error:
        trainer.run()
    assert "\n" not in str(error.value)


def test_tensorboard_has_dice_frequency_and_adjustment_tags(tiny_config, tiny_data, tmp_path):
    assert make_trainer(tiny_config, tiny_data, tmp_path).run() == 0
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    for name in CLASSES:
        assert f"logit_adjustment/{name}" in tags
        assert f"class_frequency_online/{name}" in tags and f"class_frequency_exact/{name}" in tags
    assert {"val/mean_dice", "train/loss", "train/lr", "val_dice/ecs"} <= tags
    assert len(events.Scalars("val/mean_dice")) == 2
    assert "logit_adjustment" in events.Tags()["images"] and "samples" in events.Tags()["images"]


def test_two_process_gloo_ddp(tiny_config, tiny_data, tmp_path):
    # two "GPUs" as CPU processes, because the config says so (the rehearsal's path)
    config = copy.deepcopy(tiny_config)
    config["training"]["defaults"].update(gpus=2, run_on_cpu=True)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    # the launcher's own command line: torchrun --standalone --nproc_per_node=2 … cellseg train
    command = training_command(
        config_path,
        "unet_2d",
        run_dir,
        tiny_data["datasplit"],
        tiny_data["class_frequencies"],
        gpus=2,
    )
    assert "--nproc_per_node=2" in command
    environment = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [0, 1] and history["val_mean_dice"].notna().all()
    summary = torch.load(run_dir / "best.pt", weights_only=False)["summary"]
    assert summary["processes"] == 2
    # only rank 0 writes: one event file, one line per epoch in the log
    assert len(list((run_dir / "tensorboard").glob("events.*"))) == 1
    assert result.stderr.count("epoch 1: train loss") == 1
    assert (
        result.stderr.count("run_on_cpu: gpus: 2 configured, running 2 CPU process(es) (gloo)") == 1
    )


def test_every_attempt_logs_its_resolved_settings_and_data(tiny_config, tiny_data, tmp_path):
    config = copy.deepcopy(tiny_config)
    config["models"]["unet_2d"] = {"lr": 0.0123, "patch_shape": [48, 48]}
    assert make_trainer(config, tiny_data, tmp_path).run() == 0
    log = (tmp_path / "train.log").read_text()
    settings = log.split("settings (config hash", 1)[1]
    assert "lr: 0.0123" in settings and "patch_shape:\n- 48\n- 48" in settings
    assert "train crops (2): tiny/crop1, tiny/crop2" in settings
    assert "validate crops (1): tiny/crop3" in settings
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    text = events.Tensors("settings/attempt_1/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("attempt 1, from step 0")
    assert "lr: 0.0123" in text and "batch_per_gpu: 2" in text
    assert make_trainer(config, tiny_data, tmp_path).run() == 0  # a second attempt logs again
    log = (tmp_path / "train.log").read_text()
    assert log.count("settings (config hash") == 2 and "attempt 2: settings" in log
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    text = events.Tensors("settings/attempt_2/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("attempt 2, resumed at epoch 2, step 8")


def write_split(tiny_data, tmp_path, splits: dict[str, str]) -> Path:
    """The tiny datasplit with some crops moved to other splits."""
    from cellseg.data.datasplit import read_datasplit, write_datasplit
    from cellseg.data.store import Crop

    crops = [
        Crop(
            c.em_store,
            c.em_group,
            c.label_store,
            c.crop_group,
            c.classes,
            splits.get(c.name, c.split),
        )
        for c in read_datasplit(tiny_data["datasplit"])
    ]
    path = tmp_path / "datasplit.csv"
    write_datasplit(crops, path)
    return path


def test_other_training_data_never_resumes_a_run(tiny_config, tiny_data, tmp_path):
    run = tmp_path / "run"
    assert make_trainer(tiny_config, tiny_data, run).run() == 0
    first = torch.load(run / "best.pt", weights_only=False)
    assert first["data_identity"]["train"] == ["tiny/crop1", "tiny/crop2"]
    assert first["data_identity"]["validate"] == ["tiny/crop3"]
    old_last = weights(run)
    # crop2 leaves training for the test split: resuming would reuse weights that saw it
    moved = write_split(tiny_data, tmp_path, {"tiny/crop2": "test"})
    other = tiny_data | {"datasplit": moved}
    assert make_trainer(tiny_config, other, run).run() == 0
    log = (run / "train.log").read_text()
    assert "trained on other data (train: -tiny/crop2" in log and "training anew" in log
    assert "resumed from" not in log
    superseded = list((run / "checkpoints" / "superseded").glob("*/last.pt"))
    assert len(superseded) == 1
    assert all(
        torch.equal(old_last[k], v) for k, v in load_checkpoint(superseded[0])["model"].items()
    )
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [0, 1]  # trained from scratch, not "finished" at once
    second = torch.load(run / "best.pt", weights_only=False)
    assert second["data_identity"]["train"] == ["tiny/crop1"]
    # an explicit --resume against other data is refused, naming what changed
    with pytest.raises(CellsegError, match=r"trained on other data \(train: \+tiny/crop2\)"):
        make_trainer(tiny_config, tiny_data, run, resume=run / "checkpoints" / "last.pt").run()


def test_an_early_stopped_run_stays_stopped_when_run_again(tiny_config, tiny_data, tmp_path):
    config = copy.deepcopy(tiny_config)
    # only the first epoch can improve by min_delta 1.0: patience 1 stops after the second
    config["training"]["defaults"].update(
        max_epochs=4, early_stopping_patience=1, early_stopping_min_delta=1.0
    )
    assert make_trainer(config, tiny_data, tmp_path).run() == 0
    assert json.loads((tmp_path / "train_summary.json").read_text())["stop_reason"] == "early_stop"
    before = weights(tmp_path)
    assert make_trainer(config, tiny_data, tmp_path).run() == 0
    assert len(pd.read_csv(tmp_path / "history.csv")) == 2
    assert all(torch.equal(before[k], v) for k, v in weights(tmp_path).items())


def test_a_resumed_run_leaves_no_duplicate_tensorboard_points(tiny_config, tiny_data, tmp_path):
    class Killed(Exception):
        pass

    class KilledAfterStep3(Trainer):
        def after_optimizer_step(self, samples_per_s: float) -> None:
            super().after_optimizer_step(samples_per_s)  # logs step 3, checkpoint is at step 2
            if self.global_step == 3:
                raise Killed  # like SIGKILL: nothing saved

    config = copy.deepcopy(tiny_config)
    # 2 micro-batches per step and an online class-frequency update every micro-batch: two
    # updates in every window, logged once, against the step after the window
    config["training"]["defaults"].update(checkpoint_every_steps=2, grad_accum=2)
    config["training"]["2d"]["iterations_per_epoch"] = 8  # 4 steps per epoch, 8 in all
    config["loss"]["online_frequency_every"] = 1
    settings = resolve_settings(config, "unet_2d")
    files = (tiny_data["datasplit"], tiny_data["class_frequencies"])
    with pytest.raises(Killed):  # attempt 1: killed at step 3, resumes from step 2
        KilledAfterStep3(settings, tmp_path, *files).run()
    failing = copy.deepcopy(config)
    failing["training"]["defaults"]["fail_after_steps"] = 5
    with pytest.raises(RuntimeError, match="fail_after_steps=5"):  # attempt 2: from 2 to 5
        Trainer(resolve_settings(failing, "unet_2d"), tmp_path, *files).run()
    assert Trainer(settings, tmp_path, *files).run() == 0  # attempt 3: from 5 to the end
    events = EventAccumulator(
        str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}
    ).Reload()
    for tag in events.Tags()["scalars"]:
        steps = [event.step for event in events.Scalars(tag)]
        assert steps == sorted(set(steps)), tag  # no (tag, step) twice
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))
    assert [e.step for e in events.Scalars("class_frequency_online/ecs")] == list(range(1, 9))
    assert [e.step for e in events.Scalars("val/mean_dice")] == [4, 8]
    texts = {
        tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode()
        for tag in events.Tags()["tensors"]
        if tag.startswith("settings/")
    }
    assert sorted(texts) == [f"settings/attempt_{n}/text_summary" for n in (1, 2, 3)]
    assert texts["settings/attempt_2/text_summary"].startswith(
        "attempt 2, resumed at epoch 0, step 2"
    )
    assert texts["settings/attempt_3/text_summary"].startswith(
        "attempt 3, resumed at epoch 1, step 5"
    )


def test_the_untrained_model_predicts_each_class_prior(tiny_config, tiny_data, tmp_path):
    trainer = make_trainer(tiny_config, tiny_data, tmp_path)
    trainer.initialize()
    bias = trainer.network.output_layer().bias.detach()
    prior = trainer.loss.prior.clamp(1e-6, 1 - 1e-6)
    # what the loss sees of a zero-centred output: sigmoid(z + shift), here sigmoid(bias + shift)
    torch.testing.assert_close(torch.sigmoid(bias + trainer.loss.shift()), prior, rtol=1e-4, atol=0)
    config = copy.deepcopy(tiny_config)
    config["training"]["defaults"]["output_bias_init"] = "zero"
    library = make_trainer(config, tiny_data, tmp_path / "zero")
    library.initialize()
    assert not torch.allclose(library.network.output_layer().bias.detach(), bias)


class HostReads(TorchFunctionMode):
    """Records the tensor-to-host reads (host syncs on a GPU) that the trainer's own code makes
    (reads inside torch, such as the optimizer's of its CPU step counters, are not the trainer's)."""

    METHODS = frozenset(("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"))

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = getattr(func, "__name__", "")
        caller = sys._getframe(1).f_code.co_filename
        if name in self.METHODS and caller.startswith(str(REPO / "src" / "cellseg")):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def started_trainer(config: dict, tiny_data, run_dir: Path, **defaults) -> tuple[Trainer, dict]:
    """An initialized trainer (``defaults``: training settings) and one of its training batches."""
    config = copy.deepcopy(config)
    config["training"]["defaults"].update(defaults)
    config["loss"]["online_frequency_every"] = 1000  # its own read of the window: not in these
    trainer = make_trainer(config, tiny_data, run_dir)
    trainer.initialize()
    batch = next(trainer.loader())
    return trainer, batch


def test_micro_batches_read_nothing_back_until_the_optimizer_step(tiny_config, tiny_data, tmp_path):
    trainer, batch = started_trainer(tiny_config, tiny_data, tmp_path, grad_accum=3)
    image, target = batch["image"], batch["target"]
    losses: list[torch.Tensor] = []
    trainer.loss.register_forward_hook(lambda module, args, out: losses.append(out.detach()))
    with HostReads() as reads:
        trainer.train_step(image, target, step=False)
        trainer.train_step(image, target, step=False)
    assert reads.calls == [] and trainer.epoch_loss_count == 0
    with HostReads() as reads:
        trainer.train_step(image, target, step=True)
    assert reads.calls == ["tolist"]  # the window's losses and flags, at once
    assert trainer.global_step == 1 and trainer.epoch_loss_count == 3
    # the very sum of reading each float32 loss on its own, in order
    assert len(losses) == 3 and trainer.epoch_loss_sum == sum(float(x) for x in losses)
    assert trainer.window_losses == []


def test_a_nonfinite_micro_batch_skips_its_whole_window(tiny_config, tiny_data, tmp_path):
    trainer, batch = started_trainer(tiny_config, tiny_data, tmp_path, grad_accum=2)
    image, target = batch["image"], batch["target"]
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    trainer.train_step(image * float("nan"), target, step=False)
    trainer.train_step(image, target, step=True)
    # its NaN gradient was summed with the finite one's: no update, one skipped window counted
    # (the finite micro-batch after it does not reset the count: the window was skipped)
    assert all(torch.equal(before[k], v) for k, v in trainer.network.state_dict().items())
    assert (trainer.nonfinite_total, trainer.nonfinite.in_a_row) == (1, 1)
    assert (trainer.global_step, trainer.epoch_loss_count) == (1, 1)
    trainer.train_step(image, target, step=False)
    trainer.train_step(image, target, step=True)
    assert not all(torch.equal(before[k], v) for k, v in trainer.network.state_dict().items())
    assert (trainer.global_step, trainer.epoch_loss_count, trainer.nonfinite_total) == (2, 3, 1)
    assert trainer.nonfinite.in_a_row == 0  # an update resets it


def test_amp_logits_reach_the_loss_in_bf16(tiny_config, tiny_data, tmp_path):
    trainer, batch = started_trainer(tiny_config, tiny_data, tmp_path)
    trainer.amp = True  # CPU autocast stands in for CUDA's: the trainer turns it on only there
    seen: list[torch.dtype] = []
    trainer.loss.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    trainer.train_step(batch["image"], batch["target"], step=True)
    # no float32 copy of the logits: the loss converts them chunk by chunk
    assert seen == [torch.bfloat16]
    assert trainer.global_step == 1 and trainer.epoch_loss_count == 1
