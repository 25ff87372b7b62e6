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
(:func:`decide`): **no-go** when the memory the device holds exceeds
``preflight.max_memory_fraction`` of the device (the rest is the stated headroom), when supply <
``preflight.min_supply_ratio`` x demand, or when training needs more attempts than the
profile's ``retries`` + 1 less ``preflight.spare_jobs`` (kept for a node failure). Each reason
names the measurement and the keys to change. A result is tied to every setting of the run, its
retries and the preflight's thresholds (:func:`preflight_key`): the workflow measures again
whenever one of them differs, and the gate refuses a result of other settings. The result is ``results/preflight/{run}.json`` (:func:`run_preflight`), the table of all
runs ``results/preflight.md`` (:func:`format_table`), and a local gate before each ``train`` job
refuses a no-go (:func:`check_preflight`, :func:`write_verdict`) unless ``preflight.enforce`` is
false, so that a no-go run's training job is never queued.

The verdict and the table need no torch (the workflow's local rules use them); only the
measurement imports it.

Why one module of about 900 lines: the measurement writes the record that the verdict, the
table and the gate before the train job read, and the four change together whenever a measured
field does; the torch-free parts stay importable without torch.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cellseg.errors import CellsegError
from cellseg.io import write_json_atomic, write_text_atomic
from cellseg.training.settings import TrainSettings, changed_keys, jsonable

FORMAT = "cellseg-preflight-1"
"""``format`` of a preflight JSON."""

DAY_S = 86400.0


@dataclass(frozen=True)
class PreflightConfig:
    """The config's ``preflight`` section (see config/README.md).

    Attributes:
        enabled: each ``train`` job waits for its run's preflight.
        enforce: a no-go stops the run before its ``train`` job is queued (false: logged,
            training proceeds).
        runtime_min: the preflight job's wall-time limit, minutes.
        warmup_steps: optimizer steps run before any timing (allocator, cuDNN autotuning,
            ``torch.compile``).
        timed_steps: optimizer steps timed on a batch held on the device (demand).
        loader_batches: batches each rank's loader delivers untimed, then as many timed (supply).
        real_steps: optimizer steps of the short real run (loader feeding steps: data wait).
        allreduce_mb: size of the all-reduced tensor, MB.
        max_memory_fraction: no-go above this memory the device holds (reserved peak +
            CUDA context) ÷ device memory; ``1 - max_memory_fraction`` is the headroom.
        min_supply_ratio: no-go when supply < this × demand.
        spare_jobs: jobs of the profile's ``retries + 1`` kept free for a node failure or a
            preemption: no-go when training needs more than ``retries + 1 - spare_jobs`` (the
            spare jobs come out of the retries: with ``retries`` 0 the one job must fit).
    """

    enabled: bool = False
    enforce: bool = True
    runtime_min: int = 30
    warmup_steps: int = 3
    timed_steps: int = 10
    loader_batches: int = 40
    real_steps: int = 10
    allreduce_mb: float = 64.0
    max_memory_fraction: float = 0.9
    min_supply_ratio: float = 1.2
    spare_jobs: int = 1

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PreflightConfig:
        """The ``preflight`` section of a workflow config (defaults for missing keys)."""
        section = dict(config.get("preflight") or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise CellsegError(
                f"preflight: unknown key(s) {', '.join(unknown)}; see config/README.md, preflight"
            )
        return cls(**section)


@dataclass(frozen=True)
class RankFigures:
    """What one rank measured.

    Attributes:
        rank: the rank.
        device: ``cuda:N`` name of the device (e.g. ``NVIDIA L40S``) or ``cpu``.
        device_memory_mb: the device's total memory, MB (None on CPU).
        peak_memory_mb: ``torch.cuda.max_memory_allocated``, MB (None on CPU).
        peak_reserved_mb: ``torch.cuda.max_memory_reserved``, MB (None on CPU).
        peak_rss_mb: peak RSS of the rank and its loader workers together, MB (sampled).
        step_s: seconds per optimizer step (``grad_accum`` micro-batches) on the held batch.
        demand: samples/s of this rank's training step on the held batch.
        supply: patches/s this rank's loader delivered.
        data_wait_fraction: share of the real run's wall time spent waiting for batches.
        real_step_s: seconds per optimizer step of the real run (data waits included).
        context_mb: device memory this process holds outside torch's allocator (the CUDA
            context, library workspaces, NCCL buffers): the device's used memory minus the
            reserved, MB (None on CPU).
    """

    rank: int
    device: str
    device_memory_mb: float | None
    peak_memory_mb: float | None
    peak_reserved_mb: float | None
    peak_rss_mb: float
    step_s: float
    demand: float
    supply: float
    data_wait_fraction: float
    real_step_s: float
    context_mb: float | None = None

    @property
    def held_mb(self) -> float | None:
        """What the device holds for this rank: the reserved peak plus the context, MB (the
        allocated peak where an older result recorded no reserved figure)."""
        if self.device_memory_mb is None:
            return None
        base = self.peak_reserved_mb if self.peak_reserved_mb is not None else self.peak_memory_mb
        return None if base is None else base + (self.context_mb or 0.0)


@dataclass(frozen=True)
class Projection:
    """Time and cost of the whole training run, projected from one optimizer step.

    Attributes:
        step_s: seconds per optimizer step used (the slower of the held-batch and real steps).
        steps_per_epoch: ``ceil(iterations_per_epoch / grad_accum)``.
        epoch_s: ``steps_per_epoch × step_s`` (validation not included).
        total_s: ``epoch_s × max_epochs`` (early stopping can end sooner).
        attempt_s: ``(runtime_min - time_budget_margin_min) × 60``: training time per job.
        attempts: ``ceil(total_s / attempt_s)`` jobs.
        resubmissions: ``attempts - 1``.
        gpu_hours: ``total_s / 3600 × gpus``.
    """

    step_s: float
    steps_per_epoch: int
    epoch_s: float
    total_s: float
    attempt_s: float
    attempts: int
    resubmissions: int
    gpu_hours: float

    @property
    def days(self) -> float:
        return self.total_s / DAY_S


def project(step_s: float, settings: TrainSettings) -> Projection:
    """Project the run's time from the seconds of one optimizer step (see :class:`Projection`)."""
    steps_per_epoch = math.ceil(settings.iterations_per_epoch / settings.grad_accum)
    epoch_s = steps_per_epoch * step_s
    total_s = epoch_s * settings.max_epochs
    attempt_s = max(settings.runtime_min - settings.time_budget_margin_min, 0.05) * 60.0
    attempts = max(math.ceil(total_s / attempt_s), 1)
    return Projection(
        step_s=step_s,
        steps_per_epoch=steps_per_epoch,
        epoch_s=epoch_s,
        total_s=total_s,
        attempt_s=attempt_s,
        attempts=attempts,
        resubmissions=attempts - 1,
        gpu_hours=total_s / 3600.0 * settings.gpus,
    )


@dataclass(frozen=True)
class Summary:
    """The job's figures: the worst rank's, or their sum where the job's total counts.

    Attributes:
        ranks: processes measured.
        device: e.g. ``2 x NVIDIA L40S`` or ``2 x cpu``.
        device_memory_mb: the smallest device's memory, MB (None on CPU).
        peak_memory_mb: the largest rank's allocated peak, MB (None on CPU).
        host_peak_rss_mb: the sum over ranks of each rank's (with its workers) peak RSS, MB.
        step_s: the slowest rank's optimizer step on the held batch, s.
        demand: samples/s per GPU (rank) at that step time.
        supply: the slowest rank's loader, patches/s.
        data_wait_fraction: the largest rank's share of waiting.
        real_step_s: the slowest rank's real-run optimizer step, s.
        allreduce_gbps: bus bandwidth of an all-reduce, GB/s (None for one rank).
        held_memory_mb: the largest rank's memory held on its device (reserved peak + CUDA
            context, :attr:`RankFigures.held_mb`), MB (None on CPU): what the verdict judges.
        peak_reserved_mb: the largest rank's reserved peak, MB (None on CPU).
        context_mb: the largest rank's memory outside the allocator, MB (None on CPU).
    """

    ranks: int
    device: str
    device_memory_mb: float | None
    peak_memory_mb: float | None
    host_peak_rss_mb: float
    step_s: float
    demand: float
    supply: float
    data_wait_fraction: float
    real_step_s: float
    allreduce_gbps: float | None = None
    held_memory_mb: float | None = None
    peak_reserved_mb: float | None = None
    context_mb: float | None = None

    @classmethod
    def of(cls, ranks: Sequence[RankFigures], allreduce_gbps: float | None) -> Summary:
        devices = sorted({r.device for r in ranks})
        memory = [r.device_memory_mb for r in ranks if r.device_memory_mb is not None]
        peaks = [r.peak_memory_mb for r in ranks if r.peak_memory_mb is not None]
        held = [r.held_mb for r in ranks if r.held_mb is not None]
        reserved = [r.peak_reserved_mb for r in ranks if r.peak_reserved_mb is not None]
        context = [r.context_mb for r in ranks if r.context_mb is not None]
        slowest = max(ranks, key=lambda r: r.step_s)
        return cls(
            ranks=len(ranks),
            device=f"{len(ranks)} x {' / '.join(devices)}",
            device_memory_mb=min(memory) if memory else None,
            peak_memory_mb=max(peaks) if peaks else None,
            host_peak_rss_mb=sum(r.peak_rss_mb for r in ranks),
            step_s=slowest.step_s,
            demand=slowest.demand,
            supply=min(r.supply for r in ranks),
            data_wait_fraction=max(r.data_wait_fraction for r in ranks),
            real_step_s=max(r.real_step_s for r in ranks),
            allreduce_gbps=allreduce_gbps,
            held_memory_mb=max(held) if held else None,
            peak_reserved_mb=max(reserved) if reserved else None,
            context_mb=max(context) if context else None,
        )

    @property
    def memory_fraction(self) -> float | None:
        """Memory the device holds (reserved peak + context) ÷ the device's memory."""
        if self.held_memory_mb is None or not self.device_memory_mb:
            return None
        return self.held_memory_mb / self.device_memory_mb

    @property
    def supply_ratio(self) -> float:
        return self.supply / self.demand if self.demand > 0 else math.inf


@dataclass(frozen=True)
class Verdict:
    """go, or no-go with one reason per failed check (each naming the keys to change)."""

    go: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def text(self) -> str:
        return "go" if self.go else "no-go: " + "; ".join(self.reasons)


def decide(
    summary: Summary,
    projection: Projection,
    settings: TrainSettings,
    preflight: PreflightConfig,
    retries: int,
) -> Verdict:
    """go / no-go.

    No-go when the memory the device holds (reserved peak + CUDA context) exceeds
    ``max_memory_fraction`` of the device (CPU: not checked), when the loader's supply <
    ``min_supply_ratio`` × the step's demand, or when training needs more attempts (of
    ``runtime_min - time_budget_margin_min``) than ``retries + 1 - spare_jobs``.
    """
    key, reasons = settings.key, []
    fraction = summary.memory_fraction
    if fraction is not None and fraction > preflight.max_memory_fraction:
        held = summary.held_memory_mb or 0.0
        reasons.append(
            f"GPU memory held {held / 1024:.1f} of {summary.device_memory_mb / 1024:.1f} GB "
            f"({fraction:.2f} > preflight.max_memory_fraction {preflight.max_memory_fraction:g}; "
            f"reserved peak {(summary.peak_reserved_mb or 0) / 1024:.1f} GB + CUDA context "
            f"{(summary.context_mb or 0) / 1024:.1f} GB, allocated peak "
            f"{(summary.peak_memory_mb or 0) / 1024:.1f} GB): lower "
            f"models.{key}.batch_per_gpu (now {settings.batch_per_gpu}; `cellseg plan-batch "
            f"--model {settings.model} --dim {settings.dim} --probe` finds the largest that "
            "fits) and raise grad_accum to keep the effective batch"
        )
    if summary.supply < preflight.min_supply_ratio * summary.demand:
        reasons.append(
            f"loader supply {summary.supply:.1f} patches/s per rank < preflight.min_supply_ratio "
            f"{preflight.min_supply_ratio:g} x demand {summary.demand:.1f} samples/s per GPU "
            f"(data wait {summary.data_wait_fraction:.0%}): raise models.{key}.num_workers "
            f"(now {settings.num_workers}) with cpus_per_task (now {settings.cpus_per_task}; "
            f"ranks x (num_workers + 1) processes) or cache_mb (now {settings.cache_mb:g})"
        )
    # the spare jobs come out of the retries (with none, the one job has nothing to spare)
    spare = min(preflight.spare_jobs, retries)
    allowed = retries + 1 - spare
    if projection.attempts > allowed:
        kept = f" with preflight.spare_jobs {spare} kept for a node failure" if spare else ""
        reasons.append(
            f"projected {projection.days:.1f} days to max_epochs {settings.max_epochs} "
            f"({projection.step_s:.3g} s per optimizer step) need {projection.attempts} jobs of "
            f"runtime_min {settings.runtime_min} - time_budget_margin_min "
            f"{settings.time_budget_margin_min:g} min, more than the {allowed} that retries "
            f"{retries} allow{kept}: raise models.{key}.runtime_min or the profile's retries, "
            "or lower max_epochs or iterations_per_epoch"
        )
    return Verdict(not reasons, tuple(reasons))


def result_document(
    run: str,
    settings: TrainSettings,
    preflight: PreflightConfig,
    retries: int,
    ranks: Sequence[RankFigures],
    allreduce_gbps: float | None,
) -> dict[str, Any]:
    """The JSON document of one run's preflight: figures, projection and verdict."""
    summary = Summary.of(ranks, allreduce_gbps)
    projection = project(max(summary.step_s, summary.real_step_s), settings)
    verdict = decide(summary, projection, settings, preflight, retries)
    return {
        "format": FORMAT,
        "run": run,
        "verdict": "go" if verdict.go else "no-go",
        "reasons": list(verdict.reasons),
        "summary": asdict(summary)
        | {"memory_fraction": summary.memory_fraction, "supply_ratio": summary.supply_ratio},
        "projection": asdict(projection) | {"days": projection.days},
        "ranks": [asdict(r) for r in ranks],
        "settings": jsonable(asdict(settings)),
        "key": preflight_key(settings, retries, preflight),
        "preflight": asdict(preflight),
        "retries": retries,
        "host": os.uname().nodename,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# preflight keys that change neither what is measured nor how it is judged
UNJUDGED_PREFLIGHT_KEYS: frozenset[str] = frozenset({"enabled", "enforce", "runtime_min"})


def preflight_key(
    settings: TrainSettings, retries: int, preflight: PreflightConfig | Mapping[str, Any]
) -> str:
    """The hash a preflight result is tied to: every setting of the run (execution keys
    included: workers, cache, memory and runtime change what is measured), the profile's
    retries and the preflight's own measuring and judging keys. The workflow names a result
    and its verdict by it (``results/preflight/{run}/{key}.json``), so a train job whose key
    differs waits for a new measurement, whatever Snakemake's rerun triggers.
    """
    section = asdict(preflight) if isinstance(preflight, PreflightConfig) else dict(preflight)
    section = {k: v for k, v in section.items() if k not in UNJUDGED_PREFLIGHT_KEYS}
    document = {"settings": jsonable(asdict(settings)), "retries": retries, "preflight": section}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def read_result(path: Path | str) -> dict[str, Any]:
    """A preflight JSON, or one line saying why it cannot be read."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CellsegError(
            f"{path}: not a preflight result ({error}); run the preflight again"
        ) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CellsegError(f"{path}: not a {FORMAT} document; run the preflight again")
    return document


def check_preflight(
    path: Path | str,
    enforce: bool,
    settings: TrainSettings | None = None,
    retries: int | None = None,
    preflight: PreflightConfig | None = None,
) -> str:
    """What the gate before a ``train`` job does with its run's preflight: a go passes, a
    no-go stops it.

    With ``settings`` (the train job's), a result measured with any other setting (its
    :func:`preflight_key` differs) is refused like a no-go, naming the changed keys: the
    workflow measures again on its own (the key is in the preflight job's input), so this
    catches a result put there by hand or by ``cellseg preflight`` with other settings.

    Returns:
        the line(s) the train job logs (go, or a no-go it proceeds past with ``enforce`` false).

    Raises:
        CellsegError: a no-go with ``enforce`` true: one line with every reason.
    """
    document = read_result(path)
    if settings is not None and retries is not None and preflight is not None:
        key = preflight_key(settings, retries, preflight)
        if document.get("key") != key:
            recorded = document.get("settings") or {}
            changed = changed_keys(recorded, jsonable(asdict(settings)))
            if document.get("retries") != retries:
                changed.append(f"retries {document.get('retries')} -> {retries}")
            line = (
                f"preflight {path} of {document['run']} was measured with other settings "
                f"(changed: {', '.join(changed) or 'preflight thresholds'}); delete it and run "
                "the preflight again to judge these"
            )
            if enforce:
                raise CellsegError(f"{line}; or set preflight.enforce: false to train anyway")
            return f"warning: {line}; training anyway (preflight.enforce: false)"
    if document["verdict"] == "go":
        return f"preflight {path}: go"
    line = f"preflight no-go for {document['run']} ({path}): {'; '.join(document['reasons'])}"
    if enforce:
        raise CellsegError(f"{line}; or set preflight.enforce: false to train anyway")
    return f"warning: {line}; training anyway (preflight.enforce: false)"


def write_verdict(
    result_path: Path | str,
    verdict_path: Path | str,
    enforce: bool,
    settings: TrainSettings | None = None,
    retries: int | None = None,
    preflight: PreflightConfig | None = None,
) -> str:
    """The workflow's gate between a run's preflight and its ``train`` job.

    Runs :func:`check_preflight` and writes the line it returns to ``verdict_path`` (atomically),
    the input the ``train`` job waits for. The gate is a local rule: a no-go fails it on the
    login node, so the ``train`` job is never queued for a GPU, neither once nor once per retry
    the profile allows.

    Returns:
        the line written (go, or a no-go passed with ``enforce`` false).

    Raises:
        CellsegError: a no-go with ``enforce`` true (nothing is written).
    """
    line = check_preflight(result_path, enforce, settings, retries, preflight)
    write_text_atomic(verdict_path, line + "\n")
    return line


# --- the table --------------------------------------------------------------------------------


def _number(value: float | None, pattern: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, pattern)


def table_row(document: Mapping[str, Any]) -> str:
    """One row of ``results/preflight.md``."""
    s, p, settings = document["summary"], document["projection"], document["settings"]
    reason = "; ".join(document["reasons"]).replace("|", "\\|") or "-"
    if s is None or p is None:  # out of GPU memory: nothing measured
        return f"| {document['run']} | | > 1 | | | | | | {document['verdict']} | {reason} |"
    if s["memory_fraction"] is None:
        memory = f"n/a (host RSS {s['host_peak_rss_mb'] / 1024:.1f} of {settings['mem_mb'] / 1024:.1f} GB)"
    else:
        memory = (
            f"{s['memory_fraction']:.2f} ({s['held_memory_mb'] / 1024:.1f} of "
            f"{s['device_memory_mb'] / 1024:.1f} GB; allocated {s['peak_memory_mb'] / 1024:.1f})"
        )
    cells = [
        document["run"],
        s["device"],
        memory,
        _number(s["step_s"], ".3g"),
        _number(s["demand"], ".3g"),
        f"{_number(s['supply_ratio'], '.2f')} ({s['supply']:.3g} / {s['demand']:.3g})",
        f"{s['data_wait_fraction']:.0%}",
        f"{p['days']:.2f} ({p['attempts']} job{'s' if p['attempts'] != 1 else ''})",
        document["verdict"],
        reason,
    ]
    return "| " + " | ".join(cells) + " |"


TABLE_HEADER = (
    "| run | device | memory held (reserved + context) ÷ device memory | step time (s) | samples/s per GPU "
    "| loader supply ÷ demand | data wait | projected days | verdict | reason |\n"
    "|---|---|---|---:|---:|---|---:|---|---|---|"
)


def format_table(documents: Sequence[Mapping[str, Any]]) -> str:
    """``results/preflight.md``: one row per run and a line on how to read it."""
    rows = "\n".join(table_row(d) for d in documents)
    nogo = [d["run"] for d in documents if d["verdict"] != "go"]
    verdict = f"no-go: {', '.join(nogo)}" if nogo else "every run: go"
    return (
        "# Preflight\n\n"
        f"{verdict}. Memory held: the reserved peak plus the CUDA context, the allocated peak "
        "beside it. Step time: one optimizer step (grad_accum micro-batches) on a batch held on "
        "the device; samples/s per GPU at that step (the demand); loader supply ÷ demand: "
        "patches/s each rank's loader delivered ÷ that demand; data wait: share of a short "
        "real run spent waiting for the loader; projected days to max_epochs (jobs of "
        "runtime_min - time_budget_margin_min). See docs/longleaf.md.\n\n"
        f"{TABLE_HEADER}\n{rows}\n"
    )


def write_table(results: Sequence[Path | str], out: Path | str) -> None:
    """Write ``results/preflight.md`` from the runs' JSONs (atomically)."""
    write_text_atomic(Path(out), format_table([read_result(p) for p in results]))


# --- the measurement (torch from here on) -----------------------------------------------------


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

    from cellseg.training.trainer import Trainer, is_distributed

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
    from cellseg.training.settings import resolve_settings
    from cellseg.training.trainer import is_distributed

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


def out_of_memory_document(
    run: str,
    settings: TrainSettings,
    preflight: PreflightConfig,
    retries: int,
    message: str,
) -> dict[str, Any]:
    """The no-go of a run whose steps ran out of GPU memory (nothing else was measured)."""
    reason = (
        f"out of GPU memory in the preflight's steps at batch_per_gpu {settings.batch_per_gpu} "
        f"({message[:200]}): lower models.{settings.key}.batch_per_gpu (`cellseg plan-batch "
        f"--model {settings.model} --dim {settings.dim} --probe` finds the largest that fits) "
        "and raise grad_accum to keep the effective batch"
    )
    return {
        "format": FORMAT,
        "run": run,
        "verdict": "no-go",
        "reasons": [reason],
        "summary": None,
        "projection": None,
        "ranks": [],
        "settings": jsonable(asdict(settings)),
        "key": preflight_key(settings, retries, preflight),
        "preflight": asdict(preflight),
        "retries": retries,
        "host": os.uname().nodename,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


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
    from cellseg.training.settings import resolve_settings

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
    from cellseg.config import layered_config, read_layer
    from cellseg.training.settings import load_config

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
