"""``cellseg preflight``: a few minutes on the real node decide whether a training run may start.

A training run of the seed experiment holds 2-4 GPUs for up to 11 days. The preflight builds the
run's model at its resolved settings on the node the run will get (the same partition, GPUs,
CPUs and memory; minutes of runtime) and runs a handful of optimizer steps exactly as training
does: :class:`~cellseg.training.trainer.Trainer` itself, with the configured batch per GPU,
gradient accumulation, bf16 autocast, TF32 and ``torch.compile`` as the settings say, DDP over
the job's GPUs through ``torchrun`` (gloo CPU ranks when ``run_on_cpu``). It measures, per rank:

* **memory the device holds**: the peak of what torch's caching allocator reserved
  (``torch.cuda.max_memory_reserved``, which holds the allocated peak and its fragmentation)
  plus what the process holds outside it (the CUDA context, cuBLAS/cuDNN workspaces, NCCL
  buffers: the device's used memory minus the reserved), against the device's total memory;
  the allocated peak is recorded beside it (on CPU there is no device memory: n/a, and the host
  RSS is reported);
* **demand**: samples/s per GPU of the optimizer step on a batch already on the device (after
  ``warmup_steps`` untimed steps, ``timed_steps`` timed ones);
* **supply**: patches/s the configured loader (``num_workers``, ``cache_mb``) delivers from the
  real data on this node's cores, every rank's loader reading at once as in training (timed
  after as many warm-up batches);
* **data wait**: the fraction of a short real run (the loader feeding the steps) spent waiting
  for the next batch;
* **host peak RSS** of each rank with its loader workers (summed over ranks) against ``mem_mb``;
* **all-reduce bandwidth** between the ranks (bus bandwidth, GB/s; n/a for one rank).

From the optimizer-step time it projects the time per epoch (``ceil(iterations_per_epoch /
grad_accum)`` steps; validation is not measured), to ``max_epochs``, the resubmissions that
``runtime_min - time_budget_margin_min`` per attempt imply, and the GPU-hours; then decides
(:func:`~cellseg.training.preflight_verdict.decide`): **no-go** when the memory the device holds exceeds
``preflight.max_memory_fraction`` of the device (the rest is the stated headroom), when supply <
``preflight.min_supply_ratio`` x demand, or when training needs more attempts than the
profile's ``retries`` + 1 less ``preflight.spare_jobs`` (kept for a node failure). Each reason
names the measurement and the keys to change. A result is tied to every setting of the run, its
retries and the preflight's thresholds (:func:`~cellseg.training.preflight_verdict.preflight_key`): the workflow measures again
whenever one of them differs, and the gate refuses a result of other settings. The result is ``results/preflight/{run}.json`` (:func:`run_preflight`), the table of all
runs ``results/preflight.md`` (:func:`~cellseg.training.preflight_table.format_table`), and a local gate before each ``train`` job
refuses a no-go (:func:`~cellseg.training.preflight_verdict.check_preflight`, :func:`~cellseg.training.preflight_verdict.write_verdict`) unless ``preflight.enforce`` is
false, so that a no-go run's training job is never queued.

This module holds the measurement and ``cellseg preflight``; what is measured is judged in
:mod:`cellseg.training.preflight_verdict` (the config section, the figures, the projection, the
verdict, the result's key and the gate) and tabled in :mod:`cellseg.training.preflight_table`.
Those two need no torch (the workflow's local rules use them); only the measurement imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from cellseg.config.settings import TrainSettings
from cellseg.io import write_json_atomic, write_text_atomic
from cellseg.training.preflight_table import format_table
from cellseg.training.preflight_verdict import (
    PreflightConfig,
    RankFigures,
    out_of_memory_document,
    result_document,
)


class PeakRss:
    """Peak RSS of this process and its children (the loader's workers), sampled in a thread."""

    def __init__(self, interval_s: float = 0.1) -> None:
        import psutil

        self.process = psutil.Process()
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def sample(self) -> float:
        import psutil

        total = 0
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:  # a worker that just exited
                continue
        self.peak_mb = max(self.peak_mb, total / 2**20)
        return self.peak_mb

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> PeakRss:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def measure(
    settings: TrainSettings,
    datasplit: Path | str,
    class_frequencies: Path | str,
    preflight: PreflightConfig,
    scratch: Path | str,
) -> tuple[list[RankFigures], float | None] | None:
    """Measure this rank (every rank of a ``torchrun`` job calls it).

    Returns:
        on rank 0 every rank's figures (rank order) and the all-reduce bus bandwidth (GB/s;
        None for one rank); None on the other ranks.
    """
    import torch
    import torch.distributed as dist

    from cellseg.training.device import is_distributed
    from cellseg.training.trainer import Trainer

    trainer = Trainer(settings, scratch, datasplit, class_frequencies)
    with PeakRss() as rss:
        trainer.initialize()
        device, s = trainer.device, settings
        cuda = device.type == "cuda"
        warmup, timed, real = preflight.warmup_steps, preflight.timed_steps, preflight.real_steps
        # the schedule must last the preflight's steps (a short demo config's does not)
        needed = warmup + timed + real + math.ceil(2 * max(s.num_workers, 1) / s.grad_accum) + 1
        if trainer.total_steps < needed:
            trainer.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                trainer.optimizer, max_lr=s.lr, total_steps=needed, pct_start=s.pct_start
            )
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize(device)
            if is_distributed():
                dist.barrier()

        # the loader exactly as training builds it (Trainer.loader), over enough samples
        trainer.loader()
        micro_batches = 2 * preflight.loader_batches + (needed + real) * s.grad_accum
        trainer.train_sampler.set_range(0, micro_batches * s.batch_per_gpu)
        batches: Iterator[dict[str, Any]] = iter(trainer.train_loader)

        # supply: every rank's loader at once, timed after as many warm-up batches
        for _ in range(preflight.loader_batches):
            held = next(batches)
        sync()
        started = time.perf_counter()
        for _ in range(preflight.loader_batches):
            next(batches)
        supply = preflight.loader_batches * s.batch_per_gpu / (time.perf_counter() - started)

        # demand: optimizer steps on a batch held on the device
        image = held["image"].to(device)
        target = held["target"].to(device)

        def optimizer_step() -> None:
            for micro in range(s.grad_accum):
                trainer.train_step(image, target, micro == s.grad_accum - 1)

        trainer.model.train()
        for _ in range(warmup):
            optimizer_step()
        sync()
        started = time.perf_counter()
        for _ in range(timed):
            optimizer_step()
        sync()
        step_s = (time.perf_counter() - started) / max(timed, 1)

        # the real run: loader feeding steps; first the batches queued during the timing above
        # (each worker keeps two ready), untimed
        def real_steps(count: int) -> tuple[float, float]:
            waited = 0.0
            started = time.perf_counter()
            for _ in range(count):
                for micro in range(s.grad_accum):
                    before = time.perf_counter()
                    batch = next(batches)
                    waited += time.perf_counter() - before
                    trainer.train_step(
                        batch["image"].to(device, non_blocking=True),
                        batch["target"].to(device, non_blocking=True),
                        micro == s.grad_accum - 1,
                    )
            sync()
            return waited, time.perf_counter() - started

        real_steps(math.ceil(2 * s.num_workers / s.grad_accum))
        sync()
        waited, elapsed = real_steps(real)
        trainer.train_loader = None  # its workers exit

        bandwidth = allreduce_bandwidth(trainer.world_size, device, preflight.allreduce_mb)
    context_mb = None
    if cuda:
        # what the device holds beyond the allocator's reserve: the CUDA context, cuBLAS/cuDNN
        # workspaces, NCCL's buffers (after the all-reduce), anything else on the device
        torch.cuda.synchronize(device)
        free, total = torch.cuda.mem_get_info(device)
        context_mb = max(total - free - torch.cuda.memory_reserved(device), 0) / 2**20
    figures = RankFigures(
        rank=trainer.rank,
        device=torch.cuda.get_device_name(device) if cuda else "cpu",
        device_memory_mb=torch.cuda.get_device_properties(device).total_memory / 2**20
        if cuda
        else None,
        peak_memory_mb=torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        peak_reserved_mb=torch.cuda.max_memory_reserved(device) / 2**20 if cuda else None,
        peak_rss_mb=rss.peak_mb,
        step_s=step_s,
        demand=s.batch_per_gpu * s.grad_accum / step_s,
        supply=supply,
        data_wait_fraction=waited / elapsed if elapsed > 0 else 0.0,
        real_step_s=elapsed / max(real, 1),
        context_mb=context_mb,
    )
    everyone: list[Any] = [figures]
    if is_distributed():
        everyone = [None] * trainer.world_size
        dist.all_gather_object(everyone, figures)
    return (everyone, bandwidth) if trainer.rank == 0 else None


def allreduce_bandwidth(
    world_size: int, device: Any, size_mb: float, repeats: int = 5
) -> float | None:
    """Bus bandwidth (GB/s, nccl-tests' busbw: ``2 (n - 1) / n × bytes / s``) of an all-reduce of
    ``size_mb`` MB of float32 between the ranks, after two untimed ones; None for one rank."""
    import torch
    import torch.distributed as dist

    if world_size < 2:
        return None
    tensor = torch.ones(max(int(size_mb * 2**20 / 4), 1), device=device)
    for _ in range(2):
        dist.all_reduce(tensor)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(tensor)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - started) / repeats
    return 2 * (world_size - 1) / world_size * tensor.numel() * 4 / seconds / 1e9


def run_preflight(
    config: Mapping[str, Any],
    run: str,
    datasplit: Path | str,
    class_frequencies: Path | str,
    out: Path | str,
    retries: int = 0,
    source: str = "config",
    scratch: Path | str | None = None,
) -> dict[str, Any] | None:
    """Measure one run in this process (a rank of ``torchrun``, or the only one) and, on rank 0,
    write ``out`` (atomically).

    ``scratch`` (default: a temporary directory next to ``out``) is the trainer's run directory;
    a rank that runs out of GPU memory leaves ``out_of_memory.<rank>`` there with the error's
    first line for :func:`launch_preflight`, then fails.

    Returns:
        the document on rank 0, else None.
    """
    from cellseg.config.settings import resolve_settings
    from cellseg.training.device import is_distributed

    settings = resolve_settings(config, run, source)
    preflight = PreflightConfig.from_config(config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if scratch is None:
            scratch = stack.enter_context(
                tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.")
            )
        Path(scratch).mkdir(parents=True, exist_ok=True)
        try:
            measured = measure(settings, datasplit, class_frequencies, preflight, scratch)
        except Exception as error:
            if is_out_of_memory(error):
                marker = Path(scratch) / f"out_of_memory.{os.environ.get('RANK', '0')}"
                marker.write_text(str(error).strip().splitlines()[0] if str(error) else "")
            raise
    if is_distributed():
        import torch.distributed as dist

        dist.destroy_process_group()
    if measured is None:
        return None
    ranks, bandwidth = measured
    document = result_document(run, settings, preflight, retries, ranks, bandwidth)
    write_json_atomic(out, document)
    return document


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is CUDA running out of memory."""
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError)


def preflight_command(
    config_path: Path | str,
    run: str,
    datasplit: Path | str,
    class_frequencies: Path | str,
    out: Path | str,
    retries: int,
    processes: int,
    scratch: Path | str,
) -> list[str]:
    """``cellseg preflight`` for one run as one process per rank: under ``torchrun`` for more
    than one (:func:`cellseg.training.launch.module_command`, as training is started)."""
    from cellseg.training.launch import module_command

    return module_command(
        [
            "preflight",
            "--config", str(config_path),
            "--run-name", run,
            "--datasplit", str(datasplit),
            "--class-frequencies", str(class_frequencies),
            "--out", str(out),
            "--retries", str(retries),
            "--ranks", "here",
            "--scratch", str(scratch),
        ],
        processes,
    )  # fmt: skip


def launch_preflight(
    config: Mapping[str, Any],
    run: str,
    datasplit: Path | str,
    class_frequencies: Path | str,
    out: Path | str,
    retries: int = 0,
    log: Any = None,
    config_path: Path | str | None = None,
) -> int:
    """Run one run's preflight as its training job runs: one process per GPU (``torchrun`` for
    more than one; gloo CPU ranks when ``run_on_cpu``), one for a CPU run.

    ``config`` is written next to ``out`` for the ranks to read unless ``config_path`` already
    holds it. A rank that ran out of GPU memory makes the result a no-go naming the batch (the
    measurement's exit status is then not the job's: the preflight did its work).

    Returns:
        the exit status.
    """
    from cellseg.config.settings import resolve_settings

    settings = resolve_settings(config, run)  # a run name: its variant and seed applied
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as scratch:
        if config_path is None:
            config_path = Path(scratch) / "workflow_config.yaml"
            write_text_atomic(config_path, yaml.safe_dump(dict(config), sort_keys=False))
        command = preflight_command(
            config_path,
            run,
            datasplit,
            class_frequencies,
            out,
            retries,
            max(settings.gpus, 1),
            Path(scratch) / "run",
        )
        print("$ " + shlex.join(command), file=log or sys.stderr, flush=True)
        status = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT if log else None)
        markers = sorted(Path(scratch, "run").glob("out_of_memory.*"))
        if status != 0 and markers:
            preflight = PreflightConfig.from_config(config)
            message = markers[0].read_text()
            write_json_atomic(
                out, out_of_memory_document(run, settings, preflight, retries, message)
            )
            print(f"preflight of {run}: out of GPU memory, a no-go ({out})", file=log or sys.stderr)
            return 0
        return status


# --- command line -----------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from cellseg.config.layers import layered_config, read_layer
    from cellseg.config.settings import load_config

    # one file: a whole workflow config (a run's workflow_config.yaml); several: the workflow's
    # layers, e.g. config/config.yaml then config/experiments/l40s_comparison.yaml
    if len(args.config) == 1:
        config = load_config(args.config[0])
    else:
        config = layered_config(
            read_layer(args.config[0]), [read_layer(p) for p in args.config[1:]]
        )
    source = ", ".join(map(str, args.config))
    out = args.out or Path("results/preflight") / f"{args.run}.json"
    if args.ranks == "launch":
        return launch_preflight(
            config, args.run, args.datasplit, args.class_frequencies, out, args.retries,
            config_path=args.config[0] if len(args.config) == 1 else None,
        )  # fmt: skip
    document = run_preflight(
        config, args.run, args.datasplit, args.class_frequencies, out, args.retries,
        source, args.scratch,
    )  # fmt: skip
    if document is not None:
        print(format_table([document]), end="")
        print(f"wrote {out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preflight",
        help="measure one run's memory, speed and loader on this node: go / no-go",
        description=(
            "Run a handful of optimizer steps of one run exactly as training will (batch, "
            "accumulation, autocast/TF32/compile, DDP over its GPUs through torchrun), measure "
            "peak memory, samples/s, loader supply and data wait, project the run's time and "
            "decide go / no-go (config section preflight)."
        ),
    )
    parser.add_argument(
        "--config",
        type=Path,
        nargs="+",
        required=True,
        help="workflow config YAML, or its layers in order (config/config.yaml, then a preset)",
    )
    # torchrun's parser would take a bare --run for its own --run-path: ranks get --run-name
    parser.add_argument(
        "--run",
        "--run-name",
        dest="run",
        required=True,
        help="run name, e.g. unet_2d or swin_3d~b~r1",
    )
    parser.add_argument("--datasplit", type=Path, default=Path("results/datasplit.csv"))
    parser.add_argument(
        "--class-frequencies", type=Path, default=Path("results/class_frequencies.json")
    )
    parser.add_argument("--out", type=Path, help="default: results/preflight/{run}.json")
    parser.add_argument(
        "--retries", type=int, default=0, help="resubmissions the profile allows (its retries)"
    )
    parser.add_argument(
        "--ranks",
        choices=("launch", "here"),
        default="launch",
        help="launch: start one process per GPU (torchrun); here: this process is a rank",
    )
    parser.add_argument(
        "--scratch", type=Path, help="the ranks' working directory (default: a temporary one)"
    )
    parser.set_defaults(func=_run)
