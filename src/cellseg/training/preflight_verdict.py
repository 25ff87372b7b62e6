"""The preflight's record and its judgement: what ``cellseg preflight`` measured, judged.

The config's ``preflight`` section (:class:`PreflightConfig`), one rank's figures
(:class:`RankFigures`) and the job's (:class:`Summary`), the run's time projected from one
optimizer step (:func:`project`), go / no-go (:func:`decide`), the result document and the key
that ties it to the run's settings (:func:`preflight_key`), and the gate before a ``train`` job
(:func:`check_preflight`, :func:`write_verdict`). No torch: the workflow's planning and its
local rules import it; the measurement is :mod:`cellseg.training.preflight`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cellseg.config.settings import TrainSettings, changed_keys, jsonable
from cellseg.errors import CellsegError
from cellseg.io import write_text_atomic

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


def _provenance(
    settings: TrainSettings, preflight: PreflightConfig, retries: int
) -> dict[str, Any]:
    """What a preflight document was judged on and where: the settings, their key, the
    thresholds, the retries, the node, the SLURM job and the time (every document ends so)."""
    return {
        "settings": jsonable(asdict(settings)),
        "key": preflight_key(settings, retries, preflight),
        "preflight": asdict(preflight),
        "retries": retries,
        "host": os.uname().nodename,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


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
        **_provenance(settings, preflight, retries),
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
        **_provenance(settings, preflight, retries),
    }
