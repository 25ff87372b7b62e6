"""The training job: one trainer class for every model, nnU-Net style.

``Trainer.run()`` is a short loop over hooks (``on_train_start``, ``train_step``,
``validation``, ``on_epoch_end``, ``on_train_end``); builders (``build_network``, ``build_loss``,
``configure_optimizers``) can be overridden by subclasses. Single process on CPU or one GPU;
under ``torchrun`` it runs DDP (NCCL on CUDA, gloo on CPU), every rank drawing its own patches,
validation counts summed across ranks, and only rank 0 writing files.

Run directory layout (``results/models/{model}_{dim}/``)::

    best.pt, history.csv, train_summary.json   declared outputs, written when training ends
    config.yaml                                the resolved settings of this run
    checkpoints/last.pt, best.pt, epoch_XXXX.pt  resumable state (not Snakemake outputs)
    checkpoints/superseded/<time>/             checkpoints of a run on other data, set aside
    train.log                                  every attempt's log, starting with its settings
    tensorboard/                               TensorBoard event files

Why one module of about 900 lines (over the 800 of issue 36): :class:`Trainer`'s loop, its
resume and DDP paths share the loop's state step by step (as nnU-Net's ``nnUNetTrainer`` keeps
its own in one class), and what is left here is that state: the builders, the checkpointed
progress, the loop's steps and the epoch's end. What does not need it lives beside it: the
device and process group (``device``), the job's time limit (``budget``), the datasets, loader
and data wait (``batches``), an accumulation window's one host sync (``window``), validation
(``validation``), TensorBoard (``tensorboard``), ``train.log`` (``runlog``), the declared
outputs (``outputs``), the checkpoint format and resume checks (``checkpoint``), the start's
weights (``init``), the watchdogs' counting (``watchdogs``), ``launch`` and ``lock``.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader

from cellseg.classes import NUM_CLASSES
from cellseg.config.settings import TrainSettings
from cellseg.data.dataset import PatchSpec, SampleRange, decode_target
from cellseg.data.datasplit import read_datasplit
from cellseg.data.identity import DataIdentity
from cellseg.errors import CellsegError
from cellseg.io import write_text_atomic
from cellseg.losses import (
    BalancedSoftmaxPartialTverskyLoss,
    OnlineClassFrequency,
    read_class_frequencies,
)
from cellseg.models import build_model, check_input_shape, model_config
from cellseg.models.margin import crop_margin, output_margin
from cellseg.trained_classes import read_trained_classes, trained_groups, untrained_line
from cellseg.training.batches import data_wait_warning, patch_datasets, training_loader
from cellseg.training.budget import time_limit
from cellseg.training.checkpoint import (
    check_settings,
    data_differences,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_aside_checkpoints,
    set_rng_state,
    unwrap,
)
from cellseg.training.device import is_distributed, setup_distributed
from cellseg.training.init import file_digest, initialize_weights
from cellseg.training.outputs import train_summary, write_outputs
from cellseg.training.runlog import append_log, attempt_number, progress_bar, settings_text
from cellseg.training.tensorboard import (
    open_writer,
    write_attempt_texts,
    write_class_frequencies,
    write_epoch,
    write_step_scalars,
)
from cellseg.training.validation import dice_columns, validate
from cellseg.training.watchdogs import (
    EXIT_STALLED,
    EXIT_TIME_BUDGET,
    NonfiniteWatch,
    StallWatch,
    StopForResume,
    TrainingStalled,
    fingerprint_parameters,
)
from cellseg.training.window import read_window

PROGRESS_KEYS: tuple[str, ...] = (
    "epoch",
    "iteration",
    "global_step",
    "history",
    "best_score",
    "best_epoch",
    "epochs_without_improvement",
    "nonfinite_total",
    "epoch_loss_sum",
    "epoch_loss_count",
    "stop_reason",
)
"""Trainer attributes a checkpoint saves and a resume restores as they are (with
``train_seconds``, which is saved with the current run's time added)."""


class Trainer:
    """Trains one model from resolved :class:`TrainSettings`.

    Args:
        settings: the run's settings.
        run_dir: where outputs, checkpoints and TensorBoard logs go.
        datasplit: the datasplit CSV (train and validate rows are used).
        class_frequencies: ``class_frequencies.json`` (the loss prior).
        time_budget_min: stop (with a checkpoint and exit status 75) before this many minutes
            after ``job_started``; under SLURM also ``time_budget_margin_min`` before
            ``SLURM_JOB_END_TIME`` (whichever comes first).
        resume: an explicit checkpoint to resume from; by default ``checkpoints/last.pt`` is used
            when its config hash matches.
        restart: discard existing checkpoints instead of resuming.
        job_started: wall-clock time (epoch seconds) the budget counts from; ``cellseg train``
            passes the process's start (:func:`~cellseg.training.budget.job_start_time`),
            default: now.
    """

    def __init__(
        self,
        settings: TrainSettings,
        run_dir: Path | str,
        datasplit: Path | str,
        class_frequencies: Path | str,
        time_budget_min: float | None = None,
        resume: Path | str | None = None,
        restart: bool = False,
        job_started: float | None = None,
    ) -> None:
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.datasplit = Path(datasplit)
        self.class_frequencies = Path(class_frequencies)
        self.time_budget_s = None if time_budget_min is None else time_budget_min * 60.0
        self.resume_path = Path(resume) if resume else None
        self.restart = restart
        self.job_started = time.time() if job_started is None else job_started
        self.deadline, self.deadline_reason = time_limit(
            self.job_started, self.time_budget_s, settings.time_budget_margin_min
        )
        self.started = time.monotonic()
        self.stop_requested = False
        self.is_main = int(os.environ.get("RANK", "0")) == 0  # until initialize() knows
        # progress, all saved in checkpoints
        self.epoch = 0
        self.iteration = 0  # micro-batches done in the current epoch
        self.global_step = 0  # optimizer steps
        self.history: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_epoch = -1
        self.epochs_without_improvement = 0
        self.nonfinite_total = 0  # skipped windows (optimizer steps) of the whole run
        self.epoch_loss_sum = 0.0
        self.epoch_loss_count = 0
        self.window_losses: list[torch.Tensor] = []
        self.window_crops: list[list[int]] = []  # each micro-batch's crop indices
        """Detached losses (device scalars) of the accumulation window so far; empty at every
        optimizer step, hence at every checkpoint."""
        self.train_seconds = 0.0
        self.stop_reason = ""
        self.init_loaded_fraction: float | None = None  # of a start from weights (init)
        # watchdogs of this attempt (not in checkpoints: a resume starts counting anew)
        self.stall = StallWatch(settings.max_stalled_steps)
        self.nonfinite = NonfiniteWatch(
            settings.max_nonfinite_steps, self.checkpoint_dir, settings.config_hash()
        )
        self.frequency_updated = False
        self.epoch_started = time.monotonic()
        self.epoch_data_wait_s = 0.0
        self.epoch_train_s = 0.0

    # ----------------------------------------------------------------- builders
    def initialize(self) -> None:
        """Build everything once: process group, data, network, loss, optimizer, scheduler."""
        s = self.settings
        self.rank, self.world_size, self.device = setup_distributed(s)
        self.is_main = self.rank == 0
        if s.gpus > 0 and s.run_on_cpu:
            self.log(
                f"run_on_cpu: gpus: {s.gpus} configured, running {self.world_size} CPU "
                f"process(es) ({'gloo' if self.world_size > 1 else 'no DDP'}) instead"
            )
        if self.device.type == "cpu":
            # the job's CPUs shared by its processes (torch would take every core of the node)
            torch.set_num_threads(max(s.cpus_per_task // self.world_size, 1))
        torch.manual_seed(s.seed + self.rank)
        np.random.seed(s.seed + self.rank)
        random.seed(s.seed + self.rank)
        if self.device.type == "cuda" and s.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.amp = s.amp and self.device.type == "cuda"
        spec = PatchSpec(tuple(s.patch_shape), s.resolution_nm)
        check_input_shape(s.model, s.dim, spec.shape, s.preset, **self.architecture())
        train_crops = read_datasplit(self.datasplit, ["train"])
        validate_crops = read_datasplit(self.datasplit, ["validate"])
        self.train_data, self.validation_data = patch_datasets(
            s, spec, train_crops, validate_crops, self.rank
        )
        self.train_sampler = SampleRange(0, 0)
        self.train_loader: DataLoader | None = None
        self.network = self.build_network().to(self.device)
        # voxels the output loses on each side (valid convolutions): targets are cropped to it
        self.margin = output_margin(self.network, 3 if s.is_3d else 2)
        # the init file's bytes, recorded in checkpoints: a run resumes only with the same file
        self.init_digest = (
            file_digest(s.init_checkpoint)
            if s.init_checkpoint and Path(s.init_checkpoint).is_file()
            else None
        )
        self.loss = self.build_loss().to(self.device)
        if s.output_bias_init == "prior":
            self.network.init_output_bias(self.prior_output_bias())
        self.parameters = sum(p.numel() for p in self.network.parameters())
        self.model: torch.nn.Module = self.network
        if s.compile and self.device.type == "cuda":
            self.model = torch.compile(self.model)
        if self.world_size > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.data_identity = DataIdentity.from_crops(
            train_crops, validate_crops, self.loss.prior.cpu().tolist()
        )
        # which classes some training crop annotates (directly or through a group label), as
        # the class_frequencies rule recorded it: best.pt carries it to inference
        frequencies = read_class_frequencies(self.class_frequencies)
        self.trained_classes = read_trained_classes(frequencies, str(self.class_frequencies))
        # the groups the training crops hold labels of (cellseg predict's groups: auto)
        self.trained_groups = trained_groups(frequencies)
        self.online_frequency = OnlineClassFrequency(
            NUM_CLASSES, update_every=int(s.loss.get("online_frequency_every", 50))
        )
        self.optimizer, self.scheduler = self.configure_optimizers()
        self.writer = None  # opened by on_train_start, once it knows the step it resumes at

    def architecture(self) -> dict[str, Any]:
        """Architecture overrides; a fixed-input model is built for the configured patch."""
        s = self.settings
        overrides = dict(s.architecture)
        if "input_shape" in model_config(s.model, s.dim, s.preset, **overrides):
            overrides.setdefault("input_shape", tuple(s.patch_shape))
        return overrides

    def build_network(self) -> torch.nn.Module:
        s = self.settings
        return build_model(s.model, s.dim, preset=s.preset, **self.architecture())

    def prior_output_bias(self) -> torch.Tensor:
        """``(C,)`` logits bias with which ``sigmoid(bias + shift)`` is each class's prior: what
        the loss (and inference with the ``train`` adjustment) sees of a zero-centred output.

        Without it every class starts at ``sigmoid(shift)``: about 0.98 for the rarest class
        under the seed's sign, predicted everywhere, and the Tversky loss has almost no gradient
        against false positives while a class has no true positive.
        """
        prior = self.loss.prior.double().clamp(1e-6, 1 - 1e-6)
        return (torch.logit(prior) - self.loss.shift().double()).float().cpu()

    def build_loss(self) -> BalancedSoftmaxPartialTverskyLoss:
        options = {
            k: v
            for k, v in self.settings.loss.items()
            if k in ("tau", "alpha", "beta", "smooth", "min_annotated_voxels", "sign", "bce_weight")
        }
        return BalancedSoftmaxPartialTverskyLoss.from_class_frequencies(
            self.class_frequencies, **options
        )

    def configure_optimizers(
        self,
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        s = self.settings
        optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=tuple(s.betas)
        )
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=s.lr,
            total_steps=max(self.total_steps, 1),
            pct_start=s.pct_start,
            anneal_strategy="cos",
        )
        return optimizer, scheduler

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.settings.iterations_per_epoch / self.settings.grad_accum)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.settings.max_epochs

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self, rng_per_rank: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The resumable state; ``rng_per_rank``: every rank's RNG state (:meth:`gather_rng`),
        so that each rank resumes with its own (dropout masks differ between ranks)."""
        rngs = rng_per_rank or [rng_state()]
        return {
            "format": "cellseg-checkpoint-1",
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None,  # bf16 autocast needs no loss scaling
            **{key: getattr(self, key) for key in PROGRESS_KEYS},
            "train_seconds": self.train_seconds + self.elapsed(),
            "online_frequency": self.online_frequency.state_dict(),
            "rng": rngs[0],  # rank 0's, for a resume with another number of ranks
            "rng_per_rank": rngs,
            "config_hash": self.settings.config_hash(),
            "settings": self.settings.result_dict(),
            "data_identity": self.data_identity.to_dict(),
            "init_digest": self.init_digest,
            # the share of the parameters the start loaded (a scratch run records nothing)
            **({"init_loaded_fraction": share} if (share := self.init_loaded_fraction) else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint that :func:`~cellseg.training.checkpoint.check_settings` and
        :func:`~cellseg.training.checkpoint.data_differences` have cleared (``on_train_start``
        checks before it decides to resume)."""
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for key in (*PROGRESS_KEYS, "train_seconds"):
            setattr(self, key, state[key])
        self.online_frequency.load_state_dict(state["online_frequency"])
        self.init_loaded_fraction = state.get("init_loaded_fraction")
        per_rank = state.get("rng_per_rank") or []
        set_rng_state(per_rank[self.rank] if len(per_rank) == self.world_size else state["rng"])

    def gather_rng(self) -> list[dict[str, Any]]:
        """Every rank's RNG state, in rank order (a collective: all ranks call it)."""
        if not is_distributed():
            return [rng_state()]
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, rng_state())
        return states

    def save(self, name: str) -> None:
        """Write ``checkpoints/{name}``: every rank takes part (RNG states), rank 0 writes.

        Under DDP every rank learns whether the write succeeded: when rank 0 cannot write (a
        full disk), the others stop with it instead of waiting at the next collective until
        the process group times out.
        """
        rng_per_rank = self.gather_rng()
        error: CellsegError | None = None
        if self.is_main:
            try:
                save_checkpoint(self.state_dict(rng_per_rank), self.checkpoint_dir / name)
            except CellsegError as failure:
                error = failure
        if is_distributed():
            failed = torch.tensor(
                float(error is not None),
                device=self.device if self.device.type == "cuda" else "cpu",
            )
            dist.all_reduce(failed, op=dist.ReduceOp.MAX)
            if failed.item() and error is None:
                error = CellsegError(
                    f"{self.checkpoint_dir / name}: rank 0 could not write this checkpoint (its "
                    "error is in the log); stopping rank "
                    f"{self.rank} with it"
                )
        if error is not None:
            raise error

    def on_train_start(self) -> None:
        if self.restart and self.is_main and self.checkpoint_dir.exists():
            for path in self.checkpoint_dir.glob("*.pt"):
                path.unlink()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(
                self.run_dir / "config.yaml",
                yaml.safe_dump(
                    self.settings.result_dict() | {"config_hash": self.settings.config_hash()},
                    sort_keys=False,
                ),
            )
        self.log_settings()
        self.barrier()
        source = self.resume_path or self.checkpoint_dir / "last.pt"
        resumed = False
        if self.resume_path or (not self.restart and source.is_file()):
            state = load_checkpoint(source)
            check_settings(state, self.settings, source, self.checkpoint_dir)
            differences = data_differences(
                state, self.data_identity, self.init_digest, self.settings.init_checkpoint
            )
            if differences and self.resume_path:
                raise CellsegError(
                    f"{source}: checkpoint was trained on other data ({'; '.join(differences)}); "
                    "resume it with the datasplit and class frequencies it was trained with"
                )
            if differences:
                self.barrier()  # every rank has read it before it moves
                moved = set_aside_checkpoints(self.checkpoint_dir, self.is_main)
                self.barrier()
                self.log(
                    f"{source} was trained on other data ({'; '.join(differences)}): training "
                    f"anew; its checkpoints were moved to {moved} (move them back and restore "
                    "that datasplit to resume it)"
                )
            else:
                self.load_state_dict(state)
                self.log(f"resumed from {source} at epoch {self.epoch}, step {self.global_step}")
                resumed = True
        if not resumed:
            self.start_weights()
        if self.is_main:
            self.writer = open_writer(self.run_dir, self.global_step)
            write_attempt_texts(
                self.writer, self.attempt, *self.settings_text, self.epoch, self.global_step
            )
        self.train_seconds_at_start = self.train_seconds
        self.steps_at_start = self.global_step
        self.epochs_at_start = len(self.history)
        self.started = time.monotonic()

    def start_weights(self) -> None:
        """A fresh start's weights from ``init`` (a resumed run has its own): tensors that match
        load in place on every rank alike, over the prior output bias when the file has the
        head (a fine-tuned head keeps its bias); the log lists what loaded."""
        s = self.settings
        report = initialize_weights(self.network, s.init, f"{s.key} (training setting init)")
        if report is not None:
            self.log(report.describe())
            self.init_loaded_fraction = report.loaded_fraction
            if (warning := report.warning(s.key)) is not None:
                self.log(warning)

    def log_settings(self) -> None:
        """Write what this attempt runs with to ``train.log`` and keep it for TensorBoard
        (:func:`~cellseg.training.tensorboard.write_attempt_texts`): every resolved setting and
        the data it trains on. Attempts are numbered by the ``train.log`` of the run directory."""
        if not self.is_main:
            return
        self.attempt = attempt_number(self.run_dir)
        self.settings_text = settings_text(
            self.settings, self.data_identity, self.datasplit, self.class_frequencies
        )
        settings, data = self.settings_text
        self.log(
            f"attempt {self.attempt}: settings (config hash {self.settings.config_hash()}, "
            f"{self.world_size} process(es) on {self.device.type}):\n{settings}{data}"
        )
        if (line := untrained_line(self.trained_classes)) is not None:
            self.log(line)

    # ----------------------------------------------------------------- the loop
    def run(self) -> int:
        """Train to the end (or to a resumable stop). Returns the process exit status.

        An error ends the run as it is raised, and is written to ``train.log`` first, so the log
        of every attempt says how it ended.
        """
        try:
            return self._run()
        except Exception as error:
            self.log(f"failed: {type(error).__name__}: {error}")
            raise

    def _run(self) -> int:
        self.initialize()
        self.on_train_start()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            if not self.stop_reason:
                # opening the crops, loading the checkpoint and starting torchrun count against
                # the job's limit: a job that has already used it up stops before any step
                self.check_time(0.0)
            while self.epoch < self.settings.max_epochs and not self.stop_reason:
                self.train_epoch()
                self.on_epoch_end(self.validation())
            self.on_train_end()
            return 0
        except StopForResume as stop:
            if (
                self.global_step == self.steps_at_start
                and len(self.history) == self.epochs_at_start
            ):
                # every attempt starts up alike: this one will not be the last to stop here
                saved = (
                    "nothing trained in this attempt, no checkpoint written (the job had run "
                    f"{time.time() - self.job_started:.0f} s before its first step: if its start-up "
                    "takes that long every time, raise runtime_min or lower "
                    "time_budget_margin_min)"
                )
            else:
                self.save("last.pt")
                saved = f"checkpoint {self.checkpoint_dir / 'last.pt'} saved"
            self.log(f"{stop}; {saved}: run the same command again to resume")
            self.close_writer()
            # torchrun ends every rank as soon as one exits non-zero: no rank leaves before
            # rank 0 has written the checkpoint the next attempt resumes from, and its events
            self.barrier()
            return EXIT_TIME_BUDGET
        except TrainingStalled as stalled:
            # no checkpoint of the stalled state: the last one was written on schedule
            self.log(f"stopped (exit status {EXIT_STALLED}): {stalled}")
            self.close_writer()
            self.barrier()
            return EXIT_STALLED
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.train_loader = None  # its persistent workers exit with it
            self.close_writer()

    def close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def loader(self) -> Iterator[dict[str, torch.Tensor]]:
        """This epoch's remaining micro-batches (resumes mid-epoch at ``self.iteration``).

        One loader serves the whole run and only its sampler's range moves: with workers, they
        persist across epochs, so their array caches (``cache_mb``) stay warm and no epoch pays
        for starting processes again.
        """
        s = self.settings
        per_epoch = s.iterations_per_epoch * s.batch_per_gpu
        start = self.epoch * per_epoch + self.iteration * s.batch_per_gpu
        self.train_sampler.set_range(start, (self.epoch + 1) * per_epoch)
        if self.train_loader is None:
            self.train_loader = training_loader(
                self.train_data, self.train_sampler, s, self.device.type == "cuda"
            )
        return iter(self.train_loader)

    def train_epoch(self) -> None:
        """One epoch's remaining micro-batches. The time each waits for the loader (from asking
        its iterator for the batch to getting it) adds up in :attr:`epoch_data_wait_s`, out of
        :attr:`epoch_train_s` (this attempt's part of the epoch, validation excluded)."""
        s = self.settings
        self.model.train()
        epoch_started = self.epoch_started = time.monotonic()
        self.epoch_data_wait_s = 0.0
        samples = 0
        progress = self.progress_bar()
        batches = self.loader()
        while True:
            asked = time.monotonic()
            batch = next(batches, None)
            self.epoch_data_wait_s += time.monotonic() - asked
            if batch is None:
                break
            micro = self.iteration % s.grad_accum
            last_micro = micro == s.grad_accum - 1 or self.iteration == s.iterations_per_epoch - 1
            image = batch["image"].to(self.device, non_blocking=True)
            target = batch["target"].to(self.device, non_blocking=True)
            self.train_step(image, target, last_micro, batch["crop"])
            self.iteration += 1
            samples += image.shape[0] * self.world_size
            if progress is not None:
                progress.update(1)
            if last_micro:
                self.after_optimizer_step(samples / max(time.monotonic() - epoch_started, 1e-9))
        if progress is not None:
            progress.close()
        self.epoch_train_s = time.monotonic() - epoch_started
        self.epoch_samples_per_s = samples / max(self.epoch_train_s, 1e-9)

    def train_step(
        self, image: torch.Tensor, target: torch.Tensor, step: bool, crops: Any = None
    ) -> None:
        """Forward and backward one micro-batch; on the last of ``grad_accum``, step.

        No micro-batch waits for the device: every one is backpropagated, finite or not, and
        its loss stays a device tensor in :attr:`window_losses` until :meth:`optimizer_step`
        reads the window's losses once. A non-finite loss anywhere in the window therefore
        skips the window's whole update (its NaN/Inf gradient is already in the sum).
        ``crops``: the micro-batch's crop indices (the loader's ``crop``), named if it is.
        """
        s = self.settings
        # the loader's compact uint8 target, decoded on the device; cropped to the output
        target = crop_margin(decode_target(target), self.margin)
        sync = contextlib.nullcontext()
        if not step and isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            sync = self.model.no_sync()  # no all-reduce on accumulation-only micro-batches
        with sync:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.model(image)
            # bf16 logits go in as they are: the loss converts them chunk by chunk, whereas a
            # .float() here would keep a full float32 copy alive until backward
            loss = self.loss(logits, target)
            (loss / s.grad_accum).backward()
        self.window_losses.append(loss.detach())
        self.window_crops.append([] if crops is None else [int(c) for c in crops])
        # group labels (issue 33 item 2), if any, follow the 14 classes: priors are per class
        if self.online_frequency.update(target[:, :NUM_CLASSES]):
            # logged after the optimizer step, against the step it leads to: a point logged
            # before the increment would sit at the checkpoint's step, which a resume's
            # purge_step keeps, and the resumed attempt would log it again
            self.frequency_updated = True
        if step:
            self.optimizer_step()

    def optimizer_step(self) -> None:
        """End the accumulation window: count its losses, then step unless one was NaN/Inf.

        One host sync per window (:func:`~cellseg.training.window.read_window`): the window's
        losses, their finite flags (under DDP the minimum over ranks) and whether the gradient
        norm is finite come to the host in one read. Losses are summed on the host in
        micro-batch order, as when each was read on its own (the same float64 sums, for
        bit-identical resumes).
        A window with a NaN/Inf loss or gradient norm is one skipped window
        (:class:`~cellseg.training.watchdogs.NonfiniteWatch`), whatever ``grad_accum``.

        Raises:
            CellsegError: more than ``max_nonfinite_steps`` skipped windows in a row.
            TrainingStalled: a skipped window recurs at the same data after a resume.
        """
        s = self.settings
        window_losses, crops = self.window_losses, self.window_crops
        self.window_losses, self.window_crops = [], []
        if not hasattr(self, "fingerprinted"):
            self.fingerprinted = fingerprint_parameters(self.network)
        injected = s.inject_nonfinite_grad_after_steps
        reading = read_window(
            window_losses,
            self.network,
            self.fingerprinted,
            s.grad_clip,
            inject_nan=injected is not None and self.global_step >= injected,
        )
        for value, ok in zip(reading.losses, reading.finite, strict=True):
            if ok and not reading.bad_gradient:
                self.epoch_loss_sum += value
                self.epoch_loss_count += 1
        if reading.update:
            self.nonfinite.finite()
        else:
            self.nonfinite_total += 1
            named = [
                self.train_data.crops[c].name
                for window, ok in zip(crops, reading.own, strict=True)
                if reading.bad_gradient or not ok
                for c in window
            ]
            if is_distributed():
                everyone: list[Any] = [None] * self.world_size
                dist.all_gather_object(everyone, named)
                named = [c for rank in everyone for c in rank]
            self.nonfinite.skipped(
                self.global_step,
                self.epoch,
                named,
                "gradient norm" if reading.bad_gradient else "loss",
                write=self.is_main,
                resumed=getattr(self, "steps_at_start", 0) > 0,
            )
        self.stall.update(
            sum(reading.losses, 0.0) / len(reading.losses),
            reading.norm,
            reading.fingerprint,
            self.epoch,
            self.global_step + 1,
            self.checkpoint_dir,
        )
        if reading.update:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_step += 1

    def after_optimizer_step(self, samples_per_s: float) -> None:
        s = self.settings
        if self.writer is not None and self.frequency_updated:
            write_class_frequencies(
                self.writer, self.online_frequency, self.loss.prior.cpu(), self.global_step
            )
        self.frequency_updated = False
        if self.writer is not None and self.global_step % max(s.log_every_steps, 1) == 0:
            write_step_scalars(
                self.writer,
                self.epoch_loss_sum / max(self.epoch_loss_count, 1),
                self.scheduler.get_last_lr()[0],
                samples_per_s,
                self.peak_memory_mb(),
                self.epoch_data_wait_s,
                self.epoch_started,
                self.global_step,
            )
        if not sys.stderr.isatty() and self.global_step % max(s.log_every_steps, 1) == 0:
            done = self.global_step / max(self.total_steps, 1)
            eta = (
                (time.monotonic() - self.started) * (1 - done) / max(done, 1e-9)
                if done
                else float("nan")
            )
            self.log(
                f"epoch {self.epoch} step {self.global_step}/{self.total_steps} "
                f"loss {self.epoch_loss_sum / max(self.epoch_loss_count, 1):.4f} "
                f"{samples_per_s:.1f} samples/s ETA {eta / 60:.1f} min"
            )
        if s.inject_step_delay_s > 0:
            time.sleep(s.inject_step_delay_s)
        if s.fail_after_steps is not None and self.global_step >= s.fail_after_steps:
            self.save("last.pt")
            raise RuntimeError(f"fault injection: fail_after_steps={s.fail_after_steps} reached")
        if self.global_step % max(s.checkpoint_every_steps, 1) == 0:
            self.save("last.pt")
        # the next checkpoint, or the end of training when that comes first: a run whose
        # remaining steps fit the budget must not stop to resume for a checkpoint it never needs
        steps_ahead = min(s.checkpoint_every_steps, max(self.total_steps - self.global_step, 0))
        self.check_time(self.step_seconds() * steps_ahead)

    def step_seconds(self) -> float:
        """Mean wall time of an optimizer step in this process so far (validation included)."""
        return self.elapsed() / max(self.global_step - self.steps_at_start, 1)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def check_time(self, next_interval_s: float) -> None:
        """Stop for a resume when SIGTERM came or the next interval would overrun the job's
        limit (:func:`~cellseg.training.budget.time_limit`); stop for good when the stall
        watchdog fired on any rank.

        Raises:
            TrainingStalled: the stall watchdog fired (on any rank under DDP).
            StopForResume: SIGTERM, or the limit.
        """
        stop = self.stop_requested
        if self.deadline is not None and time.monotonic() + next_interval_s > self.deadline:
            stop = True
        stalled = bool(self.stall.message)
        if is_distributed():
            # one collective for both: every rank stops together, and the same way
            flags = torch.tensor(
                [float(stop), float(stalled)],
                device=self.device if self.device.type == "cuda" else "cpu",
            )
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            stop, stalled_anywhere = (bool(x) for x in flags.tolist())
            if stalled_anywhere and not stalled:
                self.stall.another_rank_stalled(self.epoch, self.global_step)
            stalled = stalled_anywhere
        if stalled:
            raise TrainingStalled(self.stall.message)
        if stop:
            why = "SIGTERM received" if self.stop_requested else f"{self.deadline_reason} reached"
            raise StopForResume(f"{why} at epoch {self.epoch}, step {self.global_step}")

    # ----------------------------------------------------------------- validation
    def validation(self) -> dict[str, Any]:
        """Per-class (and per-group) Dice on the fixed validation patches, with the training's
        logit adjustment (:func:`~cellseg.training.validation.validate`)."""
        s = self.settings
        self.model.eval()
        started = time.monotonic()
        result = validate(
            self.network,
            self.loss,
            self.validation_data,
            self.device,
            self.margin,
            s.validation_batch_size,
            s.loss.get("inference_logit_adjustment", "train"),
            amp=self.amp,
            rank=self.rank,
            world_size=self.world_size,
            trained=self.trained_classes,
        )
        self.model.train()
        self.validation_seconds = time.monotonic() - started
        return result

    # ----------------------------------------------------------------- epoch end
    def on_epoch_end(self, validation: dict[str, Any]) -> None:
        s = self.settings
        epoch_seconds = (
            self.elapsed() + self.train_seconds_at_start - sum(r["seconds"] for r in self.history)
        )
        row: dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.global_step,
            "train_loss": self.epoch_loss_sum / max(self.epoch_loss_count, 1),
            "val_loss": validation["val_loss"],
            "lr": self.scheduler.get_last_lr()[0],
            "val_mean_dice": validation["mean_dice"],
            **dice_columns(validation["dice"]),
            "seconds": epoch_seconds,
            "samples_per_s": getattr(self, "epoch_samples_per_s", float("nan")),
            "peak_memory_mb": self.peak_memory_mb(),
            "nonfinite_steps": self.nonfinite_total,
            # this attempt's part of the epoch (a resumed epoch's earlier part is not counted)
            "data_wait_s": self.epoch_data_wait_s,
            "data_wait_fraction": self.epoch_data_wait_s / max(self.epoch_train_s, 1e-9),
        }
        self.history.append(row)
        warning = data_wait_warning(self.epoch, row, self.epoch_train_s, s)
        if warning is not None:
            self.log(warning)
        score = validation["mean_dice"]
        improved = math.isfinite(score) and score > self.best_score + s.early_stopping_min_delta
        if improved:
            self.best_score, self.best_epoch, self.epochs_without_improvement = score, self.epoch, 0
        else:
            self.epochs_without_improvement += 1
        self.log_epoch(row, validation)
        self.epoch += 1
        self.iteration = 0
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
        if self.epochs_without_improvement >= s.early_stopping_patience:
            self.stop_reason = "early_stop"
        elif self.epoch >= s.max_epochs:
            self.stop_reason = "max_epochs"
        self.save("last.pt")
        if improved:
            self.save("best.pt")
        if (
            s.periodic_checkpoint_every_epochs
            and self.epoch % s.periodic_checkpoint_every_epochs == 0
        ):
            self.save(f"epoch_{self.epoch:04d}.pt")
            if self.is_main:
                periodic = sorted(self.checkpoint_dir.glob("epoch_*.pt"))
                for old in periodic[: max(len(periodic) - s.keep_periodic_checkpoints, 0)]:
                    old.unlink()
        if not self.stop_reason:
            # the next epoch must fit: judge it by the mean epoch of this process
            self.check_time(self.elapsed() / max(len(self.history) - self.epochs_at_start, 1))

    def log_epoch(self, row: dict[str, Any], validation: dict[str, Any]) -> None:
        self.log(
            f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
            f"val mean Dice {row['val_mean_dice']:.4f} ({row['seconds']:.1f} s)"
        )
        if self.writer is not None:
            write_epoch(
                self.writer,
                row,
                self.loss,
                self.online_frequency,
                validation["first_batch"],
                self.settings.tensorboard_images,
                self.global_step,
            )

    def on_train_end(self) -> None:
        """Write the declared outputs: ``best.pt``, ``history.csv``, ``train_summary.json``
        (:mod:`cellseg.training.outputs`)."""
        if not self.is_main:
            self.barrier()
            return
        best_path = self.checkpoint_dir / "best.pt"
        best = load_checkpoint(best_path) if best_path.is_file() else self.state_dict()
        summary = train_summary(
            self.settings,
            self.parameters,
            len(self.history),
            self.best_epoch,
            self.best_score,
            self.stop_reason,
            self.train_seconds_at_start + self.elapsed(),
            self.world_size,
            self.device,
            self.init_loaded_fraction,
        )
        write_outputs(
            self.run_dir,
            best["model"],
            summary,
            self.settings,
            self.architecture(),
            self.loss.shift().cpu(),
            self.data_identity,
            self.best_epoch,
            self.history,
            self.trained_classes,
            self.trained_groups,
        )
        self.log(
            f"finished ({self.stop_reason}): best val mean Dice {self.best_score:.4f} at epoch {self.best_epoch}"
        )
        self.barrier()

    # ----------------------------------------------------------------- helpers
    def barrier(self) -> None:
        if is_distributed():
            dist.barrier()

    def peak_memory_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return psutil.Process().memory_info().rss / 2**20

    def progress_bar(self) -> Any:
        if not self.is_main:
            return None
        s = self.settings
        return progress_bar(s.iterations_per_epoch, self.iteration, f"{s.key} epoch {self.epoch}")

    def log(self, message: str) -> None:
        """To stderr (the job's log) and to ``train.log`` in the run directory, which, unlike the
        rule's log that Snakemake clears before a retry, keeps every attempt of the run."""
        if self.is_main:
            append_log(self.run_dir, self.settings.key, message)
